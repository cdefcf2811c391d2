"""Alembic environment: async, over the same engine settings as the server.

The URL comes from ``config.attributes["database_url"]`` when the app runs the
migrations itself, else from ``CHAT_DATABASE_URL`` (the app's own setting), so
``alembic upgrade head`` and ``python -m app migrate`` always touch the same database.
"""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from app.config import Settings
from storage.database import create_engine
from storage.models import Base
from storage.search_index import include_object

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    return config.attributes.get("database_url") or Settings.from_env().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(), target_metadata=target_metadata, render_as_batch=True, include_object=include_object
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode copies a table and drops the old one; with foreign keys on, that drop
        # would cascade into rows that reference it (messages.parent_id references messages
        # itself). SQLite ignores this pragma inside a transaction, so it is set before one.
        connection.connection.dbapi_connection.cursor().execute("PRAGMA foreign_keys=OFF")
    # render_as_batch: SQLite can only ALTER a table by copying it; batch mode does that.
    # include_object: the search index (FTS5 tables, a GIN index) is made by raw SQL, not by the models
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=True, include_object=include_object
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"the migration left {len(broken)} broken reference(s), e.g. {broken[0]}")


async def run_async_migrations() -> None:
    engine = create_engine(database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
