"""Alembic migrations: up, down, up again on every backend, and the ORM models agree with them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from random import Random

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from app.config import sqlite_url
from app.migrate import alembic_config, downgrade, upgrade
from storage.database import BUSY_TIMEOUT_MS, Database, create_engine
from storage.errors import Conflict
from storage.models import Base, UTCDateTime, utcnow
from storage.repository import NewMessage, Repository
from storage.search_index import include_object, is_index_table
from storage.tokens import pack_token_ids, unpack_token_ids

APP_TABLES = {
    "users", "conversations", "messages", "login_sessions", "ratings", "admin_audit", "share_links",
    "share_snapshots", "battles",
}


async def schema(url: str) -> tuple[set[str], list[str]]:
    """(table names, rows of alembic_version) as the database reports them."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(
                lambda sync: {name for name in inspect(sync).get_table_names() if not is_index_table(name)}
            )
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
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"include_object": include_object}), Base.metadata
                )
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


# The tables as revisions 0001/0002 have them, typed like the app writes them (times, JSON, blobs),
# so the old database is filled exactly as the old code would have filled it.
OLD_USERS = sa.table(
    "users", sa.column("id", sa.Integer), sa.column("username", sa.String), sa.column("password_hash", sa.String),
    sa.column("is_admin", sa.Boolean), sa.column("created_at", UTCDateTime),
)
OLD_CONVERSATIONS = sa.table(
    "conversations", sa.column("id", sa.String), sa.column("user_id", sa.Integer), sa.column("title", sa.String),
    sa.column("model", sa.String), sa.column("created_at", UTCDateTime), sa.column("updated_at", UTCDateTime),
)
MESSAGE_COLUMNS = ("id", "conversation_id", "seq", "role", "content", "token_ids", "params", "finish_reason",
                   "prompt_tokens", "completion_tokens", "latency_ms", "created_at")
OLD_MESSAGES = sa.table(
    "messages", sa.column("id", sa.Integer), sa.column("conversation_id", sa.String), sa.column("seq", sa.Integer),
    sa.column("role", sa.String), sa.column("content", sa.Text), sa.column("token_ids", sa.LargeBinary),
    sa.column("params", sa.JSON), sa.column("finish_reason", sa.String), sa.column("prompt_tokens", sa.Integer),
    sa.column("completion_tokens", sa.Integer), sa.column("latency_ms", sa.Integer),
    sa.column("created_at", UTCDateTime),
)
FINISHES = ["eos", "length", "stopped", "disconnected", "error", "shutdown", "eos", "stopped"]


async def fill_old_database(url: str, chats: int) -> None:
    """Chats as the old code stored them: system prompts, several turns, stopped, failed and
    interrupted replies (a chat ending with a user message), token ids past 2**16, unicode."""
    random = Random(10)
    engine = create_engine(url)
    start = utcnow() - timedelta(days=30)
    try:
        async with engine.begin() as connection:
            await connection.execute(sa.insert(OLD_USERS), [
                {"id": n, "username": f"user{n}", "password_hash": "h", "is_admin": n == 1,
                 "created_at": start} for n in (1, 2, 3)
            ])
            for index in range(chats):
                chat_id = str(uuid.UUID(int=index + 1))
                when = start + timedelta(hours=index, microseconds=index * 7)
                await connection.execute(sa.insert(OLD_CONVERSATIONS), [{
                    "id": chat_id, "user_id": 1 + index % 3, "title": f"chat {index} ✓", "model": "smollm2",
                    "created_at": when, "updated_at": when + timedelta(minutes=5),
                }])
                rows = []
                if index % 2 == 0:
                    rows.append(("system", f"You are terse #{index}.", None, None))
                turns = 1 + index % 4
                for turn in range(turns):
                    params = {"temperature": round(random.random(), 2), "top_p": 0.9, "max_new_tokens": 64,
                              "seed": None}
                    rows.append(("user", f"question {turn} of chat {index} — ü 中文", params, None))
                    last = turn == turns - 1
                    if last and index % 5 == 4:
                        break  # interrupted: the server died before the reply was stored
                    reply_params = {**params, "time_to_first_token_ms": random.randint(10, 900)}
                    finish = FINISHES[(index + turn) % len(FINISHES)]
                    rows.append(("assistant", f"answer {turn}\n\n```py\nprint({turn})\n```", reply_params, finish))
                if index % 7 == 3 and rows[-1][0] == "assistant":
                    # a reply lost to a crash, closed by the next message as send() stores it
                    asked = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 3}
                    rows += [("user", "lost question", asked, None), ("assistant", "", None, "interrupted"),
                             ("user", "asked again", asked, None), ("assistant", "fine", asked, "eos")]
                values = []
                for seq, (role, content, params, finish) in enumerate(rows):
                    ids = [random.randrange(0, 70_000) for _ in range(random.randint(0, 40))]
                    values.append({
                        "conversation_id": chat_id, "seq": seq, "role": role, "content": content,
                        "token_ids": pack_token_ids(ids), "params": params, "finish_reason": finish,
                        "prompt_tokens": random.randint(1, 4000) if role == "assistant" else None,
                        "completion_tokens": len(ids) if role == "assistant" else None,
                        "latency_ms": random.randint(1, 90_000) if role == "assistant" else None,
                        "created_at": when + timedelta(seconds=seq, microseconds=seq * 13),
                    })
                await connection.execute(sa.insert(OLD_MESSAGES), values)
    finally:
        await engine.dispose()


