"""Many writers at once lose nothing; a writer killed mid-stream loses nothing it reported."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy.engine import make_url

from storage.database import Database, is_sqlite
from storage.repository import NewMessage, Repository

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable


async def test_concurrent_appends_lose_nothing(repository, make_user):
    """50 tasks on 50 chats and 20 tasks on one chat, all at once: every message lands once."""
    alice = await make_user()
    own = [await repository.create_conversation(alice.id, f"own {i}", "m") for i in range(50)]
    shared = await repository.create_conversation(alice.id, "shared", "m")

    async def append(chat_id: str, text: str, token: int) -> int:
        record = await repository.append_message(
            alice.id, chat_id, NewMessage("user", text, [token, token + 70_000])
        )
        return record.seq

    results = await asyncio.gather(
        *(append(chat.id, f"own {i}", i) for i, chat in enumerate(own)),
        *(append(shared.id, f"shared {i}", 1000 + i) for i in range(20)),
        return_exceptions=True,
    )
    errors = [result for result in results if isinstance(result, BaseException)]
    assert errors == [], errors  # in particular no "database is locked"

    assert results[:50] == [0] * 50
    assert sorted(results[50:]) == list(range(20))  # each shared append got its own seq
    for i, chat in enumerate(own):
        messages = (await repository.get_conversation(alice.id, chat.id)).messages
        assert [(m.seq, m.content, m.token_ids) for m in messages] == [(0, f"own {i}", [i, i + 70_000])]

    messages = (await repository.get_conversation(alice.id, shared.id)).messages
    assert [m.seq for m in messages] == list(range(20))
    assert sorted(m.content for m in messages) == sorted(f"shared {i}" for i in range(20))
    for message in messages:
        i = int(message.content.split()[1])
        assert message.token_ids == [1000 + i, 1000 + i + 70_000]

    summaries = {s.id: s.message_count for s in await repository.list_conversations(alice.id, limit=100)}
    assert summaries[shared.id] == 20
    assert all(summaries[chat.id] == 1 for chat in own)


async def test_concurrent_multi_message_appends_stay_contiguous(repository, make_user):
    """Batches appended concurrently to one chat are never interleaved with each other."""
    alice = await make_user()
    chat = await repository.create_conversation(alice.id, "batches", "m")

    async def turn(i: int) -> None:
        await repository.append_messages(
            alice.id, chat.id, [NewMessage("user", f"q{i}", [i]), NewMessage("assistant", f"a{i}", [i])]
        )

    await asyncio.gather(*(turn(i) for i in range(15)))
    messages = (await repository.get_conversation(alice.id, chat.id)).messages
    assert [m.seq for m in messages] == list(range(30))
    for question, answer in zip(messages[::2], messages[1::2], strict=True):
        assert (question.role, answer.role) == ("user", "assistant")
        assert question.content[1:] == answer.content[1:]


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from storage.database import Database
    from storage.repository import NewMessage, Repository

    async def main(url, user_id, chat_id):
        repository = Repository(Database(url))
        while True:
            record = await repository.append_message(
                user_id, chat_id, NewMessage("user", "message", [7, 70_000, 2**32 - 1])
            )
            # only after the commit returned: this seq is durable
            print(record.seq, flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
    """
)


async def test_sigkill_keeps_every_reported_commit(repository, make_user, database_url):
    alice = await make_user()
    chat = await repository.create_conversation(alice.id, "crash", "m")
    await repository.database.dispose()

    child = subprocess.Popen(
        [PYTHON, "-c", WRITER, database_url, str(alice.id), chat.id],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reported: list[int] = []
    try:
        while len(reported) < 40:
            line = await asyncio.to_thread(child.stdout.readline)
            assert line, f"writer exited early: {child.stderr.read()}"
            reported.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert reported == list(range(40))

    database = Database(database_url)
    try:
        stored = (await Repository(database).get_conversation(alice.id, chat.id)).messages
        # the database accepts writes after the crash
        await Repository(database).append_message(alice.id, chat.id, NewMessage("user", "after"))
    finally:
        await database.dispose()
    seqs = [m.seq for m in stored]
    assert seqs == list(range(len(stored)))
    assert set(reported) <= set(seqs)
    assert all(m.token_ids == [7, 70_000, 2**32 - 1] for m in stored)

    if is_sqlite(database_url):
        with contextlib.closing(sqlite3.connect(make_url(database_url).database)) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
