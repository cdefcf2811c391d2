"""The replies a generation process holds, as the web process knows them, and where their text goes.

The web process learns of its replies only from the child's messages: their text
(with the ids behind it), their results, and every ~100 ms a report of the child's
engine. This table keeps what it needs of that to answer at once, without asking
the child: whether the queue is full, where a request waits, and, if the child
dies, what each reply had shown so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from app.engine.batcher import EngineBusy, EngineStats
from app.engine.prefix_cache import PrefixCacheStats
from app.engine.process_wire import result_from_fields
from app.engine.streams import GenerationResult

QueueItems = list[tuple["asyncio.Queue[str | GenerationResult]", "str | GenerationResult"]]


@dataclass(eq=False)
class ProcessRequest:
    """A reply as the web process knows it (what ``GenerationStream`` reads, and what a crash must keep)."""

    request_id: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[str | GenerationResult]
    prompt_tokens: int
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    generated: list[int] = field(default_factory=list)  # ids the child has reported so far
    shown: list[str] = field(default_factory=list)  # the deltas delivered so far
    cancel_sent: bool = False
    done: bool = False


@dataclass(frozen=True)
class ChildReport:
    """The child's latest report: its engine's stats, the newest request it has taken, the waiting ones' places."""

    stats: EngineStats
    last_seen: int
    positions: dict[int, int]

    @classmethod
    def nothing_yet(cls, max_batch_size: int, max_queue: int, last_seen: int) -> ChildReport:
        """Before a child's first report: nothing running, nothing against it."""
        stats = EngineStats(
            running=0, prefilling=0, waiting=0, max_batch_size=max_batch_size, max_queue=max_queue,
            steps=0, generated_tokens=0, alive=True, accepting=True,
            prefix_cache=PrefixCacheStats(0, 0, 0, 0, 0, 0, 0),
        )
        return cls(stats, last_seen, {})

    @classmethod
    def from_message(
        cls, stats_fields: tuple[Any, ...], last_seen: int, positions: list[tuple[int, int]]
    ) -> ChildReport:
        stats = EngineStats(*stats_fields[:-1], prefix_cache=PrefixCacheStats(*stats_fields[-1]))
        return cls(stats, last_seen, dict(positions))


class ReplyTable:
    """Live replies by request id; the reader thread fills them, the event loop reads them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[int, ProcessRequest] = {}
        self._last_id = 0

    @property
    def last_id(self) -> int:
        return self._last_id

    def add(self, report: ChildReport, prompt_tokens: int, max_queue: int) -> ProcessRequest:
        """A new request with the next id, unless as many as ``max_queue`` wait already (``EngineBusy``)."""
        with self._lock:
            waiting = self._waiting(report)
            if waiting >= max_queue:
                raise EngineBusy(
                    f"the server is busy ({report.stats.running} replies running, "
                    f"{waiting} waiting); please try again in a moment"
                )
            self._last_id += 1
            request = ProcessRequest(self._last_id, asyncio.get_running_loop(), asyncio.Queue(), prompt_tokens)
            self._requests[request.request_id] = request
            return request

    def _waiting(self, report: ChildReport) -> int:
        """Not yet in a batch: waiting in the last report, or sent since, and no text yet."""
        return sum(
            1 for rid, request in self._requests.items()
            if (rid > report.last_seen or rid in report.positions) and request.first_token_at is None
        )

    def unseen(self, report: ChildReport) -> int:
        """Requests sent after the child's last report (so waiting, as far as anyone knows)."""
        with self._lock:
            return sum(1 for rid in self._requests if rid > report.last_seen)

    def position(self, request: ProcessRequest, report: ChildReport) -> int | None:
        if request.done or request.first_token_at is not None:
            return None
        position = report.positions.get(request.request_id)
        if position is not None:
            return position
        if request.request_id <= report.last_seen:
            return None  # the child has it in a batch
        with self._lock:  # sent after the report: behind everyone the child has waiting
            ahead = sum(1 for rid in self._requests if report.last_seen < rid < request.request_id)
        return len(report.positions) + ahead

    def claim_cancel(self, request: ProcessRequest) -> bool:
        """True the first time a live request is cancelled: then the child must be told."""
        with self._lock:
            if request.done or request.cancel_sent:
                return False
            request.cancel_sent = True
            return True

    def deliver(self, deltas: list[tuple[int, list[int], str]], results: list[tuple[int, Any]]) -> None:
        """Deltas then results of one engine step, handed to each event loop in one call."""
        now = time.perf_counter()
        by_loop: dict[asyncio.AbstractEventLoop, QueueItems] = {}
        with self._lock:
            requests = self._requests
            for request_id, ids, text in deltas:
                request = requests.get(request_id)
                if request is None:
                    continue
                request.generated += ids
                request.shown.append(text)
                if request.first_token_at is None:
                    request.first_token_at = now
                by_loop.setdefault(request.loop, []).append((request.events, text))
            for request_id, fields in results:
                request = requests.pop(request_id, None)
                if request is not None:
                    request.done = True
                    by_loop.setdefault(request.loop, []).append((request.events, result_from_fields(fields)))
        _post(by_loop)

    def end_all(self, reason: str, error: str | None) -> None:
        """The child is gone: each reply ends with what it had shown, ids included."""
        with self._lock:
            orphans = list(self._requests.values())
            self._requests.clear()
            for request in orphans:
                request.done = True
        now = time.perf_counter()
        by_loop: dict[asyncio.AbstractEventLoop, QueueItems] = {}
        for request in orphans:
            by_loop.setdefault(request.loop, []).append((request.events, _cut_short(request, reason, error, now)))
        _post(by_loop)


def _cut_short(request: ProcessRequest, reason: str, error: str | None, now: float) -> GenerationResult:
    return GenerationResult(
        token_ids=list(request.generated),
        text="".join(request.shown),
        finish_reason=reason,
        prompt_tokens=request.prompt_tokens,
        completion_tokens=len(request.generated),
        time_to_first_token=None if request.first_token_at is None else request.first_token_at - request.submitted_at,
        total_time=now - request.submitted_at,
        error=error,
    )


def _post(by_loop: dict[asyncio.AbstractEventLoop, QueueItems]) -> None:
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is gone: nobody is listening
            loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: QueueItems) -> None:
    for events, item in items:
        events.put_nowait(item)
