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
    # render_as_batch: SQLite can only ALTER a table by copying it; batch mode does that.
    # include_object: the search index (FTS5 tables, a GIN index) is made by raw SQL, not by the models
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=True, include_object=include_object
    )
    with context.begin_transaction():
        context.run_migrations()


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
