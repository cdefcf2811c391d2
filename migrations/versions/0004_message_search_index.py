"""Index message text for search: SQLite FTS5 (trigram) or PostgreSQL pg_trgm (GIN).

Search used to match ``content ILIKE '%words%'`` row by row: fine for a few hundred
messages, seconds for a heavy user. Both indexes below answer substring matches of
three characters or more (what the page's search box means by "contains") without
reading every message; shorter searches still scan the searcher's own chats.

- SQLite: an FTS5 table with the ``trigram`` tokenizer (SQLite 3.34+) over
  ``messages.content`` as external content (the text is not stored twice), kept in
  step by triggers on insert, update of content and delete, and filled from the
  existing rows. Older SQLite: nothing is created and search keeps scanning.
- PostgreSQL: ``pg_trgm`` and a GIN index on ``messages.content``, which ``ILIKE``
  uses. ``CREATE EXTENSION`` needs the CREATE privilege on the database (pg_trgm is a
  trusted extension since PostgreSQL 13); without it the migration says so in the log
  and search keeps scanning, with its statement time-out.

The FTS tables and the GIN index are invisible to the ORM models on purpose (Alembic's
autogenerate skips them, see ``storage.search_index.include_object``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import logging
import sqlite3
from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

SQLITE_TRIGRAM = (3, 34, 0)
SQLITE_STATEMENTS = [
    "CREATE VIRTUAL TABLE messages_fts USING fts5("
    "content, content='messages', content_rowid='id', tokenize='trigram')",
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
    "INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content); END",
    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content); END",
    "CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content); "
    "INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content); END",
    # index the messages already there
    "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
]


def create_sqlite_index() -> None:
    if sqlite3.sqlite_version_info < SQLITE_TRIGRAM:
        log.warning(
            "SQLite %s has no trigram tokenizer (3.34+ needed): search will scan messages", sqlite3.sqlite_version
        )
        return
    for statement in SQLITE_STATEMENTS:
        op.execute(statement)


def create_postgresql_index() -> None:
    bind = op.get_bind()
    available = bind.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).scalar()
    if not available:
        savepoint = bind.begin_nested()
        try:
            bind.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
            savepoint.commit()
        except Exception as error:
            savepoint.rollback()
            log.warning("cannot create the pg_trgm extension (%s): search will scan messages", type(error).__name__)
            return
    op.execute("CREATE INDEX ix_messages_content_trgm ON messages USING gin (content gin_trgm_ops)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        create_sqlite_index()
    elif op.get_bind().dialect.name == "postgresql":
        create_postgresql_index()


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("messages_fts_insert", "messages_fts_delete", "messages_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS messages_fts")
    elif op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_messages_content_trgm")
        # the extension may serve others: left in place
