"""Exports: a JSON round trip that restores conversations exactly, Markdown, JSONL, and the admin CLI."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.accounts.passwords import verify_password
from app.config import sqlite_url
from app.migrate import upgrade
from app.services.export_formats import import_json, write_export
from storage.database import Database, is_sqlite
from storage.errors import Conflict, InvalidInput, NotFound
from storage.repository import ConversationRecord, NewMessage, Repository
from tests.support import reset_postgres

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable

START = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
TRICKY_TEXT = "Line one\nline two\r\n\ttabbed «quotes» \"json\" \\ back\u2028sep\x85nel 🙂 <b>html</b> # not a heading"


async def fill(repository: Repository, user_id: int) -> list[str]:
    """Three conversations covering every stored field; returns their ids, oldest first."""
    full = await repository.create_conversation(user_id, "Übung <b>macht</b> 🙂", "SmolLM2-135M-Instruct",
                                                created_at=START)
    await repository.append_messages(user_id, full.id, [
        NewMessage("system", "Be brief.", [1, 2, 3], created_at=START + timedelta(seconds=1)),
        NewMessage("user", TRICKY_TEXT, [4, 65_535, 65_536, 2**32 - 1],
                   params={"temperature": 0.7, "top_p": 0.95, "seed": None, "stop": ["\n\n"], "nested": {"a": [1]}},
                   created_at=START + timedelta(seconds=2, microseconds=1)),
        NewMessage("assistant", "Hello!", [9, 2], finish_reason="eos", prompt_tokens=5, completion_tokens=2,
                   latency_ms=120, created_at=START + timedelta(seconds=3, microseconds=999_999)),
        NewMessage("user", "And then?", list(range(5000)), created_at=START + timedelta(minutes=1)),
        NewMessage("assistant", "", [], finish_reason="cancelled", prompt_tokens=5002, completion_tokens=0,
                   latency_ms=0, created_at=START + timedelta(minutes=2)),
    ])
    empty = await repository.create_conversation(user_id, "Nothing said yet", "m",
                                                 created_at=START + timedelta(days=1))
    plain = await repository.create_conversation(user_id, "Plain", "m", created_at=START + timedelta(days=2))
    await repository.append_message(user_id, plain.id, NewMessage("user", "just now", [77]))
    return [full.id, empty.id, plain.id]


def essence(record: ConversationRecord) -> ConversationRecord:
    """The record with the database's own message row ids blanked (a new database numbers them anew)."""
    return dataclasses.replace(record, messages=[dataclasses.replace(m, id=0) for m in record.messages])


async def export_text(repository: Repository, user_id: int | None, fmt: str, **kwargs) -> str:
    out = io.StringIO()
    await write_export(repository.iter_conversations(user_id), out, fmt, **kwargs)
    return out.getvalue()


@contextlib.asynccontextmanager
async def fresh_repository(kind: str, tmp_path: Path) -> AsyncIterator[Repository]:
    """An empty migrated database: a new SQLite file, or the PostgreSQL test database reset."""
    if kind == "sqlite":
        url = sqlite_url(tmp_path / f"fresh-{uuid.uuid4().hex}.db")
    else:
        url = os.environ["CHAT_TEST_POSTGRES_URL"]
        await reset_postgres(url)
    await asyncio.to_thread(upgrade, url)
    database = Database(url)
    try:
        yield Repository(database)
    finally:
        await database.dispose()


