"""One worker thread that serves every user's generation in one continuous batch.

The event loop only enqueues requests and reads token events; all model compute
happens on the worker thread, so a long prefill never freezes the web server.
Each turn of the loop admits waiting requests into free rows, runs one bounded
prefill chunk for prompts still being read, and one decode step for every reply
being written, then retires finished or cancelled rows. So a newcomer never waits
for the batch to drain, and a long prompt (a pasted document) delays the running
streams by one chunk per token, not by its whole prefill (Sarathi-Serve's idea,
with chunk and decode as two forwards rather than one mixed one).

A request's prompt is first matched against the prefix cache (the KV of earlier
requests, keyed by token ids): the next turn of a chat prefills only its new turn.

Shape of a turn, in the spirit of gpt-fast: ``_start_prefill`` -> ``_prefill_chunk``
-> ``_decode_step`` -> ``_accept_token``, each a small method below; ``_forward`` is
the one model call they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from app.engine.detokenize import IncrementalDecoder
from app.engine.kv_cache import SlotKVCache
from app.engine.loading import LoadedModel
from app.engine.params import SamplingParams
from app.engine.prefix_cache import PrefixCache, PrefixCacheStats
from app.engine.reply_text import accept_token
from app.engine.sampling import RowSampler
from app.engine.streams import GenerationResult, GenerationStream

log = logging.getLogger(__name__)

# Tokens per prefill chunk while replies stream: the longest pause a new prompt can
# put between two tokens of someone else's reply (picked with bench/multiturn.py).
PREFILL_CHUNK = 64
# Tokens per prefill forward when nothing streams: only throughput matters then.
IDLE_PREFILL_TOKENS = 2048
# Fewest columns per row in a prefill chunk, so many short prompts share one forward.
MIN_CHUNK_COLUMNS = 16
DEFAULT_PREFIX_CACHE_MB = 2048
# Bounds and fallback for the measured depth at which attention doubles a chunk's cost.
MIN_ATTENTION_DEPTH, DEFAULT_ATTENTION_DEPTH, MAX_ATTENTION_DEPTH = 256, 2048, 65536
# KV slot buffers are allocated for this many tokens per row at warm-up and kept:
# growing them later means allocating and copying gigabytes in one go (0.5-2 s here,
# every stream frozen meanwhile). A longer chat grows them; they shrink back to this
# size when the batch empties, so one long chat does not pin memory for good.
# SmolLM2 at 16 rows: 16 x 4096 x 46 KB = 3 GB.
DEFAULT_KV_RESERVE_TOKENS = 4096


class EngineBusy(RuntimeError):
    """The waiting queue is full; the caller should say "busy, try again"."""


class EngineStopped(RuntimeError):
    """The engine is shutting down and takes no new requests."""


class PromptTooLong(ValueError):
    """Prompt plus requested new tokens do not fit the model's context."""


class InvalidPrompt(ValueError):
    """The prompt ids are empty or not ids of this model's vocabulary."""


def checked_prompt(
    prompt_ids: Sequence[int], params: SamplingParams, vocab_size: int, context_length: int
) -> list[int]:
    """The prompt as a list, refused before it can reach a model it does not fit.

    Every engine applies the same rule so that a tester gets the same sentence
    whether the reply would come from this process or from an inference server.
    """
    prompt = list(prompt_ids)
    if not prompt:
        raise InvalidPrompt("the prompt is empty")
    if any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size for t in prompt):
        raise InvalidPrompt(f"prompt holds ids outside this model's vocabulary (0..{vocab_size - 1})")
    if len(prompt) + params.max_new_tokens > context_length:
        raise PromptTooLong(
            f"{len(prompt)} prompt tokens + {params.max_new_tokens} new tokens exceed the "
            f"model's context of {context_length} tokens"
        )
    return prompt


@dataclass(frozen=True)
class EngineStats:
    running: int  # admitted: prefilling or decoding
    prefilling: int
    waiting: int
    max_batch_size: int
    max_queue: int
    steps: int
    generated_tokens: int
    alive: bool
    accepting: bool
    prefix_cache: PrefixCacheStats


