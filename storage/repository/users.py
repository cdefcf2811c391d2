"""Accounts: create, find (in any case or width), list, count, change passwords, delete."""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import Conflict, NotFound
from storage.models import LoginSession, User
from storage.repository.base import RepositoryBase
from storage.repository.checks import check_username, storable, username_key
from storage.repository.convert import user_record
from storage.repository.records import UserRecord


class UserStore(RepositoryBase):
    """The ``users`` table; a password change here also ends the logins it invalidates."""

    async def create_user(
        self, username: str, password_hash: str, *, is_admin: bool = False
    ) -> UserRecord:
        username = check_username(username)
        key = username_key(username)
        async with self.database.writer() as session, session.begin():
            taken = await session.scalar(select(User.username).where(User.username_key == key))
            if taken is not None:
                raise Conflict(f"user {username!r} already exists (as {taken!r}: names differing only in case are one)")
            user = User(username=username, username_key=key, password_hash=password_hash, is_admin=is_admin)
            session.add(user)
            try:
                await session.flush()
            except IntegrityError:
                raise Conflict(f"user {username!r} already exists") from None
            return user_record(user)

    @staticmethod
    async def _find_user(session: AsyncSession, username: str) -> User | None:
        """By the exact name first (two names that clashed before keys existed both stay
        reachable), then by key, so a login in any case or width finds its account."""
        user = await session.scalar(select(User).where(User.username == username))
        if user is None:
            user = await session.scalar(select(User).where(User.username_key == username_key(username)))
        return user

    async def get_user(self, username: str) -> UserRecord:
        if not storable(username):
            raise NotFound(f"no user named {username!r}")
        async with self.database.reader() as session:
            user = await self._find_user(session, username)
            if user is None:
                raise NotFound(f"no user named {username!r}")
            return user_record(user)

    async def list_users(self) -> list[UserRecord]:
        async with self.database.reader() as session:
            users = await session.scalars(select(User).order_by(User.username))
            return [user_record(user) for user in users]

    async def count_users(self) -> int:
        async with self.database.reader() as session:
            return int(await session.scalar(select(func.count()).select_from(User)) or 0)

    async def _existing_user_id(self, session: AsyncSession, username: str) -> int:
        """The id of the user named so (any case), for an admin's change; NotFound otherwise."""
        user = await self._find_user(session, username) if storable(username) else None
        if user is None:
            raise NotFound(f"no user named {username!r}")
        return user.id

    async def set_password(self, username: str, password_hash: str) -> None:
        async with self.database.writer() as session, session.begin():
            user_id = await self._existing_user_id(session, username)
            await session.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))
            # a changed password ends every login made with the old one
            await session.execute(delete(LoginSession).where(LoginSession.user_id == user_id))

    async def change_password(self, user_id: int, password_hash: str, keep_session: str) -> None:
        """A user's own password change: every other login of theirs ends, this one stays."""
        async with self.database.writer() as session, session.begin():
            result = await session.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))
            if result.rowcount == 0:
                raise NotFound(f"no user with id {user_id}")
            await session.execute(
                delete(LoginSession).where(LoginSession.user_id == user_id, LoginSession.id_hash != keep_session)
            )

    async def delete_user(self, username: str) -> None:
        """Remove a user and (by cascade) all of their conversations."""
        async with self.database.writer() as session, session.begin():
            user_id = await self._existing_user_id(session, username)
            # explicit, though the foreign key cascades too: no login outlives its user
            await session.execute(delete(LoginSession).where(LoginSession.user_id == user_id))
            await session.execute(delete(User).where(User.id == user_id))

    async def set_admin(self, username: str, is_admin: bool) -> None:
        """Make a user an admin or a tester again; their logins stay (the flag is read on every request)."""
        async with self.database.writer() as session, session.begin():
            user_id = await self._existing_user_id(session, username)
            await session.execute(update(User).where(User.id == user_id).values(is_admin=is_admin))