async def test_json_round_trip_restores_conversations_exactly(repository, make_user, database_url, tmp_path):
    alice = await make_user("alice")
    ids = await fill(repository, alice.id)
    originals = [await repository.get_conversation(alice.id, cid) for cid in ids]
    sidebar = [c.id for c in await repository.list_conversations(alice.id)]
    document = await export_text(repository, alice.id, "json", include_token_ids=True)
    await repository.database.dispose()  # the PostgreSQL case resets this very database next

    parsed = json.loads(document)
    assert parsed["format"] == "chat-server-export" and parsed["includes_token_ids"] is True
    assert [c["id"] for c in parsed["conversations"]] == ids
    assert parsed["conversations"][0]["messages"][1]["token_ids"] == [4, 65_535, 65_536, 2**32 - 1]

    targets = ["sqlite"] if is_sqlite(database_url) else ["postgres", "sqlite"]  # PG -> SQLite works too
    for target in targets:
        async with fresh_repository(target, tmp_path) as fresh:
            await fresh.create_user("bystander", "hash")  # so user ids differ between the databases
            new_alice = await fresh.create_user("alice", "hash")
            assert await import_json(fresh, document) == 3
            restored = [await fresh.get_conversation(new_alice.id, cid) for cid in ids]
            for before, after in zip(originals, restored, strict=True):
                assert after.user_id == new_alice.id
                assert essence(after) == dataclasses.replace(essence(before), user_id=new_alice.id)
                assert after.token_history() == before.token_history()
            assert restored[0].messages[1].created_at == START + timedelta(seconds=2, microseconds=1)
            assert restored[0].updated_at == originals[0].updated_at
            # the sidebar order survives too
            assert [c.id for c in await fresh.list_conversations(new_alice.id)] == sidebar

            everything_before = [c async for c in fresh.iter_conversations(None)]
            with pytest.raises(Conflict, match="already exists"):
                await import_json(fresh, document)
            assert [c async for c in fresh.iter_conversations(None)] == everything_before
            # and the imported chat carries on at the next seq
            record = await fresh.append_message(new_alice.id, ids[0], NewMessage("user", "resumed"))
            assert record.seq == len(originals[0].messages)


async def test_json_without_token_ids_and_import_as_another_user(repository, make_user, tmp_path):
    alice = await make_user("alice")
    ids = await fill(repository, alice.id)
    document = await export_text(repository, alice.id, "json")
    parsed = json.loads(document)
    assert parsed["includes_token_ids"] is False
    assert all("token_ids" not in m for c in parsed["conversations"] for m in c["messages"])

    async with fresh_repository("sqlite", tmp_path) as fresh:
        with pytest.raises(NotFound, match="no user named 'alice'"):
            await import_json(fresh, document)
        carol = await fresh.create_user("carol", "hash")
        assert await import_json(fresh, document, as_user="carol") == 3
        restored = await fresh.get_conversation(carol.id, ids[0])
        assert restored.username == "carol"
        assert restored.token_history() == []
        assert [m.content for m in restored.messages] == [
            m.content for m in (await repository.get_conversation(alice.id, ids[0])).messages
        ]


async def test_an_import_is_all_or_nothing_and_can_be_run_again(repository, make_user, tmp_path):
    alice = await make_user("alice")
    ids = await fill(repository, alice.id)
    document = json.loads(await export_text(repository, alice.id, "json"))
    with_one_chat = json.dumps({**document, "conversations": document["conversations"][1:2]})
    with_a_bad_last_message = json.loads(json.dumps(document))
    with_a_bad_last_message["conversations"][-1]["messages"][-1]["role"] = "narrator"

    async with fresh_repository("sqlite", tmp_path) as fresh:
        new_alice = await fresh.create_user("alice", "hash")
        assert await import_json(fresh, with_one_chat) == 1
        with pytest.raises(Conflict, match="already exists"):  # the file's second chat is there already
            await import_json(fresh, json.dumps(document))
        assert [c.id for c in await fresh.list_conversations(new_alice.id)] == [ids[1]]  # nothing else came in
        with pytest.raises(InvalidInput, match="role"):
            await import_json(fresh, json.dumps(with_a_bad_last_message))
        assert [c.id for c in await fresh.list_conversations(new_alice.id)] == [ids[1]]

        await fresh.delete_conversation(new_alice.id, ids[1])  # the operator clears the way and runs it again
        assert await import_json(fresh, json.dumps(document)) == 3
        assert sorted(c.id for c in await fresh.list_conversations(new_alice.id)) == sorted(ids)
        with pytest.raises(InvalidInput, match="same conversation id twice"):
            await import_json(fresh, json.dumps({**document, "conversations": document["conversations"][:1] * 2}))


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ("not json", "not a JSON export"),
        ('{"format": "something-else", "version": 1, "conversations": []}', "not a chat-server-export"),
        ('{"format": "chat-server-export", "version": 99, "conversations": []}', "version 99"),
        ('{"format": "chat-server-export", "version": 1}', "no conversations"),
    ],
)
async def test_import_refuses_documents_that_are_not_ours(repository, document, match):
    with pytest.raises(InvalidInput, match=match):
        await import_json(repository, document)


