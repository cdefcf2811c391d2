"""The first thing a login post meets: cheap refusals before any form parsing or database work.

A flood of login posts from one address used to cost each request the form parsing, the
name check and the throttle lookup, and all of it ran on the event loop the replies
stream from (a 16-token reply took 3.3x its quiet time under one address's flood). Here,
ahead of every other middleware and route:

- an address that already earned a delay (``LoginGuard.address_wait``) is answered 429 before
  its body is read, unless the browser carries a valid device cookie (``DeviceCookies``): known
  browsers of a team behind one address still reach the form;
- at most ``LOGINS_AT_ONCE_PER_ADDRESS`` login or sign-up posts per address are in flight
  and ``LOGINS_WAITING_PER_ADDRESS`` more wait for a turn (a team logging in at once from
  one NAT queues, it is not refused); beyond that the address is told "busy" (503);
- both refusals are answered after ``TARPIT_SECONDS`` (a sleeping coroutine, nothing
  else; at most ``MAX_TARPITTED`` at once, beyond that at once): a client waits for its
  answer before it sends again, so a flood's rate falls from hundreds of posts a second
  per connection to four, and with it the event loop's share (measured in the README).
  Never longer than the wait it announces, so a client that keeps trying is let in when
  its delay ends, as before.

Connection and request-rate limits for every route belong in the reverse proxy (README).
"""

from __future__ import annotations

import asyncio
import math

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.accounts.login_guard import LoginGuard
from app.services.limits import BoundedTable, Slots
from app.web.auth_page import message, page
from app.web.device_cookie import DeviceCookies
from app.web.security import SecurityMiddleware

GATED_PATHS = ("/login", "/signup")
LOGINS_AT_ONCE_PER_ADDRESS = 4
LOGINS_WAITING_PER_ADDRESS = 28
TARPIT_SECONDS = 0.25
MAX_TARPITTED = 512


class LoginGate:
    def __init__(self, app: ASGIApp, *, guard: LoginGuard, devices: DeviceCookies,
                 at_once: int = LOGINS_AT_ONCE_PER_ADDRESS) -> None:
        self.app = app
        self.guard = guard
        self.devices = devices
        self.at_once = at_once
        self.turns: BoundedTable[str, Slots] = BoundedTable()
        self.tarpitted = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") not in GATED_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        send = SecurityMiddleware.with_headers(send)
        wait = self.guard.address_wait(address) if scope["path"].rstrip("/") == "/login" else 0.0
        if wait > 0 and not self.devices.any_valid(Request(scope).cookies):
            seconds = math.ceil(wait)
            text = (f"Too many failed logins from your address. Wait {seconds} second{'s' * (seconds != 1)} "
                    "and try again.")
            await self._refuse(scope, receive, send, refusal(scope, text, 429, seconds), wait)
            return
        # no time limit on the wait: the logins ahead are bounded, and each ends with its password check
        turns = self.turns.get_or_add(address, lambda: Slots(self.at_once, max_waiting=LOGINS_WAITING_PER_ADDRESS))
        try:
            async with turns.turn(_Busy()):
                await self.app(scope, receive, send)
        except _Busy:
            text = "Too many logins at once from your address; try again in a moment."
            await self._refuse(scope, receive, send, refusal(scope, text, 503, 2))

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, response: Response,
                      longest: float = TARPIT_SECONDS) -> None:
        if self.tarpitted < MAX_TARPITTED:
            self.tarpitted += 1
            try:
                await asyncio.sleep(min(TARPIT_SECONDS, longest))
            finally:
                self.tarpitted -= 1
        await response(scope, receive, send)


class _Busy(Exception):
    """This address has its fill of logins in flight and waiting."""


def refusal(scope: Scope, text: str, status_code: int, retry_after: int) -> Response:
    """The sentence as a page for a browser, as JSON for a script (what ``POST /login`` answers them)."""
    headers = {"Retry-After": str(retry_after)}
    if "text/html" in Headers(scope=scope).get("accept", ""):
        title = "Log in" if scope["path"].rstrip("/") == "/login" else "Create an account"
        response: Response = page(title, message(text) + '<p><a href="">Try again</a></p>', status_code)
        response.headers.update(headers)
        return response
    return JSONResponse({"detail": text}, status_code=status_code, headers=headers)
