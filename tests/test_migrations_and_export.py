"""Migrations (up, down, up; models agree with them), exports and the admin CLI."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.auth import hash_password, verify_password
from app.config import sqlite_url
from app.export import import_json, write_export
from app.migrate import downgrade, upgrade
from storage.database import Database, create_engine
from storage.errors import Conflict
from storage.models import Base
from storage.repository import NewMessage, Repository
from tests.support import POSTGRES_URL, PYTHON, ROOT, reset_postgres

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(not POSTGRES_URL, reason="no PostgreSQL"))]


@pytest.fixture(params=BACKENDS)
async def database_url(request, tmp_path):
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "chat.db")
    await reset_postgres(POSTGRES_URL)
    return POSTGRES_URL


async def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    async with engine.connect() as connection:
        names = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    await engine.dispose()
    return names


async def test_upgrade_downgrade_upgrade_and_models_match(database_url):
    await asyncio.to_thread(upgrade, database_url)
    assert {"users", "conversations", "messages"} <= await table_names(database_url)
    await asyncio.to_thread(downgrade, database_url)
    assert await table_names(database_url) <= {"alembic_version"}
    await asyncio.to_thread(upgrade, database_url)

    engine = create_engine(database_url)
    async with engine.connect() as connection:
        differences = await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
        )
    await engine.dispose()
    assert differences == []


async def test_sqlite_connections_are_configured_for_safety(tmp_path):
    url = sqlite_url(tmp_path / "nested" / "chat.db")
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    async with engine.connect() as connection:
        pragmas = {
            name: (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout")
        }
    await engine.dispose()
    assert pragmas["journal_mode"] == "wal"
    assert pragmas["foreign_keys"] == 1
    assert pragmas["busy_timeout"] > 0


@pytest.fixture
async def filled(database_url):
    await asyncio.to_thread(upgrade, database_url)
    database = Database(database_url)
    repository = Repository(database)
    alice = await repository.create_user("alice", "h")
    chat = await repository.create_conversation(alice.id, "Übung <b>macht</b> 🙂", "SmolLM2")
    await repository.append_messages(alice.id, chat.id, [
        NewMessage("system", "Be brief.", [1, 2, 3]),
        NewMessage("user", "Hi 🙂 there", [4, 70_000]),
        NewMessage("assistant", "Hello!", [9, 2], params={"temperature": 0.7, "seed": None},
                   finish_reason="eos", prompt_tokens=5, completion_tokens=2, latency_ms=120),
    ])
    yield repository, alice, chat
    await database.dispose()


async def export_text(repository, user_id, fmt, **kwargs) -> str:
    import io

    out = io.StringIO()
    await write_export(repository.iter_conversations(user_id), out, fmt, **kwargs)
    return out.getvalue()


async def test_json_export_then_import_is_identical(filled, tmp_path):
    repository, alice, chat = filled
    original = await repository.get_conversation(alice.id, chat.id)
    document = await export_text(repository, alice.id, "json", include_token_ids=True)

    other_url = sqlite_url(tmp_path / "other.db")
    await asyncio.to_thread(upgrade, other_url)
    other_db = Database(other_url)
    other = Repository(other_db)
    await other.create_user("alice", "h")
    assert await import_json(other, document) == 1
    restored = await other.get_conversation((await other.get_user("alice")).id, chat.id)
    with pytest.raises(Conflict):
        await import_json(other, document)
    await other_db.dispose()

    def essence(conversation):
        return (conversation.id, conversation.title, conversation.model, conversation.created_at,
                conversation.updated_at,
                [(m.seq, m.role, m.content, m.token_ids, m.params, m.finish_reason, m.prompt_tokens,
                  m.completion_tokens, m.latency_ms, m.created_at) for m in conversation.messages])

    assert essence(restored) == essence(original)


async def test_markdown_and_jsonl_exports(filled):
    repository, alice, _ = filled
    markdown = await export_text(repository, alice.id, "md")
    for expected in ("# Übung <b>macht</b> 🙂", "**User:** alice", "**Model:** SmolLM2", "Hi 🙂 there", "Hello!"):
        assert expected in markdown
    lines = (await export_text(repository, alice.id, "jsonl")).splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi 🙂 there"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert record["user"] == "alice" and record["turns"][2]["finish_reason"] == "eos"


def run_cli(data_dir, *args, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "CHAT_DATA_DIR": str(data_dir)}
    environment.pop("CHAT_DATABASE_URL", None)
    return subprocess.run([PYTHON, "-m", "app", *args], cwd=ROOT, env=environment, input=stdin, text=True,
                          capture_output=True, timeout=120)


def test_cli_users_export_import(tmp_path):
    data = tmp_path / "data"
    assert run_cli(data, "users", "add", "alice", "--password-stdin", stdin="alice-password\n").returncode == 0
    assert run_cli(data, "users", "add", "root", "--admin", "--password-stdin", stdin="root-password\n").returncode == 0
    weak = run_cli(data, "users", "add", "bob", "--password-stdin", stdin="short\n")
    assert weak.returncode == 1 and "at least 8" in weak.stderr
    listing = run_cli(data, "users", "list").stdout
    assert "alice\ttester" in listing and "root\tadmin" in listing
    with sqlite3.connect(data / "chat.db") as connection:
        stored_hash = connection.execute("SELECT password_hash FROM users WHERE username='alice'").fetchone()[0]
    assert "alice-password" not in stored_hash and verify_password("alice-password", stored_hash)
    assert hash_password("same") != hash_password("same")

    async def add_chat():
        database = Database(sqlite_url(data / "chat.db"))
        repository = Repository(database)
        user = await repository.get_user("alice")
        chat = await repository.create_conversation(user.id, "CLI chat", "m")
        await repository.append_message(user.id, chat.id, NewMessage("user", "hello", [5, 6]))
        await database.dispose()
        return chat.id

    chat_id = asyncio.run(add_chat())
    out = tmp_path / "alice.json"
    result = run_cli(data, "export", "--user", "alice", "--conversation", chat_id, "--format", "json",
                     "--out", str(out), "--token-ids")
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert document["conversations"][0]["messages"][0]["token_ids"] == [5, 6]

    everyone = run_cli(data, "export", "--all-users", "--format", "jsonl", "--out", "-")
    assert everyone.returncode == 0 and json.loads(everyone.stdout.splitlines()[0])["title"] == "CLI chat"
    missing = run_cli(data, "export", "--user", "root", "--conversation", chat_id, "--format", "md", "--out", "-")
    assert missing.returncode == 1 and "not found" in missing.stderr

    assert run_cli(data, "users", "add", "carol", "--password-stdin", stdin="carol-password\n").returncode == 0
    conflict = run_cli(data, "import", str(out))
    assert conflict.returncode == 1 and "already exists" in conflict.stderr
    document["conversations"][0]["id"] = "copied-chat"
    out.write_text(json.dumps(document))
    imported = run_cli(data, "import", str(out), "--user", "carol")
    assert imported.returncode == 0 and "imported 1" in imported.stdout
    carol = run_cli(data, "export", "--user", "carol", "--format", "jsonl", "--out", "-").stdout
    assert json.loads(carol)["messages"] == [{"role": "user", "content": "hello"}]
    assert run_cli(data, "users", "remove", "carol").returncode == 0
    assert "carol" not in run_cli(data, "users", "list").stdout
