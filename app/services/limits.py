"""Limits on what one tester, or one client address, can take from the shared server.

One limiter for the whole server, made of three small parts that every gate shares:

- :class:`BoundedTable`: per-key state in an LRU map of at most ``capacity`` keys, so
  memory stays bounded whatever keys a client invents (addresses, names it tries);
- :class:`MovingWindow`: at most ``limit`` events per key in any ``window`` seconds, and
  the whole seconds until the next one is allowed (what ``Retry-After`` says);
- :class:`Slots`: at most ``at_once`` holders, and a refusal rather than an endless
  queue for whoever would wait beyond ``max_waiting`` others or ``wait_seconds``.

Searches (:class:`SearchGate`, below), exports (``app/web/export_route.py``), sign-ups
(``app/web/auth_routes.py``) and the login guard (``app/accounts/login_guard.py``) are
built from them. Clocks are injectable, so tests move time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Generic, TypeVar

from app.services.errors import RateLimited

MAX_TRACKED_KEYS = 10_000  # per table: users, addresses or (name, address) pairs
SEARCHES_PER_WINDOW = 30
SEARCH_WINDOW_SECONDS = 10.0
SEARCHES_WAITING_PER_USER = 2
SEARCHES_AT_ONCE = 4  # SQLAlchemy's default pool holds 5 (+10 overflow) connections
SEARCH_SLOT_WAIT_SECONDS = 3.0

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedTable(Generic[K, V]):
    """Per-key state that never holds more than ``capacity`` keys.

    A table keyed by something a client chooses would otherwise grow with every key it
    invents; here storing a key past ``capacity`` forgets the least recently stored or
    used one. Forgetting only lets that key start afresh (an empty window, no failures,
    no turn to wait behind), which is why it is safe for every limiter here.
    """

    def __init__(self, capacity: int = MAX_TRACKED_KEYS) -> None:
        if capacity < 1:
            raise ValueError("a bounded table needs room for at least one key")
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        """The key's state, or None; looking does not make a key recent."""
        return self._entries.get(key)

    def put(self, key: K, value: V) -> V:
        """Store ``value`` as the key's state, most recent first to stay."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return value

    def get_or_add(self, key: K, make: Callable[[], V]) -> V:
        """The key's state (made by ``make`` when it has none), marked most recent."""
        value = self._entries.get(key)
        return self.put(key, make() if value is None else value)

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)


class MovingWindow:
    """At most ``limit`` events per key in any ``window`` seconds.

    A moving window, not a fixed one: a burst at the end of one minute and another at
    the start of the next are counted together. An event exactly ``window`` seconds old
    no longer counts. Memory: at most ``capacity`` keys, each with the times of its
    events still in the window (at most ``limit`` when every event passes ``allow``).
    """

    def __init__(self, limit: int, window: float, *, capacity: int = MAX_TRACKED_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._events: BoundedTable[Hashable, deque[float]] = BoundedTable(capacity)

    def tracked_keys(self) -> int:
        return len(self._events)

    def _in_window(self, key: Hashable) -> deque[float] | None:
        times = self._events.get(key)
        if times is None:
            return None
        now = self.clock()
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            self._events.pop(key)
            return None
        return times

    def retry_after(self, key: Hashable) -> int:
        """0 when ``key`` may act now, else the whole seconds (at least 1) until it may."""
        times = self._in_window(key)
        if times is None or len(times) < self.limit:
            return 0
        return max(1, math.ceil(times[-self.limit] + self.window - self.clock()))

    def hit(self, key: Hashable) -> None:
        """Count one event for ``key`` now, whether or not the window had room."""
        times = self._in_window(key) or deque()
        times.append(self.clock())
        self._events.put(key, times)

    def allow(self, key: Hashable) -> bool:
        """Count one event for ``key`` now if the window has room; False (nothing counted) if not."""
        if self.retry_after(key):
            return False
        self.hit(key)
        return True


class Slots:
    """At most ``at_once`` holders at a time; whoever cannot wait is refused, not queued.

    ``max_waiting``: how many may queue behind the holders (None: any number, 0: none);
    ``wait_seconds``: how long one may queue for a slot (None: until it gets one).
    """

    def __init__(self, at_once: int = 1, *, max_waiting: int | None = None, wait_seconds: float | None = None) -> None:
        self._free = asyncio.Semaphore(at_once)
        self._max_waiting = max_waiting
        self._wait_seconds = wait_seconds
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def turn(self, refusal: Exception) -> AsyncIterator[None]:
        """Hold a slot for the block; raises ``refusal`` instead when the line is full or the wait ran out."""
        if self._max_waiting is not None and self._free.locked() and self.waiting >= self._max_waiting:
            raise refusal
        self.waiting += 1
        try:
            async with asyncio.timeout(self._wait_seconds):
                await self._free.acquire()
        except TimeoutError:
            raise refusal from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._free.release()


class SearchGate:
    """Bounds what searching can take from the database.

    Per user: one search runs at a time, at most ``SEARCHES_WAITING_PER_USER`` wait
    behind it, and at most ``SEARCHES_PER_WINDOW`` start per ``SEARCH_WINDOW_SECONDS``.
    For everyone together: at most ``at_once`` searches run at the same time, so they
    can never hold the whole connection pool (opening a chat, sending, ``/healthz``
    always find a connection); a search that cannot start within ``wait_seconds`` is
    refused. With the storage's time limit per search, each slot frees within seconds.
    Both per-user tables hold at most ``capacity`` users (least recently searching
    forgotten first); the global limit holds whatever they forget.
    """

    def __init__(self, at_once: int = SEARCHES_AT_ONCE, wait_seconds: float = SEARCH_SLOT_WAIT_SECONDS, *,
                 capacity: int = MAX_TRACKED_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        self._started = MovingWindow(SEARCHES_PER_WINDOW, SEARCH_WINDOW_SECONDS, capacity=capacity, clock=clock)
        self._lines: BoundedTable[str, Slots] = BoundedTable(capacity)
        self._running = Slots(at_once, wait_seconds=wait_seconds)

    def tracked_keys(self) -> int:
        return self._started.tracked_keys() + len(self._lines)

    @contextlib.asynccontextmanager
    async def turn(self, username: str) -> AsyncIterator[None]:
        if self._started.retry_after(username):
            raise RateLimited("Too many searches in a short time; wait a few seconds and search again.")
        line = self._lines.get_or_add(username, lambda: Slots(1, max_waiting=SEARCHES_WAITING_PER_USER))
        async with line.turn(RateLimited("Your earlier searches are still running; wait a moment and search again.")):
            self._started.hit(username)  # counted when it starts, not while it waits behind the user's others
            async with self._running.turn(RateLimited("Search is busy for everyone right now; try again in a moment.")):
                yield