async def test_markdown_has_title_user_model_and_every_message(repository, make_user):
    alice = await make_user("alice")
    ids = await fill(repository, alice.id)
    markdown = await export_text(repository, alice.id, "md")
    for expected in [
        "# Übung <b>macht</b> 🙂", "# Nothing said yet", "# Plain",
        "**User:** alice", "**Model:** SmolLM2-135M-Instruct", "**Model:** m",
        *ids,
    ]:
        assert expected in markdown
    conversations = [await repository.get_conversation(alice.id, cid) for cid in ids]
    for message in (m for c in conversations for m in c.messages):
        assert message.content in markdown
    assert (markdown.count("### System"), markdown.count("### User"), markdown.count("### Assistant")) == (1, 3, 2)
    assert "### Assistant _(finished: cancelled)_" in markdown
    assert markdown.count("\n---\n") == 2  # three conversations, separated


async def test_jsonl_is_one_parseable_line_per_conversation(repository, make_user):
    alice = await make_user("alice")
    ids = await fill(repository, alice.id)
    text = await export_text(repository, alice.id, "jsonl")
    assert text.endswith("\n")
    lines = text.splitlines()  # the strictest reading of "line" (it also splits on U+2028)
    assert len(lines) == 3 and lines == text.split("\n")[:-1]
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == ids
    for record, cid in zip(records, ids, strict=True):
        stored = await repository.get_conversation(alice.id, cid)
        assert record["messages"] == [{"role": m.role, "content": m.content} for m in stored.messages]
        assert all(set(m) == {"role", "content"} for m in record["messages"])
        assert record["user"] == "alice" and record["title"] == stored.title
    assert records[0]["messages"][1]["content"] == TRICKY_TEXT
    assert records[1]["messages"] == []
    assert records[0]["turns"][2]["finish_reason"] == "eos"


async def test_unknown_format_is_refused(repository):
    with pytest.raises(InvalidInput, match="unknown export format"):
        await write_export(repository.iter_conversations(None), io.StringIO(), "csv")


async def test_export_of_all_users_streams_in_batches(repository, make_user):
    """More conversations than one export batch, from two users, oldest first."""
    alice = await make_user("alice")
    bob = await make_user("bob")
    made = []
    for i in range(60):
        owner = alice if i % 2 else bob
        chat = await repository.create_conversation(owner.id, f"chat {i}", "m", created_at=START + timedelta(hours=i))
        made.append(chat.id)
    await repository.append_messages(alice.id, made[1], [NewMessage("user", "hi")])
    records = [json.loads(line) for line in (await export_text(repository, None, "jsonl")).splitlines()]
    assert [r["id"] for r in records] == made
    assert {r["user"] for r in records} == {"alice", "bob"}
    assert len((await export_text(repository, alice.id, "jsonl")).splitlines()) == 30


# ---------------------------------------------------------------- the CLI, end to end


def cli_env(data_dir: Path) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("CHAT_")}
    environment["CHAT_DATA_DIR"] = str(data_dir)
    environment["CHAT_DATABASE_URL"] = sqlite_url(data_dir / "chat.db")
    return environment


async def cli(data_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [PYTHON, "-m", "app", *args],
        cwd=ROOT, env=cli_env(data_dir), input=stdin, text=True, capture_output=True, timeout=60,
    )