@dataclass(eq=False)
class _Request:
    """A request's whole life; fields below ``loop`` are touched only by the worker."""

    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[str | GenerationResult]
    submitted_at: float = field(default_factory=time.perf_counter)
    cancel_requested: bool = False
    done: bool = False
    generated: list[int] = field(default_factory=list)
    length: int = 0  # tokens of this row held in the decode KV cache
    prefilled: int = 0  # prompt tokens in the prefill KV cache so far
    cached_tokens: int = 0
    first_token_at: float | None = None
    text: str = ""
    sent_chars: int = 0
    finish_reason: str | None = None
    decoder: IncrementalDecoder | None = None
    sampler: RowSampler | None = None

    def post(self, item: str | GenerationResult) -> None:
        # RuntimeError: the consumer's loop is gone, so nobody is listening
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class Engine:
    """The continuous-batching generation engine (see the module docstring)."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch_size: int = 16,
        max_queue: int = 64,
        prefill_chunk: int = PREFILL_CHUNK,
        idle_prefill_tokens: int = IDLE_PREFILL_TOKENS,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
        kv_reserve_tokens: int = DEFAULT_KV_RESERVE_TOKENS,
    ) -> None:
        if max_batch_size < 1 or max_queue < 0:
            raise ValueError("max_batch_size must be >= 1 and max_queue >= 0")
        if prefill_chunk < 1 or prefix_cache_mb < 0:
            raise ValueError("prefill_chunk must be >= 1 and prefix_cache_mb >= 0")
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.context_length = loaded.context_length
        self.eos_token_ids = sorted(loaded.eos_token_ids)
        self.vocab_size = _vocab_size(loaded.model)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.idle_prefill_tokens = idle_prefill_tokens
        self.kv_reserve_tokens = max(1, min(kv_reserve_tokens, self.context_length + 1))
        self._lock = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []  # decoding, in decode-cache row order
        self._prefilling: list[_Request] = []  # reading their prompt, in prefill-cache row order
        self._accepting = True
        self._abort = False
        self._thread: threading.Thread | None = None
        # built by the worker (reading the KV layout takes a forward, and only the worker runs the model)
        self._cache: SlotKVCache
        self._prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20))
        self._outbox: list[tuple[_Request, str]] = []  # this step's deltas, delivered together
        self._attention_depth = float(DEFAULT_ATTENTION_DEPTH)
        self._steps = 0
        self._generated_tokens = 0
        self._ready = threading.Event()

    # ------------------------------------------------------------ event-loop side

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="generation-worker", daemon=True)
        self._thread.start()

    async def wait_ready(self, max_seconds: float | None = None) -> bool:
        """Wait until the worker has warmed up (True) or ``max_seconds`` pass (False)."""
        return await asyncio.to_thread(self._ready.wait, max_seconds)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> GenerationStream:
        """Queue a generation; raises at once if it can never run or the queue is full."""
        if not isinstance(params, SamplingParams):
            raise TypeError("params must be a SamplingParams")
        prompt = self._check_prompt(prompt_ids, params)
        request = _Request(prompt, params, asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if not self._accepting or self._thread is None or not self._thread.is_alive():
                raise EngineStopped("the generation engine is not running")
            if len(self._waiting) >= self.max_queue:
                raise EngineBusy(
                    f"the server is busy ({len(self._running)} replies running, "
                    f"{len(self._waiting)} waiting); please try again in a moment"
                )
            self._waiting.append(request)
            self._lock.notify()
        return GenerationStream(self, request)

    def _check_prompt(self, prompt_ids: Sequence[int], params: SamplingParams) -> list[int]:
        return checked_prompt(prompt_ids, params, self.vocab_size, self.context_length)

    def cancel_request(self, request: _Request) -> None:
        with self._lock:
            if request.done:
                return
            request.cancel_requested = True
            if request in self._waiting:
                self._waiting.remove(request)
                self._finish(request, "cancelled")

    def queue_position_of(self, request: _Request) -> int | None:
        with self._lock:
            try:
                return self._waiting.index(request)
            except ValueError:
                return None

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                running=len(self._running) + len(self._prefilling),
                prefilling=len(self._prefilling),
                waiting=len(self._waiting),
                max_batch_size=self.max_batch_size,
                max_queue=self.max_queue,
                steps=self._steps,
                generated_tokens=self._generated_tokens,
                alive=self._thread is not None and self._thread.is_alive(),
                accepting=self._accepting,
                prefix_cache=self._prefix_cache.stats(),
            )

    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop taking requests; let running ones finish for ``grace_seconds``, cancel the rest."""
        with self._lock:
            self._accepting = False
            self._lock.notify()
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline:
            stats = self.stats()
            if stats.running == 0 and stats.waiting == 0:
                break
            await asyncio.sleep(0.05)
        with self._lock:
            self._abort = True
            self._lock.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # ------------------------------------------------------------ worker side

    def _run(self) -> None:
        with torch.inference_mode():
            try:
                layer_shapes, dtype = _kv_layout(self.model)
            except Exception as error:
                log.exception("the model cannot run a single token: the engine stops")
                with self._lock:
                    self._accepting = False
                    for request in self._waiting:
                        self._finish(request, "error", error=f"generation failed: {error}")
                    self._waiting.clear()
                self._ready.set()  # nobody waits forever; submit() sees the worker gone
                return
            self._cache = SlotKVCache(layer_shapes, dtype, self.max_batch_size, self.context_length)
            self._warm_up()
            while True:
                newcomers = self._next_work()
                if newcomers is None:
                    break
                self._retire_cancelled()
                for request in newcomers:
                    self._start_prefill(request)
                if self._prefilling:
                    self._prefill_chunk()
                if self._running:
                    self._decode_step()
        self._cache.release()

    def _warm_up(self) -> None:
        """Allocate the KV slots and run the shapes serving will use before serving.

        oneDNN builds a kernel per input shape on first use and the slot buffers
        are allocated on first admission; paying both here keeps them off the
        first users' time to first token. Requests submitted meanwhile just queue.
        """
        started = time.perf_counter()
        try:
            dummy = 8
            rows = self.max_batch_size
            self._forward([[0] * dummy] * rows, [0] * rows, [dummy] * rows, dummy)
            for batch in range(rows, 0, -1):
                self._forward([[0]] * batch, [dummy] * batch, [1] * batch, 1)
            self._cache.ensure_capacity(self.kv_reserve_tokens)
            self._attention_depth = self._measure_attention_depth()
        except Exception:  # warm-up is an optimisation; serving reports real faults
            log.exception("engine warm-up failed")
        log.info("engine warmed up in %.1f s", time.perf_counter() - started)
        self._ready.set()

    def _measure_attention_depth(self) -> float:
        """How deep into a prompt a token's attention costs as much as its matrix products.

        A prefill chunk's time grows with how many keys precede it (here a 64-token
        chunk took 170 ms at the start of a prompt and 350 ms 2,500 tokens in), so
        while replies stream the chunk shrinks with depth to keep its time, and so
        their pauses, about constant. Timed once here, on this model and machine.
        """
        width = max(MIN_CHUNK_COLUMNS, min(self.prefill_chunk, 64))
        depth = min(1024, self.kv_reserve_tokens - width - 1, self.context_length - width - 1)
        if depth < 4 * width:
            return float(DEFAULT_ATTENTION_DEPTH)
        timings = {}
        for start in (0, depth, 0, depth):
            began = time.perf_counter()
            self._forward([[0] * width], [start], [width], width)
            elapsed = time.perf_counter() - began
            timings[start] = min(elapsed, timings.get(start, elapsed))
        growth = timings[depth] / timings[0] - 1
        measured = depth / growth if growth > 0 else float(MAX_ATTENTION_DEPTH)
        log.info("prefill chunks cost twice as much %d tokens into a prompt", measured)
        return min(float(MAX_ATTENTION_DEPTH), max(float(MIN_ATTENTION_DEPTH), measured))

    def _next_work(self) -> list[_Request] | None:
        """Block until there is work; take the newcomers that fit. None means exit."""
        with self._lock:
            while not (self._waiting or self._running or self._prefilling or self._abort or not self._accepting):
                self._lock.wait()
            admitted = self._running + self._prefilling
            if self._abort or (not self._accepting and not self._waiting and not admitted):
                for request in [*self._waiting, *admitted]:
                    self._finish(request, "cancelled")
                self._waiting.clear()
                self._running.clear()
                self._prefilling.clear()
                return None
            newcomers: list[_Request] = []
            while self._waiting and len(admitted) + len(newcomers) < self.max_batch_size:
                newcomers.append(self._waiting.popleft())
            return newcomers

    def _retire_cancelled(self) -> None:
        for request in [r for r in self._prefilling if r.cancel_requested]:
            self._drop_prefilling(request, "cancelled")
        for request in [r for r in self._running if r.cancel_requested]:
            request.finish_reason = "cancelled"
            self._retire(request)

    def _start_prefill(self, request: _Request) -> None:
        """Give a newcomer the slot after the others, filled from the prefix cache as far as it matches.

        At least the prompt's last token is always computed: its logits choose the first new token.
        """
        if request.cancel_requested:
            self._finish(request, "cancelled")
            return
        slot = len(self._running) + len(self._prefilling)
        self._cache.ensure_capacity(len(request.prompt_ids) + 1)  # once, not while its chunks run
        reused, kv = self._prefix_cache.longest_prefix(request.prompt_ids, len(request.prompt_ids) - 1)
        if kv is not None:
            self._cache.place(slot, kv)
        request.prefilled = request.cached_tokens = reused
        request.decoder = IncrementalDecoder(self.tokenizer)
        request.sampler = RowSampler(request.params, self.vocab_size, request.prompt_ids)
        with self._lock:
            self._prefilling.append(request)

    def _prefill_chunk(self) -> None:
        """Prefill the next chunk of the waiting prompts; rows whose prompt is done start decoding.

        While replies stream, a chunk holds at most ``prefill_chunk`` tokens, so no
        stream waits longer than one chunk between two of its tokens, however long
        the prompt that just arrived. With nothing streaming, chunks are bigger.
        """
        if self._running:  # deep in a long prompt each token also reads all the keys before it
            depth = self._prefilling[0].prefilled
            budget = max(MIN_CHUNK_COLUMNS, round(self.prefill_chunk / (1 + depth / self._attention_depth)))
        else:
            budget = max(self.prefill_chunk, self.idle_prefill_tokens)
        remaining = [len(r.prompt_ids) - r.prefilled for r in self._prefilling]
        rows = max(1, min(len(remaining), budget // MIN_CHUNK_COLUMNS))
        width = max(1, min(max(remaining[:rows]), budget // rows))
        batch = self._prefilling[:rows]
        counts = [min(left, width) for left in remaining[:rows]]
        starts = [r.prefilled for r in batch]
        token_rows = [
            [0] * (width - count) + r.prompt_ids[start : start + count]
            for r, start, count in zip(batch, starts, counts, strict=True)
        ]
        try:
            logits = self._forward(token_rows, starts, counts, width, first_row=len(self._running))
        except Exception as error:  # a fault fails these requests, never the worker
            log.exception("prefill failed")
            for request in batch:
                self._drop_prefilling(request, "error", error=f"generation failed: {error}", keep=False)
            return
        finished = []
        for index, (request, count) in enumerate(zip(batch, counts, strict=True)):
            request.prefilled += count
            if request.prefilled == len(request.prompt_ids):
                finished.append((request, logits[index]))
        for request, row_logits in finished:
            self._start_decoding(request, row_logits)
        self._flush_outbox()
        self._retire_finished()

    def _start_decoding(self, request: _Request, logits: torch.Tensor) -> None:
        """Move a prefilled row to the front of the prefill slots, which makes it the last decoding slot."""
        decoding = len(self._running)
        index = self._prefilling.index(request)
        if index != 0:
            first = self._prefilling[0]
            self._cache.swap(decoding, decoding + index, max(first.prefilled, request.prefilled))
        with self._lock:
            self._prefilling[0], self._prefilling[index] = request, self._prefilling[0]
            self._prefilling.pop(0)
            self._running.append(request)
        request.length = len(request.prompt_ids)
        self._accept_token(request, self._choose(request, logits))

    def _drop_prefilling(self, request: _Request, reason: str, *, error: str | None = None, keep: bool = True) -> None:
        """Leave before the prompt is done; what was computed is kept for a retry of the same prompt."""
        index = self._prefilling.index(request)
        slot = len(self._running) + index
        if keep:
            self._remember(request.prompt_ids[: request.prefilled], slot)
        last = len(self._prefilling) - 1
        if index != last:  # the last prefill row takes this one's slot
            self._cache.move(slot + last - index, slot, self._prefilling[last].prefilled)
        with self._lock:
            self._prefilling[index] = self._prefilling[last]
            self._prefilling.pop()
        self._release_if_idle()
        self._finish(request, reason, error=error)

    def _decode_step(self) -> None:
        batch = self._running
        lengths = [r.length for r in batch]
        try:
            logits = self._forward([[r.generated[-1]] for r in batch], lengths, [1] * len(batch), 1)
        except Exception as error:
            log.exception("decode step failed")
            for request in list(batch):
                self._finish(request, "error", error=f"generation failed: {error}")
            with self._lock:
                self._running.clear()
                for request in self._prefilling:  # their rows were in the buffers being dropped
                    request.prefilled = 0
            self._cache.release()
            return
        self._steps += 1
        for index, request in enumerate(batch):
            request.length += 1
            self._accept_token(request, self._choose(request, logits[index]))
        self._flush_outbox()
        self._retire_finished()

    def _forward(
        self, token_rows: list[list[int]], starts: list[int], counts: list[int], width: int, first_row: int = 0
    ) -> torch.Tensor:
        """Feed ``counts[i]`` tokens to slot ``first_row + i`` from position ``starts[i]``; next-token logits.

        A decode step is a chunk of width 1. Each row is left-padded to ``width``;
        padding queries see only column 0 and their outputs are never used (see
        ``SlotKVCache.prepare_chunk``).
        """
        cache = self._cache
        cache.prepare_chunk(starts, counts, width, first_row)
        pads = torch.tensor([width - count for count in counts]).unsqueeze(1)
        positions = (torch.tensor(starts).unsqueeze(1) + torch.arange(width).unsqueeze(0) - pads).clamp_(min=0)
        kv_length = cache.step_kv_length
        allowed = torch.arange(kv_length).view(1, 1, -1) <= positions.unsqueeze(2)
        dtype = self.model.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        output = self.model(
            input_ids=torch.tensor(token_rows, dtype=torch.long),
            position_ids=positions,
            attention_mask=mask.unsqueeze(1),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1, :].float()

    def _choose(self, request: _Request, logits: torch.Tensor) -> int:
        assert request.sampler is not None
        banned = self.eos_token_ids if len(request.generated) < request.params.min_new_tokens else []
        return request.sampler.choose(logits, banned)

    def _accept_token(self, request: _Request, token: int) -> None:
        """Record a token by the engines' shared rule (``reply_text``); queue its text for the loop."""
        assert request.decoder is not None and request.sampler is not None
        request.sampler.observe(token)
        self._generated_tokens += 1
        context_full = request.length + 1 >= self.context_length
        delta = accept_token(request, request.decoder, token, self.eos_token_ids, context_full=context_full)
        if delta:
            self._outbox.append((request, delta))

    def _flush_outbox(self) -> None:
        """Hand this step's deltas to their event loops, one wake-up per loop rather than per token.

        On two cores every wake-up of the event loop's thread competes with the
        model's threads mid-step; 16 wake-ups a step cost more than the step's
        Python work. Runs before any request of the step finishes, so a reply's
        last delta always precedes its result.
        """
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[str | GenerationResult], str]]] = {}
        for request, delta in self._outbox:
            by_loop.setdefault(request.loop, []).append((request.events, delta))
        self._outbox.clear()
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is gone: nobody is listening
                loop.call_soon_threadsafe(_deliver, items)

    def _retire_finished(self) -> None:
        for request in [r for r in self._running if r.finish_reason is not None]:
            self._retire(request)

    def _retire(self, request: _Request) -> None:
        """Leave the decode rows: the KV goes to the prefix cache, and two moves keep the slots packed.

        The last decoding row takes this row's slot, then the last prefilling row
        takes the slot the decoding rows no longer use. (Only this thread changes
        the lists; the lock is for readers on the event loop.)
        """
        index = self._running.index(request)
        if request.finish_reason != "error":
            self._remember([*request.prompt_ids, *request.generated][: request.length], index)
        last = len(self._running) - 1
        if index != last:
            self._cache.move(last, index, self._running[last].length)
        if self._prefilling:
            self._cache.move(last + len(self._prefilling), last, self._prefilling[-1].prefilled)
        with self._lock:
            self._running[index] = self._running[last]
            self._running.pop()
            if self._prefilling:
                self._prefilling.insert(0, self._prefilling.pop())
        self._release_if_idle()
        self._finish(request, request.finish_reason or "cancelled")

    def _release_if_idle(self) -> None:
        """Free slot buffers grown past the usual size once nobody uses them."""
        if not (self._running or self._prefilling) and self._cache.capacity > self.kv_reserve_tokens:
            self._cache.release()
            self._cache.ensure_capacity(self.kv_reserve_tokens)

    def _remember(self, token_ids: list[int], slot: int) -> None:
        if self._prefix_cache.enabled and token_ids:
            self._prefix_cache.insert(token_ids, self._cache.row(slot, len(token_ids)))

    def _finish(self, request: _Request, reason: str, *, error: str | None = None) -> None:
        if request.done:
            return
        request.done = True
        text = request.text
        if request.decoder is not None and reason != "stop":
            text = request.decoder.full_text()
        if text.startswith(request.text[: request.sent_chars]) and len(text) > request.sent_chars:
            request.post(text[request.sent_chars :])
        now = time.perf_counter()
        request.post(
            GenerationResult(
                token_ids=list(request.generated),
                text=text,
                finish_reason=reason,
                prompt_tokens=len(request.prompt_ids),
                completion_tokens=len(request.generated),
                time_to_first_token=(
                    None if request.first_token_at is None else request.first_token_at - request.submitted_at
                ),
                total_time=now - request.submitted_at,
                error=error,
                cached_tokens=request.cached_tokens,
            )
        )


def _deliver(items: list[tuple[asyncio.Queue[str | GenerationResult], str]]) -> None:
    for events, delta in items:
        events.put_nowait(delta)


def _vocab_size(model: Any) -> int:
    embeddings = model.get_output_embeddings()
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[0])
    return int(model.config.vocab_size)


def _kv_layout(model: Any) -> tuple[list[tuple[int, int]], torch.dtype]:
    """Each layer's ``(kv_heads, head_dim)`` and the dtype, read off one real forward.

    Asking the model beats reading config fields, which differ per architecture
    (GQA heads, GPT-2's fused projections, per-layer head counts).
    """
    cache = DynamicCache(config=model.config)
    one = torch.zeros((1, 1), dtype=torch.long)
    model(input_ids=one, position_ids=one, cache=cache, use_cache=True, logits_to_keep=1)
    shapes = [(int(layer.keys.shape[1]), int(layer.keys.shape[3])) for layer in cache.layers]
    return shapes, cache.layers[0].keys.dtype
