"""Logins kept in the database: random session ids in an HttpOnly cookie, only their hash stored.

Why not Gradio's own login: its tokens live in the server's memory (a restart logs
everyone out, several replicas cannot share them) and nothing ends them when a
password changes or a user is removed. Here each login is a row (see
``storage.models.LoginSession``) bound to the user's id, so:

- a restart logs nobody out;
- ``users set-password`` / ``users remove`` delete the user's rows: old cookies stop at once;
- a removed and re-added name gets a new id, so the old cookies never match it;
- a stolen database copy holds only SHA-256 hashes of the cookie values.

Logins expire after ``IDLE_LIFETIME`` without use (renewed while in use, at most once
per ``RENEW_AFTER``) and after ``ABSOLUTE_LIFETIME`` whatever happens.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import HTTPException, Request, Response
from sqlalchemy.exc import SQLAlchemyError

from storage.errors import NotFound, StorageUnavailable
from storage.models import utcnow
from storage.repository import Repository, UserRecord

log = logging.getLogger(__name__)

COOKIE_NAME = "chat_session"
IDLE_LIFETIME = timedelta(days=14)
RENEW_AFTER = timedelta(hours=1)
ABSOLUTE_LIFETIME = timedelta(days=30)
TOKEN_BYTES = 32


class DatabaseUnavailable(Exception):
    """The session store could not be reached; say "unavailable", not "logged out"."""


def hash_token(token: str) -> str:
    """What the database keeps: a cookie value is 256 random bits, so a plain SHA-256 suffices."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class CurrentLogin:
    user: UserRecord
    id_hash: str


class SessionManager:
    """Creates, checks and ends logins; also the ``auth_dependency`` given to Gradio."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    async def start(self, response: Response, request: Request, user: UserRecord) -> None:
        """Log ``user`` in on ``response``: always a fresh id (rotation), and any login the
        browser held before is ended, so an id planted before login is worth nothing."""
        old = request.cookies.get(COOKIE_NAME)
        if old:
            await self.repository.delete_login_session(hash_token(old))
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = utcnow()
        await self.repository.create_login_session(user.id, hash_token(token), now + IDLE_LIFETIME)
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
        token = request.cookies.get(COOKIE_NAME)
        if not token or len(token) > 128:
            return None
        id_hash = hash_token(token)
        now = utcnow()
        try:
            user, created_at, expires_at = await self.repository.login_session_user(id_hash, now)
        except NotFound:
            return None
        except (SQLAlchemyError, OSError, StorageUnavailable) as error:
            log.warning("session lookup failed: %s", type(error).__name__)
            raise DatabaseUnavailable() from None
        await self._renew(id_hash, created_at, expires_at, now)
        return CurrentLogin(user, id_hash)

    async def _renew(self, id_hash: str, created_at: datetime, expires_at: datetime, now: datetime) -> None:
        """Sliding expiry, written at most once per ``RENEW_AFTER`` (not on every request),
        never past ``ABSOLUTE_LIFETIME`` after the login."""
        renewed = min(now + IDLE_LIFETIME, created_at + ABSOLUTE_LIFETIME)
        if renewed - expires_at < RENEW_AFTER:
            return
        try:
            await self.repository.extend_login_session(id_hash, renewed)
        except (SQLAlchemyError, StorageUnavailable) as error:
            # reading worked; a missed renewal only shortens the login
            log.warning("could not renew a login: %s", type(error).__name__)

    async def username(self, request: Request) -> str | None:
        """Gradio's ``auth_dependency``: the logged-in name decides ``request.username``."""
        try:
            login = await self.current(request)
        except DatabaseUnavailable:
            raise HTTPException(503, "The server cannot reach its database; try again in a minute.") from None
        return None if login is None else login.user.username

    async def end(self, request: Request, response: Response) -> None:
        token = request.cookies.get(COOKIE_NAME)
        if token:
            await self.repository.delete_login_session(hash_token(token))
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="lax")

    async def end_everywhere(self, user_id: int, response: Response) -> int:
        ended = await self.repository.delete_login_sessions_of(user_id)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="lax")
        return ended

    async def prune(self) -> int:
        """Drop expired rows (the lookup ignores them anyway; this only keeps the table small)."""
        return await self.repository.delete_expired_login_sessions(utcnow())
