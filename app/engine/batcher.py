"""One worker thread that serves every user's generation in one continuous batch.

The event loop only enqueues requests and reads token events; all model compute
happens on the worker thread, so a long prefill never freezes the web server.
Between decode steps the worker admits waiting requests (one padded prefill for
the newcomers, then they join the running batch) and retires finished or cancelled
ones, so a new request never waits for the whole batch to drain. Each step reads
the weights once for the whole batch: that is where the throughput comes from on
a CPU whose matrix units idle at batch 1.

Shape of a step, in the spirit of gpt-fast: ``prefill`` -> ``decode_one_token`` ->
``accept_token``, each a small method below.
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
from app.engine.sampling import RowSampler

log = logging.getLogger(__name__)

PREFILL_CHUNK = 512
PREFILL_TOKEN_BUDGET = 2048
# KV slot buffers grow with the longest chat; above this many columns they are
# freed when the batch empties, so one long chat does not pin gigabytes for good.
KEEP_CAPACITY_WHEN_IDLE = 1024


class EngineBusy(RuntimeError):
    """The waiting queue is full; the caller should say "busy, try again"."""


class EngineStopped(RuntimeError):
    """The engine is shutting down and takes no new requests."""


class PromptTooLong(ValueError):
    """Prompt plus requested new tokens do not fit the model's context."""


class InvalidPrompt(ValueError):
    """The prompt ids are empty or not ids of this model's vocabulary."""


@dataclass(frozen=True)
class GenerationResult:
    """What a finished request produced, for storage and display."""

    token_ids: list[int]
    text: str
    finish_reason: str  # eos | stop | length | cancelled | error
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float | None
    total_time: float
    error: str | None = None


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    max_batch_size: int
    max_queue: int
    steps: int
    generated_tokens: int
    alive: bool
    accepting: bool


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
    length: int = 0  # tokens of this row held in the KV cache
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


