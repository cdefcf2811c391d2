"""Limits on what one tester can take from the shared server (searches)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

from app.services.errors import RateLimited

SEARCHES_PER_WINDOW = 30
SEARCH_WINDOW_SECONDS = 10.0
SEARCHES_WAITING_PER_USER = 2
SEARCHES_AT_ONCE = 4  # SQLAlchemy's default pool holds 5 (+10 overflow) connections
SEARCH_SLOT_WAIT_SECONDS = 3.0


class SearchGate:
    """Bounds what searching can take from the database.

    Per user: one search runs at a time, at most ``SEARCHES_WAITING_PER_USER`` wait
    behind it, and at most ``SEARCHES_PER_WINDOW`` start per ``SEARCH_WINDOW_SECONDS``.
    For everyone together: at most ``at_once`` searches run at the same time, so they
    can never hold the whole connection pool (opening a chat, sending, ``/healthz``
    always find a connection); a search that cannot start within ``wait_seconds`` is
    refused. With the storage's time limit per search, each slot frees within seconds.
    """

    def __init__(self, at_once: int = SEARCHES_AT_ONCE, wait_seconds: float = SEARCH_SLOT_WAIT_SECONDS) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}
        self._started: dict[str, deque[float]] = {}
        self._running = asyncio.Semaphore(at_once)
        self._wait_seconds = wait_seconds

    @contextlib.asynccontextmanager
    async def turn(self, username: str) -> AsyncIterator[None]:
        now = time.monotonic()
        started = self._started.setdefault(username, deque())
        while started and now - started[0] > SEARCH_WINDOW_SECONDS:
            started.popleft()
        if len(started) >= SEARCHES_PER_WINDOW:
            raise RateLimited("Too many searches in a short time; wait a few seconds and search again.")
        lock = self._locks.setdefault(username, asyncio.Lock())
        if lock.locked() and self._waiting.get(username, 0) >= SEARCHES_WAITING_PER_USER:
            raise RateLimited("Your earlier searches are still running; wait a moment and search again.")
        self._waiting[username] = self._waiting.get(username, 0) + 1
        try:
            await lock.acquire()
        finally:
            self._waiting[username] -= 1
        try:
            started.append(time.monotonic())
            try:
                async with asyncio.timeout(self._wait_seconds):
                    await self._running.acquire()
            except TimeoutError:
                raise RateLimited("Search is busy for everyone right now; try again in a moment.") from None
            try:
                yield
            finally:
                self._running.release()
        finally:
            lock.release()