async def populate_at_0001(url: str, usernames: list[str]) -> None:
    """Users (each with a chat and a message) written as the 0001 schema was, in plain SQL:
    today's models would write columns that did not exist then."""
    await asyncio.to_thread(upgrade, url, "0001")
    engine = create_engine(url)
    now = utcnow()
    try:
        async with engine.begin() as connection:
            for index, name in enumerate(usernames, start=1):
                await connection.execute(
                    text("INSERT INTO users (id, username, password_hash, is_admin, created_at) "
                         "VALUES (:id, :name, 'hash', false, :now)"), {"id": index, "name": name, "now": now})
                await connection.execute(
                    text("INSERT INTO conversations (id, user_id, title, model, created_at, updated_at) "
                         "VALUES (:id, :user, 'before the upgrade', 'm', :now, :now)"),
                    {"id": f"chat-{index}", "user": index, "now": now})
                await connection.execute(
                    text("INSERT INTO messages (conversation_id, seq, role, content, token_ids, created_at) "
                         "VALUES (:chat, 0, 'user', :content, :ids, :now)"),
                    {"chat": f"chat-{index}", "content": f"kept hydroponics {index}", "ids": b"\x05\0\0\0",
                     "now": now})
    finally:
        await engine.dispose()


async def old_rows(url: str) -> tuple[list, list, list]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            users = (await connection.execute(sa.select(OLD_USERS).order_by(OLD_USERS.c.id))).all()
            chats = (await connection.execute(sa.select(OLD_CONVERSATIONS).order_by(OLD_CONVERSATIONS.c.id))).all()
            messages = (await connection.execute(
                sa.select(OLD_MESSAGES).order_by(OLD_MESSAGES.c.conversation_id, OLD_MESSAGES.c.seq)
            )).all()
    finally:
        await engine.dispose()
    return [tuple(r) for r in users], [tuple(r) for r in chats], [tuple(r) for r in messages]


MIGRATION_CHATS = 40


async def test_the_tree_upgrade_keeps_every_field_of_every_chat(database_url):
    """0002 -> head on a populated database: each chat becomes one branch, nothing else changes."""
    await asyncio.to_thread(upgrade, database_url, "0002")
    await fill_old_database(database_url, MIGRATION_CHATS)
    users, chats, messages = await old_rows(database_url)
    assert len(chats) == MIGRATION_CHATS and len(messages) > 150

    await asyncio.to_thread(upgrade, database_url)
    assert await model_differences(database_url) == []
    assert await old_rows(database_url) == (users, chats, messages)  # every old field, byte for byte

    database = Database(database_url)
    try:
        repository = Repository(database)
        by_chat: dict[str, list] = {}
        for row in messages:
            by_chat.setdefault(row[1], []).append(dict(zip(MESSAGE_COLUMNS, row, strict=True)))
        compared = 0
        for chat in chats:
            conversation = await repository.get_conversation(chat[1], chat[0])
            old = sorted(by_chat.get(chat[0], []), key=lambda m: m["seq"])
            assert conversation.tree == conversation.messages  # a single branch: every message on screen
            assert [m.seq for m in conversation.messages] == [m["seq"] for m in old]
            for before, after, previous in zip(old, conversation.messages, [None, *conversation.messages],
                                               strict=False):
                assert after.parent_id == (previous.id if previous else None)
                assert after.active and after.versions == () and after.rating is None
                for column in MESSAGE_COLUMNS[2:]:
                    expected = unpack_token_ids(before[column]) if column == "token_ids" else before[column]
                    assert getattr(after, column) == expected, (chat[0], before["seq"], column)
                assert after.id == before["id"]
                compared += 1
            assert conversation.token_history() == [t for m in old for t in unpack_token_ids(m["token_ids"])]
            kept = (conversation.title, conversation.model, conversation.created_at, conversation.updated_at)
            assert kept == chat[2:]
        assert compared == len(messages)
        dialect = database.engine.dialect.name
        print(f"\nmigration 0002->0003 ({dialect}): {len(chats)} chats, {compared} messages compared")

        # the upgraded chats keep growing as trees: a retry adds a version, old ones stay
        chat = chats[1]
        conversation = await repository.get_conversation(chat[1], chat[0])
        user_message = [m for m in conversation.messages if m.role == "user"][-1]
        reply = NewMessage("assistant", "a second version", [7, 8], created_at=utcnow())
        await repository.put_reply(chat[1], chat[0], reply, after_seq=user_message.seq)
        after = await repository.get_conversation(chat[1], chat[0])
        assert after.messages[-1].content == "a second version" and after.messages[-1].version_count == 2
        assert len(after.tree) == len(conversation.tree) + 1
    finally:
        await database.dispose()

    # with a second version stored, a downgrade would lose it: 0003 refuses, and the versions stay.
    # PostgreSQL runs the whole downgrade in one transaction, so it stays at head; SQLite commits
    # each revision, so the later ones (an index, a lookup key: nothing a user wrote) are undone.
    with pytest.raises(Exception, match="Refusing to downgrade below 0003"):
        await asyncio.to_thread(downgrade, database_url, "0002")
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    expected = "0003" if database_url.startswith("sqlite") else head
    assert (await schema(database_url))[1] == [expected]
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            kept = text("SELECT count(*) FROM messages WHERE content = 'a second version'")
            assert (await connection.execute(kept)).scalar_one() == 1
            assert (await connection.execute(text("SELECT count(*) FROM messages"))).scalar_one() == len(messages) + 1
    finally:
        await engine.dispose()


