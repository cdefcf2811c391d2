"""One worker thread that serves every user's generation in one continuous batch.

The event loop only enqueues requests and reads token events; all model compute
happens on the worker thread, so a long prefill never freezes the web server.
Each turn of the loop admits waiting requests into free rows, runs one bounded
prefill chunk for prompts still being read, and one decode step for every reply
being written, then retires finished or cancelled rows. So a newcomer never waits
for the batch to drain, and a long prompt (a pasted document) delays the running
streams by one chunk per token, not by its whole prefill (Sarathi-Serve's idea).
Llama-family models run each turn as one mixed forward (``batch_mixed``): the
decode rows' tokens and a prompt share sized by time (``prefill_pacer``,
``CHAT_PREFILL_SHARE``) read the weights once; other models (GPT-2 / DialoGPT)
run the chunk and the decode step as two forwards.

A request's prompt is first matched against the prefix cache (the KV of earlier
requests, keyed by token ids): the next turn of a chat prefills only its new turn.

Shape of a turn, in the spirit of gpt-fast: ``_start_prefill`` -> ``_prefill_chunk``
-> ``_decode_step`` -> ``_accept_token``, each a small method; ``_forward`` (below)
is the one model call they share. The ``Engine`` is assembled from its parts the
way SGLang assembles its scheduler, one mixin per job:

- this module: construction, the event-loop side (the ``ChatEngine`` contract) and ``_forward``;
- ``batch_worker.WorkerLoopMixin``: the worker thread's loop, warm-up and shutdown;
- ``batch_rows.BatchRowsMixin``: rows in KV slots (admit, prefill chunks, decode, retire);
- ``batch_mixed.MixedStepMixin``: the one-forward step of Llama-family models;
- ``batch_output.ReplyOutputMixin``: token choice and delivery of text and results to the event loops.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

from app.engine.batch_mixed import MixedStepMixin
from app.engine.batch_output import ReplyOutputMixin
from app.engine.batch_request import BatchRequest
from app.engine.batch_rows import BatchRowsMixin
from app.engine.batch_settings import (
    DEFAULT_ATTENTION_DEPTH,
    DEFAULT_KV_RESERVE_TOKENS,
    DEFAULT_PREFILL_SHARE,
    DEFAULT_PREFIX_CACHE_MB,
    IDLE_PREFILL_TOKENS,
    MIN_CHUNK_COLUMNS,
    MIXED_PREFILL_CAP,
    PREFILL_CHUNK,
)
from app.engine.batch_worker import WorkerLoopMixin
from app.engine.contract import (
    ChatEngine,
    EngineBusy,
    EngineHealth,
    EngineStats,
    EngineStopped,
    GenerationResult,
    GenerationStream,
    InvalidPrompt,
    PromptTooLong,
    checked_prompt,
    embedded_engine_report,
)
from app.engine.kv_cache import SlotKVCache
from app.engine.loading import LoadedModel
from app.engine.mixed_attention import enable_mixed_attention, supports_mixed_batches
from app.engine.params import SamplingParams
from app.engine.prefill_pacer import PrefillPacer
from app.engine.prefix_cache import PrefixCache

# Names importable from here before the contract and the settings had their own modules.
__all__ = [
    "DEFAULT_ATTENTION_DEPTH",
    "DEFAULT_KV_RESERVE_TOKENS",
    "DEFAULT_PREFILL_SHARE",
    "DEFAULT_PREFIX_CACHE_MB",
    "IDLE_PREFILL_TOKENS",
    "PREFILL_CHUNK",
    "Engine",
    "EngineBusy",
    "EngineStats",
    "EngineStopped",
    "GenerationResult",
    "GenerationStream",
    "InvalidPrompt",
    "PromptTooLong",
    "checked_prompt",
]


class Engine(WorkerLoopMixin, BatchRowsMixin, MixedStepMixin, ReplyOutputMixin, ChatEngine):
    """The continuous-batching generation engine (see the module docstring)."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch_size: int = 16,
        max_queue: int = 64,
        prefill_chunk: int = 0,
        idle_prefill_tokens: int = IDLE_PREFILL_TOKENS,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
        kv_reserve_tokens: int = DEFAULT_KV_RESERVE_TOKENS,
        prefill_share: float = DEFAULT_PREFILL_SHARE,
        mixed_batches: bool = True,
    ) -> None:
        if max_batch_size < 1 or max_queue < 0:
            raise ValueError("max_batch_size must be >= 1 and max_queue >= 0")
        if prefill_chunk < 0 or prefix_cache_mb < 0:
            raise ValueError("prefill_chunk must be >= 0 (0: the default) and prefix_cache_mb >= 0")
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.context_length = loaded.context_length
        self.eos_token_ids = sorted(loaded.eos_token_ids)
        self.vocab_size = _vocab_size(loaded.model)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        # Llama-family models run each step as one forward (batch_mixed); others keep two forwards
        self._mixed = mixed_batches and supports_mixed_batches(loaded.model)
        self.prefill_chunk = prefill_chunk or (MIXED_PREFILL_CAP if self._mixed else PREFILL_CHUNK)
        self.idle_prefill_tokens = idle_prefill_tokens
        self.kv_reserve_tokens = max(1, min(kv_reserve_tokens, self.context_length + 1))
        self._lock = threading.Condition()
        self._waiting: deque[BatchRequest] = deque()
        self._running: list[BatchRequest] = []  # decoding, in decode-cache row order
        self._prefilling: list[BatchRequest] = []  # reading their prompt, in prefill-cache row order
        self._accepting = True
        self._abort = False
        self._thread: threading.Thread | None = None
        # built by the worker (reading the KV layout takes a forward, and only the worker runs the model)
        self._cache: SlotKVCache
        self._prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20))
        self._outbox: list[tuple[BatchRequest, str]] = []  # this step's deltas, delivered together
        self._attention_depth = float(DEFAULT_ATTENTION_DEPTH)
        self._pacer = PrefillPacer(
            prefill_share, min(MIN_CHUNK_COLUMNS, self.prefill_chunk), self.prefill_chunk, self._attention_depth)
        if self._mixed:
            enable_mixed_attention(loaded.model)
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
        request = BatchRequest(prompt, params, asyncio.get_running_loop(), asyncio.Queue())
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

    def cancel_request(self, request: BatchRequest) -> None:
        with self._lock:
            if request.done:
                return
            request.cancel_requested = True
            if request in self._waiting:
                self._waiting.remove(request)
                self._finish(request, "cancelled")

    def queue_position_of(self, request: BatchRequest) -> int | None:
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


    async def health_report(self) -> EngineHealth:
        """Healthy while the worker thread lives; ``/healthz`` shows its load and the prefix cache's use."""
        stats = self.stats()
        report = embedded_engine_report(stats, self.ready)
        return EngineHealth(healthy=stats.alive, report=report)

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

    # ------------------------------------------------------------ the one model call

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


def _vocab_size(model: Any) -> int:
    embeddings = model.get_output_embeddings()
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[0])
    return int(model.config.vocab_size)

