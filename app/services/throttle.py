"""How many messages one tester may send: a per-user rate, refused rather than delayed."""

from __future__ import annotations

import asyncio

from asyncio_throttle import Throttler

from app.services.errors import RateLimited
from app.services.limits import BoundedTable

# how long ``acquire`` may wait before the wait counts as "over the limit"
ADMIT_WAIT_SECONDS = 0.05


class MessageThrottle:
    """At most ``limit`` messages (sends, retries, edits) per ``period`` seconds for each user.

    Kept in memory per server process: the limit protects the shared engine from one
    tester's bursts, and a restart forgiving them costs nothing.
    """

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        # bounded like every per-key table: a user dropped after 10,000 others starts a fresh budget
        self._throttlers: BoundedTable[str, Throttler] = BoundedTable()

    async def admit(self, username: str) -> None:
        """Refuse, rather than delay, a message over the per-user rate.

        asyncio-throttle's ``acquire`` returns at once while under the limit and
        otherwise waits; a short timeout turns that wait into a clear refusal.
        """
        throttler = self._throttlers.get_or_add(username, lambda: Throttler(self.limit, self.period))
        try:
            async with asyncio.timeout(ADMIT_WAIT_SECONDS):
                await throttler.acquire()
        except TimeoutError:
            raise RateLimited(
                f"Slow down: at most {self.limit} messages per {self.period:g} seconds. "
                "Your message was not sent; try again shortly."
            ) from None