async def test_a_populated_database_upgrades_without_loss(database_url):
    """0001 -> head on a database with chats (and names that clash by case): nothing lost,
    logins work, old messages are searchable through the new index."""
    await populate_at_0001(database_url, ["alice", "Admin", "admin"])
    await asyncio.to_thread(upgrade, database_url)
    assert await model_differences(database_url) == []
    database = Database(database_url)
    try:
        repository = Repository(database)
        users = {user.username: user for user in await repository.list_users()}
        assert set(users) == {"alice", "Admin", "admin"}
        for user in users.values():
            chat = await repository.get_conversation(user.id, f"chat-{user.id}")
            assert [(m.content, m.token_ids) for m in chat.messages] == [(f"kept hydroponics {user.id}", [5])]
            assert await repository.get_user(user.username) == user  # each clashing name still logs in
            assert [c.id for c in await repository.list_conversations(user.id, search="hydroponic")] == [chat.id]
        assert (await repository.get_user("ALICE")).username == "alice"
        with pytest.raises(Conflict):
            await repository.create_user("ADMIN", "hash")
        expires = utcnow() + timedelta(days=1)
        await repository.create_login_session(users["alice"].id, "a" * 64, expires)
        found, _created, _expires = await repository.login_session_user("a" * 64, utcnow())
        assert found.id == users["alice"].id
    finally:
        await database.dispose()


async def test_login_sessions_upgrade_a_populated_database_without_loss(database_url):
    """0001 -> head on a database with chats: nothing lost, and logins work afterwards."""
    await asyncio.to_thread(upgrade, database_url, "0001")
    await fill_old_database(database_url, 3)
    before = await old_rows(database_url)
    await asyncio.to_thread(upgrade, database_url)
    assert await model_differences(database_url) == []
    assert await old_rows(database_url) == before
    database = Database(database_url)
    try:
        repository = Repository(database)
        expires = utcnow() + timedelta(days=1)
        await repository.create_login_session(1, "a" * 64, expires)
        found, _created, _expires = await repository.login_session_user("a" * 64, utcnow())
        assert found.id == 1
    finally:
        await database.dispose()

    # nothing branched and nothing rated yet: a downgrade to 0002 works and keeps the chats
    await asyncio.to_thread(downgrade, database_url, "0002")
    assert await old_rows(database_url) == before


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

    await asyncio.to_thread(downgrade, database_url, "0005")  # un-pinning the schema loses no message
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT count(*) FROM messages"))).scalar_one() == 3
    finally:
        await engine.dispose()


PRE_SHARE_TABLES = ("users", "conversations", "messages", "login_sessions", "ratings")


async def every_row(url: str, columns: dict[str, list[str]] | None = None) -> dict[str, list[tuple]]:
    """Every row of the tables that existed at 0006, in a fixed order, as plain values: all their
    columns, or only ``columns`` (those a table had then; later revisions may add some)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = {}
            for table in PRE_SHARE_TABLES:
                names = ", ".join(columns[table]) if columns else "*"
                result = await connection.execute(text(f"SELECT {names} FROM {table}"))
                rows[table] = sorted((tuple(row) for row in result), key=repr)
            return rows
    finally:
        await engine.dispose()


async def column_names(url: str) -> dict[str, list[str]]:
    """The columns of each table that existed at 0006, as the database has them now."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: {table: [c["name"] for c in inspect(sync).get_columns(table)]
                              for table in PRE_SHARE_TABLES}
            )
    finally:
        await engine.dispose()


