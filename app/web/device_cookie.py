"""The device cookie: carries a device token (``app/accounts/device_tokens.py``) for one user.

One cookie per user who logged in on this browser (its name is a keyed digest of the
user's name, not the name), sent only to ``/login``: HttpOnly, SameSite=Lax, Secure
over HTTPS, kept for ``DEVICE_COOKIE_DAYS``. Logging out keeps it: it vouches for the
browser, not for a login.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request, Response

from app.accounts.device_tokens import DeviceToken, DeviceTokens

COOKIE_PREFIX = "chat_device_"
DEVICE_COOKIE_DAYS = 180
MAX_COOKIES_CHECKED = 8


class DeviceCookies:
    def __init__(self, tokens: DeviceTokens) -> None:
        self.tokens = tokens

    def _name(self, username: str) -> str:
        return COOKIE_PREFIX + self.tokens.cookie_suffix(username)

    def for_user(self, cookies: Mapping[str, str], username: str) -> DeviceToken | None:
        """This browser's valid token for ``username``, or None."""
        token = self.tokens.verify(cookies.get(self._name(username)))
        return token if token is not None and token.username == username.casefold() else None

    def any_valid(self, cookies: Mapping[str, str]) -> bool:
        """Whether the browser holds a valid token for anyone (the login gate lets it reach the form)."""
        names = [name for name in cookies if name.startswith(COOKIE_PREFIX)][:MAX_COOKIES_CHECKED]
        return any(self.tokens.verify(cookies[name]) is not None for name in names)

    def remember(self, response: Response, request: Request, username: str) -> None:
        """A fresh token for ``username`` on this browser (replacing the one it held)."""
        response.set_cookie(
            self._name(username),
            self.tokens.issue(username),
            max_age=DEVICE_COOKIE_DAYS * 86400,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/login",
        )
