"""The login cookie: carries a login's token (``app/accounts/sessions.py``) between browser and server.

HttpOnly (page scripts cannot read it), SameSite=Lax (other sites' forms do not carry
it), Secure over HTTPS, and kept for at most ``ABSOLUTE_LIFETIME``.
"""

from __future__ import annotations

from fastapi import HTTPException, Request, Response

from app.accounts.sessions import ABSOLUTE_LIFETIME, CurrentLogin, DatabaseUnavailable, LoginSessions
from storage.repository import UserRecord

COOKIE_NAME = "chat_session"


class SessionManager:
    """Logins as the web sees them; also the ``auth_dependency`` given to Gradio."""

    def __init__(self, logins: LoginSessions) -> None:
        self.logins = logins

    async def start(self, response: Response, request: Request, user: UserRecord) -> None:
        """Log ``user`` in on ``response`` (a fresh token; the one the browser held is ended)."""
        token = await self.logins.begin(user, replacing=request.cookies.get(COOKIE_NAME))
        response.set_cookie(
            COOKIE_NAME,
            token,
            max_age=int(ABSOLUTE_LIFETIME.total_seconds()),
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/",
        )

    async def current(self, request: Request) -> CurrentLogin | None:
        """The live login of this request, or None. Raises DatabaseUnavailable."""
        return await self.logins.lookup(request.cookies.get(COOKIE_NAME))

    async def username(self, request: Request) -> str | None:
        """Gradio's ``auth_dependency``: the logged-in name decides ``request.username``."""
        try:
            login = await self.current(request)
        except DatabaseUnavailable:
            raise HTTPException(503, "The server cannot reach its database; try again in a minute.") from None
        return None if login is None else login.user.username

    async def end(self, request: Request, response: Response) -> None:
        await self.logins.end(request.cookies.get(COOKIE_NAME))
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="lax")

    async def end_everywhere(self, user_id: int, response: Response) -> int:
        ended = await self.logins.end_everywhere(user_id)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="lax")
        return ended

    async def prune(self) -> int:
        return await self.logins.prune()
