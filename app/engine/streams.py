"""What a caller holds while a reply is generated, whichever engine produces it.

The in-process batcher and the remote engine differ in how they make tokens, not in
how a caller reads them: both put text deltas and then one ``GenerationResult`` on a
per-request queue. Keeping the reading side here is what lets ChatService stay
unaware of which engine it talks to.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class GenerationResult:
    """What a finished request produced, for storage and display."""

    token_ids: list[int]
    text: str
    finish_reason: str  # eos | stop | length | cancelled | error | shutdown
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float | None
    total_time: float
    error: str | None = None
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


class StreamedRequest(Protocol):
    """The parts of an engine's request record a stream reads."""

    events: asyncio.Queue[Any]
    first_token_at: float | None


class RequestOwner(Protocol):
    """The engine side of a stream: how to stop a request and where it waits."""

    def cancel_request(self, request: Any) -> None: ...

    def queue_position_of(self, request: Any) -> int | None: ...


class GenerationStream:
    """Async iterator of text deltas; ``result`` holds the final outcome afterwards.

    Stopping early (``cancel()``, ``aclose()`` or leaving an ``async for`` through
    an exception) cancels the request in its engine.
    """

    def __init__(self, engine: RequestOwner, request: StreamedRequest) -> None:
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

    def ready_text(self) -> str:
        """The deltas already waiting, joined, without waiting for more.

        Lets a reader turn a burst of deltas into one page frame: each frame costs the
        web server's event loop far more than a delta does. Stops at the result (kept
        in ``result``, so iteration then ends as usual).
        """
        parts: list[str] = []
        events = self._request.events
        while self.result is None and not events.empty():
            item = events.get_nowait()
            if isinstance(item, GenerationResult):
                self.result = item
            else:
                parts.append(item)
        return "".join(parts)

    async def final(self) -> GenerationResult:
        """Drain the remaining deltas and return the result."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    def cancel(self) -> None:
        self._engine.cancel_request(self._request)

    async def aclose(self) -> None:
        self.cancel()

    @property
    def queue_position(self) -> int | None:
        """Requests ahead of this one in the waiting queue; None once it runs."""
        return self._engine.queue_position_of(self._request)

    @property
    def started(self) -> bool:
        return self._request.first_token_at is not None
