"""One forward per step for Llama-family models: every decode row's token plus a share of the prompts.

Part of ``app.engine.batcher.Engine``. With separate prefill-chunk and decode
forwards each paid a full read of the weights, so a long prompt cost the streams
a second weight pass per step on top of its own arithmetic. Here a step is one
flat sequence: the decoding rows' last tokens first (slots ``0..d-1``, as ever),
then chunks of the prompts being read, in admission order, up to the token count
``PrefillPacer`` allows (by time: see ``prefill_pacer``). Attention stays per
row (``mixed_attention``); logits are computed only for the decode rows and for
prompts whose last token is in this step.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from app.engine.batch_request import BatchRequest
from app.engine.mixed_attention import MixedStep, PromptChunk

if TYPE_CHECKING:
    from app.engine.batcher import Engine

log = logging.getLogger("app.engine.batcher")

# A 4D mask makes transformers skip building one; the mixed attention builds its own per row.
_NO_MASK = torch.zeros((1, 1, 1, 1))


class MixedStepMixin:
    """The mixed step: plan the prompt share, run one forward, hand out the logits."""

    def _prompt_budget(self: Engine) -> int:
        if not self._running:  # nothing streams: only throughput matters
            return max(self.prefill_chunk, self.idle_prefill_tokens)
        depth = self._prefilling[0].prefilled if self._prefilling else 0
        return self._pacer.tokens(len(self._running), depth)

    def _mixed_step(self: Engine) -> None:
        decode = list(self._running)
        budget = self._prompt_budget() if self._prefilling else 0
        chunks: list[tuple[BatchRequest, int]] = []
        for request in self._prefilling:
            if budget <= 0:
                break
            count = min(len(request.prompt_ids) - request.prefilled, budget)
            chunks.append((request, count))
            budget -= count
        depth = self._prefilling[0].prefilled if chunks else 0
        began = time.perf_counter()
        try:
            logits, finishing = self._forward_mixed(decode, chunks)
        except Exception as error:  # a fault fails this step's requests, never the worker
            log.exception("mixed step failed")
            for request, _ in chunks:  # the prompts first: a stream must not die of someone's prompt
                self._drop_prefilling(request, "error", error=f"generation failed: {error}", keep=False)
            if chunks and decode:
                self._mixed_step()  # the same decode rows again, alone
            elif decode:
                self._fail_decoding(error)
            return
        elapsed = time.perf_counter() - began
        prompt_tokens = sum(count for _, count in chunks)
        if decode and not chunks:
            self._pacer.observe_decode(len(decode), elapsed)
        elif decode:
            self._pacer.observe_mixed(len(decode), prompt_tokens, depth, elapsed)
        if decode:
            self._steps += 1
        for index, request in enumerate(decode):
            request.length += 1
            self._accept_token(request, self._choose(request, logits[index]))
        for request, count in chunks:
            request.prefilled += count
        for request, row in finishing:
            self._start_decoding(request, logits[row])
            self._remember(request.prompt_ids, self._running.index(request))  # concurrent arrivals share it
        self._flush_outbox()
        self._retire_finished()

    def _forward_mixed(
        self: Engine, decode: list[BatchRequest], chunks: list[tuple[BatchRequest, int]]
    ) -> tuple[torch.Tensor, list[tuple[BatchRequest, int]]]:
        """One forward over the flat batch; logits rows: decode rows, then each finishing prompt."""
        tokens = [request.generated[-1] for request in decode]
        positions = [request.length for request in decode]
        slots = list(range(len(decode)))
        keep = list(range(len(decode)))
        prompt_chunks, finishing = [], []
        for request, count in chunks:
            slot = len(decode) + self._prefilling.index(request)
            start = request.prefilled
            prompt_chunks.append(PromptChunk(slot, len(tokens), start, count))
            tokens += request.prompt_ids[start : start + count]
            positions += range(start, start + count)
            slots += [slot] * count
            if start + count == len(request.prompt_ids):
                finishing.append((request, len(keep)))
                keep.append(len(tokens) - 1)
        logits = self._flat_forward(tokens, positions, slots, [r.length for r in decode], prompt_chunks, keep)
        return logits, finishing

    def _flat_forward(
        self: Engine,
        tokens: list[int],
        positions: list[int],
        slots: list[int],
        decode_lengths: list[int],
        prompt_chunks: list[PromptChunk],
        keep: list[int],
    ) -> torch.Tensor:
        """The model call of a mixed step: token ``t`` at ``positions[t]`` in slot ``slots[t]``; logits of ``keep``."""
        self._cache.prepare_tokens(slots, positions)
        step = MixedStep(self._cache.layers, decode_lengths, prompt_chunks)
        output = self.model(
            input_ids=torch.tensor([tokens], dtype=torch.long),
            position_ids=torch.tensor([positions], dtype=torch.long),
            attention_mask=_NO_MASK,
            cache=self._cache,
            use_cache=True,
            logits_to_keep=torch.tensor(keep, dtype=torch.long) if keep else 1,
            mixed_step=step,
        )
        return output.logits[0].float()

    def _time_mixed(self: Engine, rows: int, chunk: int = 0, depth: int = 0) -> float:
        """Seconds for ``rows`` decode rows (at ``depth``) plus a ``chunk``-token prompt piece in slot ``rows``."""
        tokens = [0] * (rows + chunk)
        positions = [depth] * rows + list(range(depth, depth + chunk))
        slots = list(range(rows)) + [rows] * chunk
        pieces = [PromptChunk(rows, rows, depth, chunk)] if chunk else []
        keep = list(range(rows)) or [len(tokens) - 1]
        began = time.perf_counter()
        self._flat_forward(tokens, positions, slots, [depth] * rows, pieces, keep)
        return time.perf_counter() - began
