"""Storage on real database files: exact token ids, concurrency, crashes, isolation, bad input."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import textwrap
import uuid

import pytest

from app.config import sqlite_url
from app.migrate import upgrade
from storage.database import Database
from storage.errors import Conflict, InvalidInput, NotFound
from storage.repository import NewMessage, Repository
from storage.tokens import pack_token_ids, unpack_token_ids
from tests.support import POSTGRES_URL, PYTHON, ROOT, reset_postgres

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(not POSTGRES_URL, reason="no PostgreSQL"))]


@pytest.fixture(params=BACKENDS)
async def repository(request, tmp_path):
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "chat.db")
    else:
        url = POSTGRES_URL
        await reset_postgres(url)
    await asyncio.to_thread(upgrade, url)
    database = Database(url)
    yield Repository(database)
    await database.dispose()


async def new_user(repository: Repository, name: str) -> int:
    return (await repository.create_user(name, "scrypt$hash")).id


def test_token_blob_is_little_endian_uint32():
    assert pack_token_ids([1, 65536]) == b"\x01\x00\x00\x00\x00\x00\x01\x00"
    assert unpack_token_ids(pack_token_ids([0, 2**32 - 1])) == [0, 2**32 - 1]
    for bad in ([-1], [2**32], ["7"]):
        with pytest.raises(InvalidInput):
            pack_token_ids(bad)


@pytest.mark.parametrize("ids", [[], [7], list(range(100_000)), [65535, 65536, 123_456_789, 2**32 - 1]],
                         ids=["empty", "one", "100k", "above-65535"])
async def test_token_ids_round_trip_exactly(repository, ids):
    user = await new_user(repository, "alice")
    chat = await repository.create_conversation(user, "t", "m")
    await repository.append_message(user, chat.id, NewMessage("user", "x", ids))
    stored = await repository.get_conversation(user, chat.id)
    assert stored.messages[0].token_ids == ids


async def test_concurrent_appends_lose_nothing_and_keep_order(repository):
    user = await new_user(repository, "alice")
    chats = [await repository.create_conversation(user, f"c{i}", "m") for i in range(50)]
    shared = await repository.create_conversation(user, "shared", "m")

    async def append(chat_id: str, text: str) -> None:
        await repository.append_message(user, chat_id, NewMessage("user", text, [len(text)]))

    await asyncio.gather(
        *(append(chat.id, f"own {i}") for i, chat in enumerate(chats)),
        *(append(shared.id, f"shared {i}") for i in range(20)),
    )
    for i, chat in enumerate(chats):
        messages = (await repository.get_conversation(user, chat.id)).messages
        assert [m.content for m in messages] == [f"own {i}"]
    messages = (await repository.get_conversation(user, shared.id)).messages
    assert [m.seq for m in messages] == list(range(20))
    assert sorted(m.content for m in messages) == sorted(f"shared {i}" for i in range(20))


CRASHING_WRITER = textwrap.dedent("""
    import asyncio, sys
    from storage.database import Database
    from storage.repository import NewMessage, Repository

    async def main(url, user_id, chat_id):
        repository = Repository(Database(url))
        seq = 0
        while True:
            await repository.append_message(user_id, chat_id, NewMessage("user", f"m{seq}", [seq, seq + 1]))
            print(seq, flush=True)
            seq += 1

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
""")


async def test_sigkill_keeps_every_committed_message(tmp_path):
    url = sqlite_url(tmp_path / "chat.db")
    await asyncio.to_thread(upgrade, url)
    database = Database(url)
    repository = Repository(database)
    user = await new_user(repository, "alice")
    chat = await repository.create_conversation(user, "crash", "m")
    await database.dispose()

    child = subprocess.Popen([PYTHON, "-c", CRASHING_WRITER, url, str(user), chat.id], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    committed = []
    while len(committed) < 30:
        line = child.stdout.readline()
        assert line, "writer died early"
        committed.append(int(line))
    child.send_signal(signal.SIGKILL)
    child.wait()

    database = Database(url)
    stored = (await Repository(database).get_conversation(user, chat.id)).messages
    await database.dispose()
    assert [m.seq for m in stored] == list(range(len(stored)))
    assert len(stored) >= len(committed)
    assert all(stored[s].token_ids == [s, s + 1] for s in committed)
    with sqlite3.connect(tmp_path / "chat.db") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_other_users_chats_are_not_found(repository):
    alice = await new_user(repository, "alice")
    bob = await new_user(repository, "bob")
    chat = await repository.create_conversation(alice, "alice's", "m")
    await repository.append_message(alice, chat.id, NewMessage("user", "secret", [1, 2]))
    before = await repository.get_conversation(alice, chat.id)

    async def error_text(call) -> str:
        with pytest.raises(NotFound) as caught:
            await call
        return str(caught.value)

    unknown = str(uuid.uuid4())
    for target in (chat.id, unknown):
        messages = {
            await error_text(repository.get_conversation(bob, target)),
            await error_text(repository.rename_conversation(bob, target, "mine now")),
            await error_text(repository.delete_conversation(bob, target)),
            await error_text(repository.append_message(bob, target, NewMessage("user", "hi"))),
            await error_text(repository.delete_messages_from(bob, target, 0)),
            await error_text(anext(repository.iter_conversations(bob, target))),
        }
        assert messages == {"conversation not found"}
    assert await repository.list_conversations(bob) == []
    assert await repository.get_conversation(alice, chat.id) == before


async def test_bad_input_is_refused_clearly_and_stores_nothing(repository):
    alice = await new_user(repository, "alice")
    with pytest.raises(InvalidInput, match="at most 200"):
        await repository.create_conversation(alice, "x" * 201, "m")
    with pytest.raises(InvalidInput, match="surrogate"):
        await repository.create_conversation(alice, "bad \ud800 title", "m")
    with pytest.raises(NotFound, match="no user"):
        await repository.create_conversation(999_999, "title", "m")
    chat = await repository.create_conversation(alice, "ok", "m")
    with pytest.raises(InvalidInput, match="surrogate"):
        await repository.append_message(alice, chat.id, NewMessage("user", "bad \udfff text"))
    with pytest.raises(InvalidInput, match="role"):
        await repository.append_message(alice, chat.id, NewMessage("robot", "hi"))
    with pytest.raises(Conflict):
        await repository.create_user("alice", "h")
    with pytest.raises(InvalidInput):
        await repository.create_user("no spaces allowed", "h")
    assert (await repository.get_conversation(alice, chat.id)).messages == []
    assert [c.title for c in await repository.list_conversations(alice)] == ["ok"]


async def test_listing_is_newest_first_paged_and_searchable(repository):
    alice = await new_user(repository, "alice")
    first = await repository.create_conversation(alice, "Cooking 100% pasta", "m")
    second = await repository.create_conversation(alice, "Travel plans", "m")
    await repository.append_message(alice, second.id, NewMessage("user", "Flights to LISBON"))
    assert [c.id for c in await repository.list_conversations(alice)] == [second.id, first.id]
    await repository.append_message(alice, first.id, NewMessage("user", "more pasta"))
    assert [c.id for c in await repository.list_conversations(alice)] == [first.id, second.id]
    assert [c.id for c in await repository.list_conversations(alice, limit=1, offset=1)] == [second.id]
    assert [c.id for c in await repository.list_conversations(alice, search="lisbon")] == [second.id]
    assert [c.id for c in await repository.list_conversations(alice, search="100%")] == [first.id]
    assert await repository.list_conversations(alice, search="_") == []
