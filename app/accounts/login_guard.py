"""Slowing password guessing without handing strangers a way to lock people out.

Failures are counted per client address and per (name, address) pair, never per name
alone: someone guessing alice's password from their machine slows down only
themselves, and alice logging in from hers is unaffected. Each key earns a few free
failures, then must wait a delay that doubles with every further failure (capped).
Guessing across many names from one address is slowed by the per-address count, and
so is hammering on one name after its delay was earned (each refused attempt uses up
one of the address's free failures), which lets the web layer refuse a flooding
address before reading its form. A refusal never lengthens a wait already announced.

One address can be a whole team (an office NAT, a reverse proxy), so a browser that
proves it logged in as this name before (a device token, app/accounts/device_tokens.py)
is exempt from both address counts and has a failure count of its own instead: a
stranger's failures there cannot slow the user's own browser, and a stolen token buys
only ``FREE_FAILURES_PER_DEVICE`` guesses before it is slowed too.

Memory is bounded: both tables are LRU maps of at most ``MAX_TRACKED_KEYS`` keys each
(the shared ``BoundedTable`` of app/services/limits.py), and names are refused before
any work when longer than a username can be. At most ``MAX_CONCURRENT_HASHES`` scrypt
computations run at once (each costs ~50 ms of CPU and 16 MB on purpose), and at most
``MAX_WAITING_HASHES`` wait for a turn; a login flood therefore gets "busy" answers
instead of starving the model's threads.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.accounts.device_tokens import DeviceToken
from app.services.limits import MAX_TRACKED_KEYS, BoundedTable, Slots

FREE_FAILURES_PER_PAIR = 5
FREE_FAILURES_PER_ADDRESS = 20
FREE_FAILURES_PER_DEVICE = 5
FIRST_DELAY_SECONDS = 2.0
MAX_DELAY_SECONDS = 300.0
FORGET_AFTER_SECONDS = 3600.0
MAX_CONCURRENT_HASHES = 1
MAX_WAITING_HASHES = 16


class Throttled(Exception):
    """Too many failed logins from this address (for this name); says how long to wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HashingBusy(Exception):
    """Too many logins are being checked at once; try again in a moment."""


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0


class _FailureCounts:
    """Failure counts per key (a table of at most ``capacity`` keys) and the delay each has earned."""

    def __init__(self, capacity: int, free: int, clock: Callable[[], float]) -> None:
        self.free = free
        self.clock = clock
        self.entries: BoundedTable[object, _Failures] = BoundedTable(capacity)

    def _get(self, key: object) -> _Failures | None:
        entry = self.entries.get(key)
        if entry is not None and self.clock() - entry.last > FORGET_AFTER_SECONDS:
            self.entries.pop(key)
            return None
        return entry

    def wait_seconds(self, key: object) -> float:
        """How long this key must still wait before its next attempt (0 when it may try)."""
        entry = self._get(key)
        if entry is None or entry.count < self.free:
            return 0.0
        delay = min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * 2 ** (entry.count - self.free))
        return max(0.0, entry.last + delay - self.clock())

    def fail(self, key: object) -> None:
        entry = self._get(key) or _Failures()
        entry.count += 1
        entry.last = self.clock()
        self.entries.put(key, entry)

    def forget(self, key: object) -> None:
        self.entries.pop(key)


class LoginGuard:
    """Decides whether a login attempt may be checked, and runs the checks' hashing."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, capacity: int = MAX_TRACKED_KEYS,
        on_attempt: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        # hears "ok", "failed" or "throttled" per attempt (the server's metrics); knows no metrics library
        self.on_attempt = on_attempt
        self.per_address = _FailureCounts(capacity, FREE_FAILURES_PER_ADDRESS, clock)
        self.per_pair = _FailureCounts(capacity, FREE_FAILURES_PER_PAIR, clock)
        self.per_device = _FailureCounts(capacity, FREE_FAILURES_PER_DEVICE, clock)
        self._hashing = Slots(MAX_CONCURRENT_HASHES, max_waiting=MAX_WAITING_HASHES)

    def tracked_keys(self) -> int:
        return len(self.per_address.entries) + len(self.per_pair.entries) + len(self.per_device.entries)

    def address_wait(self, address: str) -> float:
        """Seconds this address must still wait whatever name it tries (0: it may try)."""
        return self.per_address.wait_seconds(address)

    def check_allowed(self, username: str, address: str, device: DeviceToken | None = None) -> None:
        """Raise Throttled when this address (for this name), or this device, must wait."""
        if _vouches(device, username):
            wait = self.per_device.wait_seconds(device.nonce)  # type: ignore[union-attr]
        else:
            pair = (username.casefold(), address)
            wait = self.per_pair.wait_seconds(pair)
            if wait > 0 and self.per_address.wait_seconds(address) == 0:
                # hammering on a slowed name uses up the address's free failures, so a flood of
                # one name ends up refused at the door (address_wait) instead of at the form
                self.per_address.fail(address)
            wait = max(wait, self.per_address.wait_seconds(address))
        if wait > 0:
            self.on_attempt("throttled")
            seconds = math.ceil(wait)
            raise Throttled(
                f"Too many failed logins from your address. Wait {seconds} second{'s' * (seconds != 1)} "
                "and try again (check the name and password first).",
                seconds,
            )

    def failed(self, username: str, address: str, device: DeviceToken | None = None) -> None:
        self.on_attempt("failed")
        if _vouches(device, username):
            self.per_device.fail(device.nonce)  # type: ignore[union-attr]
            return
        self.per_address.fail(address)
        self.per_pair.fail((username.casefold(), address))

    def succeeded(self, username: str, address: str, device: DeviceToken | None = None) -> None:
        self.on_attempt("ok")
        if _vouches(device, username):
            self.per_device.forget(device.nonce)  # a stranger's failures at this address stay counted
        else:
            self.per_pair.forget((username.casefold(), address))

    async def hash_in_turn(self, function: Callable[..., object], *args: object) -> object:
        """Run a password hash in a thread, at most ``MAX_CONCURRENT_HASHES`` at a time."""
        async with self._hashing.turn(HashingBusy("Too many logins at once right now; try again in a few seconds.")):
            return await asyncio.to_thread(function, *args)


def _vouches(device: DeviceToken | None, username: str) -> bool:
    """A device token speaks only for the name it was issued to."""
    return device is not None and device.username == username.casefold()
