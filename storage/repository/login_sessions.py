"""Logins kept in the database (their ids only as hashes; see app/accounts/sessions.py)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update

from storage.errors import NotFound
from storage.models import LoginSession, User
from storage.repository.base import RepositoryBase
from storage.repository.convert import user_record
from storage.repository.records import UserRecord


class LoginSessionStore(RepositoryBase):
    """The ``login_sessions`` table: make, look up, extend and end logins."""

    async def create_login_session(self, user_id: int, id_hash: str, expires_at: datetime) -> None:
        async with self.database.writer() as session, session.begin():
            if await session.get(User, user_id) is None:
                raise NotFound(f"no user with id {user_id}")
            session.add(LoginSession(id_hash=id_hash, user_id=user_id, expires_at=expires_at))

    async def login_session_user(self, id_hash: str, now: datetime) -> tuple[UserRecord, datetime, datetime]:
        """The user a live login belongs to, when it was made and when it expires; NotFound otherwise."""
        async with self.database.reader() as session:
            row = (
                await session.execute(
                    select(User, LoginSession.created_at, LoginSession.expires_at)
                    .join(LoginSession, LoginSession.user_id == User.id)
                    .where(LoginSession.id_hash == id_hash, LoginSession.expires_at > now)
                )
            ).first()
            if row is None:
                raise NotFound("no such login")
            return user_record(row[0]), row[1], row[2]

    async def extend_login_session(self, id_hash: str, expires_at: datetime) -> None:
        async with self.database.writer() as session, session.begin():
            await session.execute(
                update(LoginSession).where(LoginSession.id_hash == id_hash).values(expires_at=expires_at)
            )

    async def delete_login_session(self, id_hash: str) -> None:
        async with self.database.writer() as session, session.begin():
            await session.execute(delete(LoginSession).where(LoginSession.id_hash == id_hash))

    async def delete_login_sessions_of(self, user_id: int) -> int:
        async with self.database.writer() as session, session.begin():
            result = await session.execute(delete(LoginSession).where(LoginSession.user_id == user_id))
            return int(result.rowcount or 0)

    async def delete_expired_login_sessions(self, now: datetime) -> int:
        async with self.database.writer() as session, session.begin():
            result = await session.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
            return int(result.rowcount or 0)
