"""Rows of the batch in their KV slots: admit, prefill in chunks, decode, retire.

Part of ``app.engine.batcher.Engine``. Rows are kept packed: decoding rows take
the first slots, in ``_running`` order, and prompts still being read take the
slots after them, in ``_prefilling`` order; every join and leave below moves at
most two rows' KV to keep it so, which lets one forward cover a contiguous run
of slots. A newcomer's prompt is first matched against the prefix cache, so the
next turn of a chat prefills only its new turn; a leaving row's KV is kept there.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from app.engine.batch_request import BatchRequest
from app.engine.batch_settings import MIN_CHUNK_COLUMNS
from app.engine.detokenize import IncrementalDecoder
from app.engine.sampling import RowSampler

if TYPE_CHECKING:
    from app.engine.batcher import Engine

log = logging.getLogger("app.engine.batcher")  # the engine's one logger, whichever part logs


class BatchRowsMixin:
    """Admission, prefill chunks, decode steps and retirement of the batch's rows."""

    def _retire_cancelled(self: Engine) -> None:
        for request in [r for r in self._prefilling if r.cancel_requested]:
            self._drop_prefilling(request, "cancelled")
        for request in [r for r in self._running if r.cancel_requested]:
            request.finish_reason = "cancelled"
            self._retire(request)

    def _start_prefill(self: Engine, request: BatchRequest) -> None:
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

    def _prefill_chunk(self: Engine) -> None:
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

    def _start_decoding(self: Engine, request: BatchRequest, logits: torch.Tensor) -> None:
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

    def _drop_prefilling(
        self: Engine, request: BatchRequest, reason: str, *, error: str | None = None, keep: bool = True
    ) -> None:
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

    def _decode_step(self: Engine) -> None:
        batch = self._running
        lengths = [r.length for r in batch]
        try:
            logits = self._forward([[r.generated[-1]] for r in batch], lengths, [1] * len(batch), 1)
        except Exception as error:
            log.exception("decode step failed")
            self._fail_decoding(error)
            return
        self._steps += 1
        for index, request in enumerate(batch):
            request.length += 1
            self._accept_token(request, self._choose(request, logits[index]))
        self._flush_outbox()
        self._retire_finished()

    def _fail_decoding(self: Engine, error: Exception) -> None:
        """A decode forward failed: its rows end with the error, and the slots are rebuilt from scratch."""
        for request in list(self._running):
            self._finish(request, "error", error=f"generation failed: {error}")
        with self._lock:
            self._running.clear()
            for request in self._prefilling:  # their rows were in the buffers being dropped
                request.prefilled = 0
        self._cache.release()

    def _retire_finished(self: Engine) -> None:
        for request in [r for r in self._running if r.finish_reason is not None]:
            self._retire(request)

    def _retire(self: Engine, request: BatchRequest) -> None:
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

    def _release_if_idle(self: Engine) -> None:
        """Free slot buffers grown past the usual size once nobody uses them."""
        if not (self._running or self._prefilling) and self._cache.capacity > self.kv_reserve_tokens:
            self._cache.release()
            self._cache.ensure_capacity(self.kv_reserve_tokens)

    def _remember(self: Engine, token_ids: list[int], slot: int) -> None:
        if self._prefix_cache.enabled and token_ids:
            self._prefix_cache.insert(token_ids, self._cache.row(slot, len(token_ids)))
