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

This module knows tokens, not HTTP: the cookie that carries a token is the web
layer's (``app/web/login_cookie.py``).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from storage.errors import NotFound, StorageUnavailable
from storage.models import utcnow
from storage.repository import Repository, UserRecord

log = logging.getLogger(__name__)

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


class LoginSessions:
    """Creates, checks and ends logins by their token (the cookie's value)."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    async def begin(self, user: UserRecord, replacing: str | None) -> str:
        """A new login for ``user``; returns its token. Always a fresh id (rotation), and the
        login the browser held before (``replacing``) is ended, so an id planted before
        login is worth nothing."""
        if replacing:
            await self.repository.delete_login_session(hash_token(replacing))
        token = secrets.token_urlsafe(TOKEN_BYTES)
        await self.repository.create_login_session(user.id, hash_token(token), utcnow() + IDLE_LIFETIME)
        return token

    async def lookup(self, token: str | None) -> CurrentLogin | None:
        """The live login this token belongs to, or None. Raises DatabaseUnavailable."""
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

    async def end(self, token: str | None) -> None:
        if token:
            await self.repository.delete_login_session(hash_token(token))

    async def end_everywhere(self, user_id: int) -> int:
        return await self.repository.delete_login_sessions_of(user_id)

    async def prune(self) -> int:
        """Drop expired rows (the lookup ignores them anyway; this only keeps the table small)."""
        return await self.repository.delete_expired_login_sessions(utcnow())