class GenerationStream:
    """Async iterator of text deltas; ``result`` holds the final outcome afterwards.

    Stopping early (``cancel()``, ``aclose()`` or leaving an ``async for`` through
    an exception) cancels the request inside the batch at the next step.
    """

    def __init__(self, engine: Engine, request: _Request) -> None:
        self._engine = engine
        self._request = request
        self.result: GenerationResult | None = None

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> str:
        if self.result is not None:
            raise StopAsyncIteration
        try:
            item = await self._request.events.get()
        except BaseException:
            self.cancel()
            raise
        if isinstance(item, GenerationResult):
            self.result = item
            raise StopAsyncIteration
        return item

    async def final(self) -> GenerationResult:
        """Drain the remaining deltas and return the result."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    def cancel(self) -> None:
        self._engine._cancel(self._request)

    async def aclose(self) -> None:
        self.cancel()

    @property
    def queue_position(self) -> int | None:
        """Requests ahead of this one in the waiting queue; None once it runs."""
        return self._engine._position_of(self._request)

    @property
    def started(self) -> bool:
        return self._request.first_token_at is not None


class Engine:
    """The continuous-batching generation engine (see the module docstring)."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch_size: int = 16,
        max_queue: int = 64,
        prefill_chunk: int = PREFILL_CHUNK,
        prefill_token_budget: int = PREFILL_TOKEN_BUDGET,
    ) -> None:
        if max_batch_size < 1 or max_queue < 0:
            raise ValueError("max_batch_size must be >= 1 and max_queue >= 0")
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.context_length = loaded.context_length
        self.eos_token_ids = sorted(loaded.eos_token_ids)
        self.vocab_size = _vocab_size(loaded.model)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.prefill_token_budget = prefill_token_budget
        self._lock = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._accepting = True
        self._abort = False
        self._thread: threading.Thread | None = None
        self._cache = SlotKVCache(_num_layers(loaded.model), max_batch_size, self.context_length)
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
        prompt = list(prompt_ids)
        if not prompt:
            raise InvalidPrompt("the prompt is empty")
        if any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < self.vocab_size for t in prompt):
            raise InvalidPrompt(f"prompt holds ids outside this model's vocabulary (0..{self.vocab_size - 1})")
        if len(prompt) + params.max_new_tokens > self.context_length:
            raise PromptTooLong(
                f"{len(prompt)} prompt tokens + {params.max_new_tokens} new tokens exceed the "
                f"model's context of {self.context_length} tokens"
            )
        return prompt

    def _cancel(self, request: _Request) -> None:
        with self._lock:
            if request.done:
                return
            request.cancel_requested = True
            if request in self._waiting:
                self._waiting.remove(request)
                self._finish(request, "cancelled")

    def _position_of(self, request: _Request) -> int | None:
        with self._lock:
            try:
                return self._waiting.index(request)
            except ValueError:
                return None

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                running=len(self._running),
                waiting=len(self._waiting),
                max_batch_size=self.max_batch_size,
                max_queue=self.max_queue,
                steps=self._steps,
                generated_tokens=self._generated_tokens,
                alive=self._thread is not None and self._thread.is_alive(),
                accepting=self._accepting,
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
            self._warm_up()
            while True:
                newcomers = self._next_work()
                if newcomers is None:
                    break
                self._retire_cancelled()
                if newcomers:
                    self._admit(newcomers)
                if self._running:
                    self._decode_step()
        self._cache.release()

    def _warm_up(self) -> None:
        """Allocate the KV slots and run one decode at every batch size before serving.

        oneDNN builds a kernel per input shape on first use and the slot buffers
        are allocated on first admission; paying both here keeps them off the
        first users' time to first token. Requests submitted meanwhile just queue.
        """
        started = time.perf_counter()
        try:
            dummy = [0] * 8
            _, prefill_kv = self._prefill([dummy] * self.max_batch_size)
            for slot in range(self.max_batch_size):
                self._cache.place(slot, [(k[slot], v[slot]) for k, v in prefill_kv])
            for batch in range(self.max_batch_size, 0, -1):
                self._decode_one_token_ids([0] * batch, [len(dummy)] * batch)
        except Exception:  # warm-up is an optimisation; serving reports real faults
            log.exception("engine warm-up failed")
        log.info("engine warmed up in %.1f s", time.perf_counter() - started)
        self._ready.set()

    def _next_work(self) -> list[_Request] | None:
        """Block until there is work; take the newcomers that fit. None means exit."""
        with self._lock:
            while not (self._waiting or self._running or self._abort or not self._accepting):
                self._lock.wait()
            if self._abort or (not self._accepting and not self._waiting and not self._running):
                for request in [*self._waiting, *self._running]:
                    self._finish(request, "cancelled")
                self._waiting.clear()
                self._running.clear()
                return None
            newcomers: list[_Request] = []
            budget = self.prefill_token_budget
            while self._waiting and len(self._running) + len(newcomers) < self.max_batch_size:
                size = len(self._waiting[0].prompt_ids)
                if newcomers and size > budget:
                    break
                newcomers.append(self._waiting.popleft())
                budget -= size
            return newcomers

    def _retire_cancelled(self) -> None:
        for request in [r for r in self._running if r.cancel_requested]:
            request.finish_reason = "cancelled"
            self._retire(request)

    def _admit(self, newcomers: list[_Request]) -> None:
        started = time.perf_counter()
        try:
            logits, prefill_kv = self._prefill([r.prompt_ids for r in newcomers])
        except Exception as error:  # a fault fails these requests, never the worker
            log.exception("prefill failed")
            for request in newcomers:
                self._finish(request, "error", error=f"generation failed: {error}")
            return
        padded = max(len(r.prompt_ids) for r in newcomers)
        for index, request in enumerate(newcomers):
            if request.cancel_requested:
                self._finish(request, "cancelled")
                continue
            length = len(request.prompt_ids)
            slot = len(self._running)
            self._cache.place(
                slot, [(k[index, :, padded - length :], v[index, :, padded - length :]) for k, v in prefill_kv]
            )
            request.length = length
            request.decoder = IncrementalDecoder(self.tokenizer)
            request.sampler = RowSampler(request.params, self.vocab_size, request.prompt_ids)
            with self._lock:
                self._running.append(request)
            self._accept_token(request, self._choose(request, logits[index]))
        self._retire_finished()
        log.debug("admitted %d in %.3f s", len(newcomers), time.perf_counter() - started)

    def _prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Left-padded batched prefill in chunks; returns last-position logits and per-layer KV."""
        padded = max(len(p) for p in prompts)
        pads = torch.tensor([padded - len(p) for p in prompts])
        input_ids = torch.tensor([[0] * (padded - len(p)) + p for p in prompts], dtype=torch.long)
        columns = torch.arange(padded)
        positions = (columns.unsqueeze(0) - pads.unsqueeze(1)).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = None
        for start in range(0, padded, self.prefill_chunk):
            end = min(padded, start + self.prefill_chunk)
            mask = _prefill_mask(pads, start, end, self.model.dtype)
            output = self.model(
                input_ids=input_ids[:, start:end],
                position_ids=positions[:, start:end],
                attention_mask=mask,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = output.logits[:, -1, :].float()
        assert logits is not None
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return logits, kv

    def _decode_step(self) -> None:
        batch = self._running
        lengths = [r.length for r in batch]
        try:
            logits = self._decode_one_token(batch, lengths)
        except Exception as error:
            log.exception("decode step failed")
            for request in list(batch):
                self._finish(request, "error", error=f"generation failed: {error}")
            with self._lock:
                self._running.clear()
            self._cache.release()
            return
        self._steps += 1
        for index, request in enumerate(batch):
            request.length += 1
            self._accept_token(request, self._choose(request, logits[index]))
        self._retire_finished()

    def _decode_one_token(self, batch: list[_Request], lengths: list[int]) -> torch.Tensor:
        return self._decode_one_token_ids([r.generated[-1] for r in batch], lengths)

    def _decode_one_token_ids(self, last_tokens: list[int], lengths: list[int]) -> torch.Tensor:
        """One batched forward step: row i feeds ``last_tokens[i]`` at position ``lengths[i]``."""
        self._cache.prepare_step(lengths)
        kv_length = self._cache.step_kv_length
        allowed = torch.arange(kv_length).unsqueeze(0) <= torch.tensor(lengths).unsqueeze(1)
        dtype = self.model.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        output = self.model(
            input_ids=torch.tensor(last_tokens, dtype=torch.long).unsqueeze(1),
            position_ids=torch.tensor(lengths, dtype=torch.long).unsqueeze(1),
            attention_mask=mask.view(len(lengths), 1, 1, kv_length),
            past_key_values=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1, :].float()

    def _choose(self, request: _Request, logits: torch.Tensor) -> int:
        assert request.sampler is not None
        banned = self.eos_token_ids if len(request.generated) < request.params.min_new_tokens else []
        return request.sampler.choose(logits, banned)

    def _accept_token(self, request: _Request, token: int) -> None:
        """Record a token, stream its text, decide whether the request is finished."""
        assert request.decoder is not None and request.sampler is not None
        if request.first_token_at is None:
            request.first_token_at = time.perf_counter()
        request.generated.append(token)
        request.sampler.observe(token)
        self._generated_tokens += 1
        params = request.params
        if token in self.eos_token_ids:
            request.finish_reason = "eos"
            return
        request.text += request.decoder.push(token)
        if params.stop:
            cut = _find_stop(request.text, params.stop)
            if cut is not None:
                request.text = request.text[:cut]
                request.finish_reason = "stop"
                return
        if len(request.generated) >= params.max_new_tokens or request.length + 1 >= self.context_length:
            request.finish_reason = "length"
            return
        holdback = max((len(s) for s in params.stop), default=1) - 1
        safe_end = len(request.text) - holdback
        if safe_end > request.sent_chars:
            request.post(request.text[request.sent_chars : safe_end])
            request.sent_chars = safe_end

    def _retire_finished(self) -> None:
        for request in [r for r in self._running if r.finish_reason is not None]:
            self._retire(request)

    def _retire(self, request: _Request) -> None:
        """Leave the batch: the last row moves into this row's slot."""
        with self._lock:
            index = self._running.index(request)
            last = len(self._running) - 1
            if index != last:
                moved = self._running[last]
                self._cache.move(last, index, moved.length)
                self._running[index] = moved
            self._running.pop()
            idle = not self._running
        if idle and self._cache.capacity > KEEP_CAPACITY_WHEN_IDLE:
            self._cache.release()
        self._finish(request, request.finish_reason or "cancelled")

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
            )
        )


def _prefill_mask(pads: torch.Tensor, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask for query columns ``start:end`` over key columns ``0:end``.

    A query may see keys at or before itself that are not left padding. Padding
    queries see nothing useful, but get finite values, never NaN.
    """
    queries = torch.arange(start, end).view(1, -1, 1)
    keys = torch.arange(end).view(1, 1, -1)
    allowed = (keys <= queries) & (keys >= pads.view(-1, 1, 1))
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [index for stop in stops if (index := text.find(stop)) >= 0]
    return min(positions) if positions else None


def _vocab_size(model: Any) -> int:
    embeddings = model.get_output_embeddings()
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[0])
    return int(model.config.vocab_size)


def _num_layers(model: Any) -> int:
    config = model.config
    getter = getattr(config, "get_text_config", None)
    text_config = getter() if callable(getter) else config
    for attribute in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(text_config, attribute, None)
        if isinstance(value, int):
            return value
    raise ValueError("cannot tell how many layers the model has")