async def test_cli_users_export_and_import(tmp_path):
    data = tmp_path / "data"
    added = await cli(data, "users", "add", "alice", "--password-stdin", stdin="alice-password\n")
    assert added.returncode == 0, added.stderr
    assert "added user alice" in added.stdout
    assert (await cli(data, "users", "add", "bob", "--password-stdin", stdin="bob-password\n")).returncode == 0
    weak = await cli(data, "users", "add", "eve", "--password-stdin", stdin="short\n")
    assert weak.returncode != 0 and "at least 8" in weak.stderr

    with contextlib.closing(sqlite3.connect(data / "chat.db")) as connection:
        hashes = dict(connection.execute("SELECT username, password_hash FROM users"))
    assert set(hashes) == {"alice", "bob"}  # eve was not created
    assert "alice-password" not in hashes["alice"] and verify_password("alice-password", hashes["alice"])

    database = Database(sqlite_url(data / "chat.db"))
    try:
        repository = Repository(database)
        alice = await repository.get_user("alice")
        bob = await repository.get_user("bob")
        alice_ids = await fill(repository, alice.id)
        bobs = await repository.create_conversation(bob.id, "Bob's chat", "m", created_at=START + timedelta(days=5))
        await repository.append_message(bob.id, bobs.id, NewMessage("user", "bob here", [70_000]))
        originals = [await repository.get_conversation(alice.id, cid) for cid in alice_ids]
    finally:
        await database.dispose()

    mine = tmp_path / "alice.json"
    result = await cli(data, "export", "--user", "alice", "--format", "json", "--out", str(mine), "--token-ids")
    assert result.returncode == 0, result.stderr
    assert "exported 3 conversation(s)" in result.stderr
    document = json.loads(mine.read_text(encoding="utf-8"))
    assert [c["id"] for c in document["conversations"]] == alice_ids
    assert document["conversations"][0]["messages"][1]["token_ids"] == [4, 65_535, 65_536, 2**32 - 1]
    assert not mine.with_name("alice.json.partial").exists()

    everyone = tmp_path / "all.json"
    result = await cli(data, "export", "--all-users", "--format", "json", "--out", str(everyone))
    assert result.returncode == 0, result.stderr
    conversations = json.loads(everyone.read_text(encoding="utf-8"))["conversations"]
    assert [(c["user"], c["id"]) for c in conversations] == [("alice", cid) for cid in alice_ids] + [("bob", bobs.id)]
    assert all("token_ids" not in m for c in conversations for m in c["messages"])

    one = tmp_path / "one.json"
    result = await cli(data, "export", "--user", "alice", "--conversation", alice_ids[0], "--format", "json",
                       "--out", str(one), "--token-ids")
    assert result.returncode == 0, result.stderr
    assert [c["id"] for c in json.loads(one.read_text(encoding="utf-8"))["conversations"]] == alice_ids[:1]

    # bob asking for alice's conversation learns exactly what an unknown id tells him
    for target in (alice_ids[0], str(uuid.uuid4())):
        refused = tmp_path / "refused.json"
        result = await cli(data, "export", "--user", "bob", "--conversation", target, "--format", "json",
                           "--out", str(refused))
        assert result.returncode != 0
        assert result.stderr.strip() == "error: conversation not found"
        assert not refused.exists() and not refused.with_name("refused.json.partial").exists()

    # importing into the same database clashes on the ids, and changes nothing
    clash = await cli(data, "import", str(mine), "--user", "bob")
    assert clash.returncode != 0 and "already exists" in clash.stderr

    # into a fresh database, as another user: identical conversations
    other = tmp_path / "other"
    assert (await cli(other, "users", "add", "carol", "--password-stdin", stdin="carol-password\n")).returncode == 0
    imported = await cli(other, "import", str(mine), "--user", "carol")
    assert imported.returncode == 0, imported.stderr
    assert "imported 3 conversation(s)" in imported.stdout
    missing_user = await cli(other, "import", str(everyone))
    assert missing_user.returncode != 0 and "no user named 'alice'" in missing_user.stderr

    database = Database(sqlite_url(other / "chat.db"))
    try:
        repository = Repository(database)
        carol = await repository.get_user("carol")
        restored = [await repository.get_conversation(carol.id, cid) for cid in alice_ids]
    finally:
        await database.dispose()
    for before, after in zip(originals, restored, strict=True):
        assert essence(after) == dataclasses.replace(essence(before), user_id=carol.id, username="carol")
