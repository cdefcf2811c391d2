"""Shared fixtures: a database URL per backend, a migrated repository, and users.

Every test that takes ``database_url`` (directly or through ``repository``) runs on
a SQLite file under ``tmp_path`` and, when ``CHAT_TEST_POSTGRES_URL`` is set, again
on PostgreSQL with the ``public`` schema dropped and recreated first.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from app.accounts.passwords import hash_password
from app.config import sqlite_url
from app.migrate import upgrade
from storage.database import Database
from storage.repository import Repository, UserRecord
from tests.support import POSTGRES_URL, reset_postgres

# the model fixtures (tiny Llama and GPT-2, the real SmolLM2): used by every room's tests
pytest_plugins = ["tests.engine_fixtures"]

TEST_PASSWORD = "test-password"

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgres",
        marks=pytest.mark.skipif(POSTGRES_URL is None, reason="CHAT_TEST_POSTGRES_URL is not set"),
    ),
]


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty (unmigrated) database: a SQLite file, or the reset PostgreSQL test database."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "chat.db")
    assert POSTGRES_URL is not None
    await reset_postgres(POSTGRES_URL)
    return POSTGRES_URL


@pytest.fixture
async def repository(database_url: str) -> AsyncIterator[Repository]:
    """A :class:`Repository` over a database migrated to head; disposed afterwards."""
    await asyncio.to_thread(upgrade, database_url)  # env.py runs its own event loop
    database = Database(database_url)
    try:
        yield Repository(database)
    finally:
        await database.dispose()


@functools.cache
def cached_password_hash() -> str:
    """One real scrypt hash of ``TEST_PASSWORD``, computed once per session (scrypt is slow)."""
    return hash_password(TEST_PASSWORD)


@pytest.fixture
def make_user(repository: Repository) -> Callable[..., Awaitable[UserRecord]]:
    """``await make_user("alice", admin=False)``: a user whose password is ``TEST_PASSWORD``."""

    async def make(username: str = "alice", *, admin: bool = False) -> UserRecord:
        return await repository.create_user(username, cached_password_hash(), is_admin=admin)

    return make
