"""From a row's logits to text on the tester's page: choose, accept, deliver, finish.

Part of ``app.engine.batcher.Engine``. The worker thread produces the deltas; the
event loops that wait for them get them in one hand-over per step, and a request
ends with exactly one ``GenerationResult`` after its last delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import torch

from app.engine.batch_request import BatchRequest
from app.engine.reply_text import accept_token
from app.engine.streams import GenerationResult

if TYPE_CHECKING:
    from app.engine.batcher import Engine


class ReplyOutputMixin:
    """Token choice and the stream plumbing from the worker thread to the event loops."""

    def _choose(self: Engine, request: BatchRequest, logits: torch.Tensor) -> int:
        assert request.sampler is not None
        banned = self.eos_token_ids if len(request.generated) < request.params.min_new_tokens else []
        return request.sampler.choose(logits, banned)

    def _accept_token(self: Engine, request: BatchRequest, token: int) -> None:
        """Record a token by the engines' shared rule (``reply_text``); queue its text for the loop."""
        assert request.decoder is not None and request.sampler is not None
        request.sampler.observe(token)
        self._generated_tokens += 1
        context_full = request.length + 1 >= self.context_length
        delta = accept_token(request, request.decoder, token, self.eos_token_ids, context_full=context_full)
        if delta:
            self._outbox.append((request, delta))

    def _flush_outbox(self: Engine) -> None:
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

    def _finish(self: Engine, request: BatchRequest, reason: str, *, error: str | None = None) -> None:
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
