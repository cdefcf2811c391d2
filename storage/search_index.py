"""The text index behind search, and how a query uses it (see migration 0004).

SQLite: ``messages_fts``, an FTS5 table with the trigram tokenizer over
``messages.content``; PostgreSQL: a pg_trgm GIN index that ``ILIKE`` uses. Both find
substrings of at least ``MIN_INDEXED_CHARS`` characters; shorter searches match titles
only, and databases where the index could not be made scan the searcher's own chats.

These objects are made by raw SQL in the migration and are not ORM models, so
Alembic's autogenerate must not offer to drop them: ``include_object`` says which.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

MIN_INDEXED_CHARS = 3  # a trigram
FTS_TABLE = "messages_fts"
TRGM_INDEX = "ix_messages_content_trgm"

IndexKind = Literal["fts5", "trgm"]


def titles_only(search: str) -> bool:
    """A search too short for any text index matches chat titles only (and the page says so)."""
    return 0 < len(search.strip()) < MIN_INDEXED_CHARS


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic hook: leave the search index (FTS tables, the GIN index) out of autogenerate."""
    if type_ == "table" and name and name.startswith(FTS_TABLE):
        return False
    return not (type_ == "index" and name == TRGM_INDEX)


def is_index_table(name: str) -> bool:
    """The FTS5 table and the shadow tables SQLite keeps for it."""
    return name.startswith(FTS_TABLE)


async def find_index(session: AsyncSession) -> IndexKind | None:
    """Which index this database has (None: the migration could not make one)."""
    if session.bind.dialect.name == "sqlite":
        found = await session.scalar(
            text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"), {"name": FTS_TABLE}
        )
        return "fts5" if found else None
    found = await session.scalar(text("SELECT 1 FROM pg_indexes WHERE indexname = :name"), {"name": TRGM_INDEX})
    return "trgm" if found else None


def fts_phrase(words: str) -> str:
    """An FTS5 query matching ``words`` as one substring (the trigram tokenizer's phrase)."""
    return '"' + words.replace('"', '""') + '"'
