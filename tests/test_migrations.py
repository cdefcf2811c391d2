"""Alembic migrations: up, down, up again on every backend, and the ORM models agree with them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from app.config import sqlite_url
from app.migrate import alembic_config, downgrade, upgrade
from storage.database import BUSY_TIMEOUT_MS, Database, create_engine
from storage.models import Base, utcnow
from storage.repository import NewMessage, Repository
from storage.tokens import pack_token_ids

APP_TABLES = {"users", "conversations", "messages", "login_sessions"}


async def schema(url: str) -> tuple[set[str], list[str]]:
    """(table names, rows of alembic_version) as the database reports them."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
            versions = []
            if "alembic_version" in tables:
                versions = list((await connection.execute(text("SELECT version_num FROM alembic_version"))).scalars())
    finally:
        await engine.dispose()
    return tables, versions


async def model_differences(url: str) -> list:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade(database_url):
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert head is not None
    assert await schema(database_url) == (set(), [])

    await asyncio.to_thread(upgrade, database_url)
    assert await schema(database_url) == (APP_TABLES | {"alembic_version"}, [head])
    assert await model_differences(database_url) == []

    await asyncio.to_thread(upgrade, database_url)  # already at head: a no-op
    assert await schema(database_url) == (APP_TABLES | {"alembic_version"}, [head])

    await asyncio.to_thread(downgrade, database_url)
    assert await schema(database_url) == ({"alembic_version"}, [])

    await asyncio.to_thread(upgrade, database_url)
    assert await schema(database_url) == (APP_TABLES | {"alembic_version"}, [head])
    assert await model_differences(database_url) == []

    # and the re-created schema is usable
    database = Database(database_url)
    try:
        repository = Repository(database)
        user = await repository.create_user("alice", "hash")
        chat = await repository.create_conversation(user.id, "after re-upgrade", "m")
        await repository.append_message(user.id, chat.id, NewMessage("user", "hello", [1, 70_000]))
        assert (await repository.get_conversation(user.id, chat.id)).messages[0].token_ids == [1, 70_000]
    finally:
        await database.dispose()


async def populate_as_of_0001(url: str) -> tuple[int, list[str]]:
    """Rows written with plain SQL in the 0001 schema (today's ORM has columns 0001 lacks).

    Returns the user's id and the chat ids, most recently active first.
    """
    engine = create_engine(url)
    base = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("INSERT INTO users (username, password_hash, is_admin, created_at) VALUES ('alice', 'h', :f, :t)"),
                {"f": False, "t": base},
            )
            user_id = (await connection.execute(text("SELECT id FROM users WHERE username = 'alice'"))).scalar_one()
            ids = []
            for number in range(3):
                chat_id, moment = f"chat-{number}", base + timedelta(hours=number)
                ids.append(chat_id)
                await connection.execute(
                    text("INSERT INTO conversations (id, user_id, title, model, created_at, updated_at) "
                         "VALUES (:id, :user, :title, 'm', :t, :t)"),
                    {"id": chat_id, "user": user_id, "title": f"chat number {number}", "t": moment},
                )
                await connection.execute(
                    text("INSERT INTO messages (conversation_id, seq, role, content, token_ids, created_at) "
                         "VALUES (:id, 0, 'user', :content, :ids, :t)"),
                    {"id": chat_id, "content": f"kept {number}", "ids": pack_token_ids([5, 70_000 + number]),
                     "t": moment},
                )
    finally:
        await engine.dispose()
    return user_id, ids[::-1]


async def test_a_populated_database_upgrades_to_head_without_loss(database_url):
    """0001 -> head on a database with chats: nothing lost or reordered; logins and pins work afterwards."""
    await asyncio.to_thread(upgrade, database_url, "0001")
    user_id, newest_first = await populate_as_of_0001(database_url)

    await asyncio.to_thread(upgrade, database_url)
    assert await model_differences(database_url) == []
    database = Database(database_url)
    try:
        repository = Repository(database)
        listed = await repository.list_conversations(user_id)
        assert [c.id for c in listed] == newest_first and not any(c.pinned for c in listed)
        for number, chat_id in enumerate(newest_first[::-1]):
            chat = await repository.get_conversation(user_id, chat_id)
            assert chat.title == f"chat number {number}"
            assert [(m.content, m.token_ids) for m in chat.messages] == [(f"kept {number}", [5, 70_000 + number])]
        expires = utcnow() + timedelta(days=1)
        await repository.create_login_session(user_id, "a" * 64, expires)
        found, _created, _expires = await repository.login_session_user("a" * 64, utcnow())
        assert found.id == user_id

        oldest = newest_first[-1]
        before = await repository.get_conversation(user_id, oldest)
        await repository.set_pinned(user_id, oldest, True)  # pinned: first, its time unchanged
        listed = await repository.list_conversations(user_id)
        assert [c.id for c in listed] == [oldest, *newest_first[:-1]] and listed[0].pinned
        assert listed[0].updated_at == before.updated_at
        assert (await repository.list_conversations(user_id, pinned_first=False))[0].id == newest_first[0]
    finally:
        await database.dispose()

    await asyncio.to_thread(downgrade, database_url, "-1")  # un-pinning the schema loses no message
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT count(*) FROM messages"))).scalar_one() == 3
    finally:
        await engine.dispose()


async def test_models_and_migrations_agree_on_indexes_and_constraints(database_url):
    await asyncio.to_thread(upgrade, database_url)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:

            def describe(sync):
                inspector = inspect(sync)
                return (
                    {tuple(i["column_names"]) for i in inspector.get_indexes("conversations")},
                    {tuple(u["column_names"]) for u in inspector.get_unique_constraints("messages")},
                    {
                        (fk["referred_table"], fk["options"].get("ondelete"))
                        for fk in inspector.get_foreign_keys("messages")
                    },
                )

            indexes, uniques, foreign_keys = await connection.run_sync(describe)
    finally:
        await engine.dispose()
    assert ("user_id", "updated_at") in indexes and ("user_id", "pinned", "updated_at") in indexes
    assert ("conversation_id", "seq") in uniques
    assert ("conversations", "CASCADE") in foreign_keys


async def test_sqlite_connections_are_configured_for_safety(tmp_path):
    url = sqlite_url(tmp_path / "nested" / "folder" / "chat.db")  # the folder is created too
    await asyncio.to_thread(upgrade, url)
    database = Database(url)
    pragmas = ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
    try:
        for sessions in (database.reader, database.writer):
            async with sessions() as session:
                values = {name: (await session.execute(text(f"PRAGMA {name}"))).scalar() for name in pragmas}
            assert values["journal_mode"] == "wal"
            assert values["foreign_keys"] == 1
            assert values["busy_timeout"] == BUSY_TIMEOUT_MS > 0
            assert values["synchronous"] == 2  # FULL: a reported commit survives power loss
        # every pooled connection gets them, not just the first
        connections = [await database.engine.connect() for _ in range(3)]
        try:
            for connection in connections:
                assert (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
                assert (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar() > 0
        finally:
            for connection in connections:
                await connection.close()
    finally:
        await database.dispose()
    assert (tmp_path / "nested" / "folder" / "chat.db").exists()
