"""A time limit the database itself enforces on a session's statements (used by search).

A statement stopped inside the database frees its connection at once; a timeout in
Python would only stop waiting for it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

SQLITE_PROGRESS_STEPS = 1_000  # VM steps between deadline checks (a LIKE over a long text is one step)


@asynccontextmanager
async def statement_deadline(session: AsyncSession, seconds: float) -> AsyncIterator[None]:
    """Have the database itself stop statements of this session that run past ``seconds``.

    PostgreSQL: ``SET LOCAL statement_timeout`` (ends with the transaction). SQLite has no
    such setting: a progress handler, called every few thousand VM steps on the
    connection's own thread, interrupts the statement once the deadline has passed.
    """
    if session.bind.dialect.name != "sqlite":
        await session.execute(text(f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}"))
        # asyncpg prepares statements: after five runs PostgreSQL may keep a generic plan
        # made when the tables were small (a scan of every message); plan for this user
        await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        yield
        return
    connection = await session.connection()
    raw = (await connection.get_raw_connection()).driver_connection
    deadline = time.monotonic() + seconds

    def past_deadline() -> int:
        return 1 if time.monotonic() > deadline else 0

    await raw.set_progress_handler(past_deadline, SQLITE_PROGRESS_STEPS)
    try:
        yield
    except BaseException:
        # the caller went away (a cancelled search): stop the statement at its next check
        deadline = 0.0
        raise
    finally:
        await raw.set_progress_handler(None, 0)


def was_interrupted(error: Exception) -> bool:
    """A statement stopped by :func:`statement_deadline` (SQLite "interrupted", PostgreSQL 57014)."""
    original = getattr(error, "orig", None)
    message = str(original or error).lower()
    code = getattr(original, "sqlstate", None) or getattr(getattr(original, "__cause__", None), "sqlstate", None)
    return "interrupted" in message or code == "57014" or "statement timeout" in message
