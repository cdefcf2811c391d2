"""The chat service as the server builds it, for the tests that drive it in process.

tests/test_services.py drives ``ChatService`` itself and tests/test_page_handlers.py
drives the page's handlers over it; both build it here, over the real migrated
repository (tests/conftest.py) and a real tiny engine (tests/engine_fixtures.py),
with limits small enough for a test to reach them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from app.engine import Engine, LoadedModel
from app.services.chat import ChatEvent, ChatOptions, ChatService
from storage.journal import Journal
from storage.repository import Repository
from tests.engine_support import prompt_format, running_engine, within

GREEDY = ChatOptions(temperature=0.0, max_new_tokens=8)
RATE_LIMIT = 3
MAX_CHARS = 200


def make_service(
    repository: Repository, engine: Engine, loaded: LoadedModel, tmp_path: Path, *, rate_limit: int = RATE_LIMIT
) -> ChatService:
    """A service as the server builds one, with small limits so the tests can reach them."""
    exports = tmp_path / "exports"
    exports.mkdir(exist_ok=True)
    return ChatService(
        repository, engine, prompt_format(loaded), loaded.name,
        max_input_chars=MAX_CHARS, max_new_tokens=64, rate_limit=rate_limit, rate_period=60.0,
        export_dir=exports, journal=Journal(tmp_path / "journal.jsonl"),
    )


@contextlib.asynccontextmanager
async def running_service(
    repository: Repository, loaded: LoadedModel, tmp_path: Path, *, rate_limit: int = RATE_LIMIT
) -> AsyncIterator[ChatService]:
    """A service over a started engine of ``loaded``; the engine is stopped afterwards."""
    async with running_engine(loaded) as engine:
        yield make_service(repository, engine, loaded, tmp_path, rate_limit=rate_limit)


async def events_of(replies: AsyncIterator[ChatEvent]) -> list[ChatEvent]:
    """Every event of a reply, to its end (bounded in time, so a hang fails the test)."""

    async def drain() -> list[ChatEvent]:
        return [event async for event in replies]

    return await within(drain())
