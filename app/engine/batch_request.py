"""One request's record inside the continuous batcher, shared by the engine's parts.

The event loop creates it in ``submit`` and reads it through its stream; the
worker thread fills in everything else. Keeping it apart from the ``Engine``
lets each part of the engine (``batch_rows``, ``batch_output``) name it without
importing the engine itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from app.engine.detokenize import IncrementalDecoder
from app.engine.params import SamplingParams
from app.engine.sampling import RowSampler
from app.engine.streams import GenerationResult


@dataclass(eq=False)
class BatchRequest:
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
