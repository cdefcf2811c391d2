"""The worker thread's life: build the KV slots, warm up, then turn the loop until stopped.

Part of ``app.engine.batcher.Engine`` (mixed in, as SGLang splits its scheduler):
one turn admits newcomers, retires cancelled rows, runs one prefill chunk and one
decode step (those live in ``batch_rows``). All model compute happens on this
thread; the event loop only enqueues requests and reads their events.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from app.engine.batch_request import BatchRequest
from app.engine.batch_settings import (
    DEFAULT_ATTENTION_DEPTH,
    MAX_ATTENTION_DEPTH,
    MIN_ATTENTION_DEPTH,
    MIN_CHUNK_COLUMNS,
)
from app.engine.kv_cache import SlotKVCache
from app.engine.mixed_attention import PromptChunk
from app.engine.prefix_cache import MIN_TOKENS_TO_KEEP
from app.engine.prompting import shared_prompt_start

if TYPE_CHECKING:
    from app.engine.batcher import Engine

log = logging.getLogger("app.engine.batcher")  # the engine's one logger, whichever part logs


class WorkerLoopMixin:
    """The worker thread's ``_run`` and what it does before serving (see the module docstring)."""

    def _run(self: Engine) -> None:
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
                if self._mixed:
                    if self._running or self._prefilling:
                        self._mixed_step()
                    continue
                if self._prefilling:
                    self._prefill_chunk()
                if self._running:
                    self._decode_step()
        self._cache.release()

    def _warm_up(self: Engine) -> None:
        """Allocate the KV slots and run the shapes serving will use before serving.

        oneDNN builds a kernel per input shape on first use and the slot buffers
        are allocated on first admission; paying both here keeps them off the
        first users' time to first token. Requests submitted meanwhile just queue.
        """
        started = time.perf_counter()
        if self._mixed:
            self._warm_up_mixed()
            log.info("engine warmed up in %.1f s", time.perf_counter() - started)
            self._ready.set()
            return
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

    def _warm_up_mixed(self: Engine) -> None:
        """The mixed path's warm-up: the same shapes, timed, so the pacer starts from this machine's figures."""
        try:
            rows, dummy = self.max_batch_size, 8
            self._cache.ensure_capacity(self.kv_reserve_tokens)
            self._time_mixed(0, dummy * rows)
            for _ in range(2):  # the first pass builds oneDNN's kernels; the second is timed
                for batch in range(rows, 0, -1):
                    self._pacer.decode_seconds[batch] = self._time_mixed(batch, 0, dummy)
            self._attention_depth = self._pacer.attention_depth = self._measure_attention_depth()
            self._pacer.token_seconds = self._measure_token_seconds()
            self._seed_shared_prefix()
        except Exception:  # warm-up is an optimisation; serving reports real faults
            log.exception("engine warm-up failed")

    def _measure_token_seconds(self: Engine) -> float:
        """A prompt token's marginal time in a step that also decodes: the step's time less the pure decode."""
        rows = min(self.max_batch_size - 1, 8)
        width = 64
        timings = [self._time_mixed(rows, width, 16) for _ in range(3)]
        decode = self._pacer.decode_seconds.get(rows, 0.0) if rows else 0.0
        return max(min(timings) - decode, min(timings) / 4) / width

    def _seed_shared_prefix(self: Engine) -> None:
        """Prefill the start every first prompt shares (the template's default system turn) into the prefix cache."""
        if not self._prefix_cache.enabled:
            return
        shared = shared_prompt_start(self.loaded)
        if len(shared) < MIN_TOKENS_TO_KEEP or len(shared) + 1 > self.kv_reserve_tokens:
            return
        positions = list(range(len(shared)))
        self._flat_forward(shared, positions, [0] * len(shared), [], [PromptChunk(0, 0, 0, len(shared))], [0])
        self._remember(shared, 0)
        log.info("the prefix cache starts with the %d tokens every new chat shares", len(shared))

    def _measure_attention_depth(self: Engine) -> float:
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
            if self._mixed:
                self._time_mixed(0, width, start)
            else:
                self._forward([[0] * width], [start], [width], width)
            elapsed = time.perf_counter() - began
            timings[start] = min(elapsed, timings.get(start, elapsed))
        growth = timings[depth] / timings[0] - 1
        measured = depth / growth if growth > 0 else float(MAX_ATTENTION_DEPTH)
        log.info("prefill chunks cost twice as much %d tokens into a prompt", measured)
        return min(float(MAX_ATTENTION_DEPTH), max(float(MIN_ATTENTION_DEPTH), measured))

    def _next_work(self: Engine) -> list[BatchRequest] | None:
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
            newcomers: list[BatchRequest] = []
            while self._waiting and len(admitted) + len(newcomers) < self.max_batch_size:
                newcomers.append(self._waiting.popleft())
            return newcomers


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
