"""Managing accounts: the one set of rules the CLI (``python -m app users``) and the admin page share.

Each action checks what it must (a strong password, an existing name), changes the
database, and writes one line to the admin audit naming who did it (the admin's name,
or ``CLI_ACTOR`` for the console). On the page an admin additionally cannot remove
or demote themselves: the page is their only way back in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from app.accounts.passwords import check_password_strength, hash_password
from storage.errors import InvalidInput
from storage.repository import Repository, UserRecord

CLI_ACTOR = "(console)"
Hasher = Callable[[str], Awaitable[str]]


async def hash_in_thread(password: str) -> str:
    """scrypt costs ~50 ms of CPU on purpose: off the event loop."""
    return await asyncio.to_thread(hash_password, password)


class SelfLockout(InvalidInput):
    """An admin tried to remove or demote their own account."""


async def add_user(
    repository: Repository, actor: str, name: str, password: str, *, admin: bool = False,
    hasher: Hasher = hash_in_thread,
) -> UserRecord:
    check_password_strength(password, name)
    user = await repository.create_user(name, await hasher(password), is_admin=admin)
    await repository.record_admin_action(actor, "add user", user.username, "admin" if admin else "tester")
    return user


async def reset_password(
    repository: Repository, actor: str, name: str, password: str, *, hasher: Hasher = hash_in_thread
) -> None:
    """A new password; every login made with the old one ends."""
    check_password_strength(password, name)
    await repository.set_password(name, await hasher(password))
    await repository.record_admin_action(actor, "reset password", name, "logins ended")


async def end_sessions(repository: Repository, actor: str, name: str) -> int:
    """Log the user out everywhere; returns how many logins ended."""
    user = await repository.get_user(name)
    ended = await repository.delete_login_sessions_of(user.id)
    await repository.record_admin_action(actor, "end sessions", user.username, f"{ended} ended")
    return ended


async def remove_user(repository: Repository, actor: str, name: str) -> None:
    """Delete the user and all their chats."""
    if _same(actor, name):
        raise SelfLockout("you cannot remove your own account here; another admin (or the CLI) can")
    user = await repository.get_user(name)
    await repository.delete_user(user.username)
    await repository.record_admin_action(actor, "remove user", user.username, "with their chats")


async def set_admin(repository: Repository, actor: str, name: str, admin: bool) -> None:
    if not admin and _same(actor, name):
        raise SelfLockout("you cannot take away your own admin rights here; another admin (or the CLI) can")
    user = await repository.get_user(name)
    await repository.set_admin(user.username, admin)
    await repository.record_admin_action(actor, "make admin" if admin else "make tester", user.username)


def _same(actor: str, name: str) -> bool:
    return actor != CLI_ACTOR and actor.casefold() == name.strip().casefold()


__all__ = [
    "CLI_ACTOR",
    "SelfLockout",
    "add_user",
    "end_sessions",
    "hash_in_thread",
    "remove_user",
    "reset_password",
    "set_admin",
]
