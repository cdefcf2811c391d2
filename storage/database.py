"""The async engine and session factory, with the SQLite settings that keep data safe.

SQLite needs three things on *every* connection to serve several writers safely:
WAL (readers never block the writer), ``foreign_keys=ON`` (off by default, so
cascades would silently not happen) and a ``busy_timeout`` (wait for the lock
instead of failing with "database is locked"). Write transactions also start with
``BEGIN IMMEDIATE``: a deferred transaction that reads and then writes cannot
upgrade its lock once another writer has committed, and fails at once whatever
the timeout; taking the write lock first makes it queue instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from storage.errors import StorageUnavailable

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
WRITE_OPTION = "chat_write"
# below this much free space on the SQLite file's disk the next write may fail:
# health reports it before a tester's reply meets it
MIN_FREE_BYTES = 512 * 1024
# a write that changes nothing, then is rolled back: it needs the write lock
# (SQLite) or a read-write transaction (PostgreSQL), which a read-only database refuses
WRITE_PROBE = "UPDATE users SET username = username WHERE id = (SELECT min(id) FROM users)"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _ensure_sqlite_dir(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit
        # transactions would start them DEFERRED behind our back).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = "IMMEDIATE" if connection.get_execution_options().get(WRITE_OPTION) else "DEFERRED"
        connection.exec_driver_sql(f"BEGIN {mode}")


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An engine for ``url``; SQLite files get their folder and their safety pragmas."""
    if is_sqlite(url):
        _ensure_sqlite_dir(url)
        engine = create_async_engine(url, **kwargs)
        _configure_sqlite(engine)
        return engine
    return create_async_engine(url, pool_pre_ping=True, **kwargs)


def unavailable_reason(error: BaseException) -> str | None:
    """A short phrase when ``error`` means the database cannot serve now; None for anything else.

    Driver errors (SQLAlchemy's DBAPIError family, sockets, the connection pool)
    are conditions of the database, not bugs of the caller; an IntegrityError is
    the caller's business and is left alone.
    """
    if isinstance(error, IntegrityError):
        return None
    if isinstance(error, DBAPIError | PoolTimeout | OSError):
        message = str(error).lower()
        if "disk is full" in message or "no space" in message or "disk full" in message:
            return "disk full"
        if "readonly" in message or "read-only" in message or "read only" in message:
            return "read-only"
        if "locked" in message:
            return "locked"
        return "unreachable"
    module = type(error).__module__
    if module.startswith(("asyncpg", "sqlite3", "aiosqlite")):
        return "unreachable"
    return None


def _free_bytes(database_file: str) -> int:
    stats = os.statvfs(Path(database_file).expanduser().parent)
    return stats.f_bavail * stats.f_frsize


@asynccontextmanager
async def _translated(
    maker: async_sessionmaker[AsyncSession], faults: Counter[str]
) -> AsyncIterator[AsyncSession]:
    """A session whose driver failures surface as :class:`StorageUnavailable`.

    The driver's text names tables, parameters (a tester's message) and addresses:
    it goes to the log here, once, and nowhere else.
    """
    try:
        async with maker() as session:
            yield session
    except StorageUnavailable:
        raise
    except Exception as error:
        reason = unavailable_reason(error)
        if reason is None:
            raise
        log.error("database unavailable (%s): %s", reason, error)
        faults[reason] += 1
        raise StorageUnavailable(reason) from error


class Database:
    """Owns the engine; hands out read sessions and (write-locking) write sessions."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        # database errors by reason since start (the server's metrics read them)
        self.faults: Counter[str] = Counter()
        self.engine = create_engine(url, **engine_kwargs)
        self._reader: async_sessionmaker[AsyncSession] = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writer: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )

    def reader(self) -> AbstractAsyncContextManager[AsyncSession]:
        return _translated(self._reader, self.faults)

    def writer(self) -> AbstractAsyncContextManager[AsyncSession]:
        return _translated(self._writer, self.faults)

    async def check_writable(self) -> None:
        """Raise StorageUnavailable unless a write would be accepted now.

        A write that changes nothing is rolled back: it proves the connection, the
        write lock and a read-write database without leaving a trace. It cannot see
        a full disk (nothing reaches the disk), so for a SQLite file the free space
        of its filesystem is checked too.
        """
        async with self.writer() as session:
            await session.execute(text(WRITE_PROBE))
            await session.rollback()
        if is_sqlite(self.url):
            database = make_url(self.url).database
            if database and database != ":memory:" and not database.startswith("file:"):
                try:
                    free = await asyncio.to_thread(_free_bytes, database)
                except OSError as error:
                    raise StorageUnavailable("unreachable") from error
                if free < MIN_FREE_BYTES:
                    raise StorageUnavailable("disk full")

    async def dispose(self) -> None:
        await self.engine.dispose()