async def test_a_database_populated_at_0006_upgrades_to_head_with_every_row_unchanged(database_url):
    """0007 (share links) and 0008 (admin audit) only add tables and 0009 two columns: every earlier
    row stays as it was, and the new tables start empty and work. The repository reads and writes the
    newest schema only, so the database is filled at head and then taken down to 0006."""
    await asyncio.to_thread(upgrade, database_url)
    database = Database(database_url)
    try:
        repository = Repository(database)
        alice = await repository.create_user("alice", "hash-a", is_admin=True)
        bob = await repository.create_user("bob", "hash-b")
        for user in (alice, bob):
            for number in range(3):
                chat = await repository.create_conversation(user.id, f"{user.username} chat {number}", "m")
                stored = await repository.append_messages(user.id, chat.id, [
                    NewMessage("user", f"question {number} ✓", [1, 2, 70_000 + number]),
                    NewMessage("assistant", f"answer {number}", [3, 4], params={"temperature": 0.5},
                               finish_reason="eos", prompt_tokens=3, completion_tokens=2, latency_ms=12),
                ])
                await repository.set_rating(user.id, chat.id, stored[-1].id, ("up", "down")[number % 2], "why")
                if number == 0:
                    await repository.set_pinned(user.id, chat.id, True)
            await repository.create_login_session(user.id, user.username[0] * 64, utcnow() + timedelta(days=1))
    finally:
        await database.dispose()
    await asyncio.to_thread(downgrade, database_url, "0006")
    before = await every_row(database_url)
    assert all(before[table] for table in PRE_SHARE_TABLES)
    columns_at_0006 = await column_names(database_url)

    await asyncio.to_thread(upgrade, database_url)
    assert await every_row(database_url, columns_at_0006) == before
    assert await model_differences(database_url) == []
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            for table in ("share_links", "share_snapshots", "admin_audit"):
                assert (await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one() == 0
    finally:
        await engine.dispose()


async def test_a_database_populated_at_0008_gets_each_message_its_conversations_model(database_url):
    """0009 adds the model (and variant) of each message: every old message gets its chat's model,
    no variant, and every other field of every row stays as it was. (Filled at head through the
    repository, which knows only the newest schema, then taken down to 0008.)"""
    await asyncio.to_thread(upgrade, database_url)
    database = Database(database_url)
    try:
        repository = Repository(database)
        alice = await repository.create_user("alice", "hash-a")
        bob = await repository.create_user("bob", "hash-b")
        expected: dict[int, str] = {}
        for user, model in ((alice, "SmolLM2-135M-Instruct"), (alice, "checkpoint-2"), (bob, "tiny ✓ model")):
            for number in range(2):
                chat = await repository.create_conversation(user.id, f"{model} chat {number}", model)
                stored = await repository.append_messages(user.id, chat.id, [
                    NewMessage("system", "Be brief.", [9]),
                    NewMessage("user", f"question {number}", [1, 2, 70_000 + number], params={"temperature": 0.5}),
                    NewMessage("assistant", f"answer {number}", [3, 4], finish_reason="eos", completion_tokens=2),
                ])
                await repository.set_rating(user.id, chat.id, stored[-1].id, "up", "good")
                expected.update({message.id: model for message in stored})
    finally:
        await database.dispose()
    await asyncio.to_thread(downgrade, database_url, "0008")
    columns_at_0008 = await column_names(database_url)
    assert "model" not in columns_at_0008["messages"]
    before = await every_row(database_url)

    await asyncio.to_thread(upgrade, database_url)
    assert await every_row(database_url, columns_at_0008) == before
    assert await model_differences(database_url) == []
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT id, model, variant FROM messages"))).all()
    finally:
        await engine.dispose()
    assert {row.id: row.model for row in rows} == expected
    assert {row.variant for row in rows} == {None}
    # and the repository reads it, per message
    database = Database(database_url)
    try:
        chats = await Repository(database).list_conversations(bob.id)
        record = await Repository(database).get_conversation(bob.id, chats[0].id)
        assert [m.model for m in record.messages] == ["tiny ✓ model"] * 3
    finally:
        await database.dispose()

    await asyncio.to_thread(downgrade, database_url, "0008")
    assert "model" not in (await column_names(database_url))["messages"]
    assert await every_row(database_url) == before


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
