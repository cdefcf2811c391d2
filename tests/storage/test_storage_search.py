"""Search stays the searcher's own business: scoped to their chats, capped, time-limited, throttled."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text, update

import storage.repository.search as search_module
from app.services.errors import RateLimited
from app.services.limits import SEARCHES_PER_WINDOW, SearchGate
from storage.errors import InvalidInput, SearchTooSlow
from storage.models import Message, utcnow
from storage.repository import SEARCH_MAX_CHARS, NewMessage, Repository
from storage.search_index import find_index

FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit " * 40  # ~2.2 kB per message


async def seed(repository: Repository, user_id: int, chats: int, messages_per_chat: int, text: str) -> None:
    """Bulk rows through the import path (one transaction per chat: quick to build)."""
    created = utcnow() - timedelta(days=1)
    for index in range(chats):
        await repository.import_conversation(
            user_id,
            conversation_id=str(uuid.uuid4()),
            title=f"chat {index}",
            model="m",
            created_at=created,
            updated_at=created,
            messages=[NewMessage(("user", "assistant")[i % 2], f"{text} {i}") for i in range(messages_per_chat)],
        )


async def median_search_seconds(repository: Repository, user_id: int, words: str, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await repository.list_conversations(user_id, search=words)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def take_statistics(repository: Repository) -> None:
    """What autovacuum does now and then on PostgreSQL (SQLite has no such step)."""
    if repository.database.url.startswith("postgresql"):
        async with repository.database.engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("ANALYZE"))


async def test_another_users_data_does_not_slow_a_search(repository, make_user):
    alice, bob = await make_user("alice"), await make_user("bob")
    await seed(repository, alice.id, chats=5, messages_per_chat=4, text="alice talks about gardening")
    await seed(repository, bob.id, chats=1, messages_per_chat=2, text="bob mentions gardening too")
    before = await median_search_seconds(repository, alice.id, "gardening")

    # ~11 MB of bob's; PostgreSQL's autovacuum may take its statistics mid-import, as here:
    # planned with them, an unfenced search read every one of bob's messages (25x slower)
    await seed(repository, bob.id, chats=3, messages_per_chat=50, text=FILLER + " gardening")
    await take_statistics(repository)
    await seed(repository, bob.id, chats=97, messages_per_chat=50, text=FILLER + " gardening")
    after = await median_search_seconds(repository, alice.id, "gardening")

    found = await repository.list_conversations(alice.id, search="gardening")
    assert len(found) == 5 and all(chat.title.startswith("chat ") for chat in found)
    assert {c.id for c in found}.isdisjoint({c.id for c in await repository.list_conversations(bob.id, limit=500)})
    # measured as a ratio: the scoped query reads none of bob's rows (unscoped it was ~50x)
    assert after < 3 * before, (before, after)


async def test_an_overlong_search_is_refused_clearly(repository, make_user):
    alice = await make_user("alice")
    await repository.list_conversations(alice.id, search="x" * SEARCH_MAX_CHARS)
    with pytest.raises(InvalidInput, match=f"50,000 characters long; at most {SEARCH_MAX_CHARS} allowed"):
        await repository.list_conversations(alice.id, search="x" * 50_000)


async def test_a_search_past_its_time_limit_is_stopped_and_the_connection_recovers(
    repository, make_user, monkeypatch
):
    alice = await make_user("alice")
    await seed(repository, alice.id, chats=20, messages_per_chat=50, text=FILLER)
    monkeypatch.setattr(search_module, "SEARCH_TIMEOUT_SECONDS", 0.001)
    with pytest.raises(SearchTooSlow, match=r"longer than 0\.001 seconds and was stopped"):
        await repository.list_conversations(alice.id, search="no such words anywhere")
    monkeypatch.setattr(search_module, "SEARCH_TIMEOUT_SECONDS", 10.0)
    # the pooled connection is usable again, and no time limit is left behind on it
    assert len(await repository.list_conversations(alice.id, limit=500)) == 20
    assert len(await repository.list_conversations(alice.id, search="dolor", limit=500)) == 20


async def test_search_gate_runs_one_search_per_user_and_throttles_bursts():
    gate = SearchGate()
    release = asyncio.Event()
    running: list[str] = []

    async def search(name: str) -> None:
        async with gate.turn(name):
            running.append(name)
            await release.wait()

    tasks = [asyncio.create_task(search("alice")) for _ in range(3)]  # one runs, two wait
    other = asyncio.create_task(search("bob"))  # other users are not affected
    await asyncio.sleep(0.05)
    assert running == ["alice", "bob"]
    with pytest.raises(RateLimited, match="still running"):
        async with gate.turn("alice"):
            pass
    release.set()
    await asyncio.gather(*tasks, other)
    assert running.count("alice") == 3

    for _ in range(SEARCHES_PER_WINDOW - 3):
        async with gate.turn("alice"):
            pass
    with pytest.raises(RateLimited, match="Too many searches"):
        async with gate.turn("alice"):
            pass


async def test_searches_of_everyone_together_never_hold_more_than_a_few_connections():
    gate = SearchGate(at_once=2, wait_seconds=0.2)
    release = asyncio.Event()
    running: list[str] = []

    async def search(name: str) -> None:
        async with gate.turn(name):
            running.append(name)
            await release.wait()

    holders = [asyncio.create_task(search(name)) for name in ("u1", "u2")]
    await asyncio.sleep(0.05)
    with pytest.raises(RateLimited, match="busy for everyone"):
        await search("u3")
    release.set()
    await asyncio.gather(*holders)
    release.clear()
    waiter = asyncio.create_task(search("u3"))  # a free slot: runs at once
    await asyncio.sleep(0.05)
    assert running == ["u1", "u2", "u3"]
    release.set()
    await waiter


async def test_the_text_index_finds_substrings_of_the_users_own_messages_and_follows_edits(
    repository, make_user, monkeypatch
):
    monkeypatch.setattr(search_module, "SCAN_UP_TO_MESSAGES", 1)  # the index even for these few messages
    alice, bob = await make_user("alice"), await make_user("bob")
    mine, _ = await repository.start_conversation(
        alice.id, "plain title", "m", [NewMessage("user", "Our Hydroponics setup leaks"), NewMessage("assistant", "ok")]
    )
    theirs, _ = await repository.start_conversation(bob.id, "bob's", "m", [NewMessage("user", "hydroponics for bob")])
    async with repository.database.reader() as session:
        assert await find_index(session) == ("fts5" if session.bind.dialect.name == "sqlite" else "trgm")

    async def found(user_id: int, words: str) -> list[str]:
        return [chat.id for chat in await repository.list_conversations(user_id, search=words)]

    assert await found(alice.id, "DROPONIC") == [mine.id]  # a substring, any case, through the index
    assert await found(alice.id, "ponics setup") == [mine.id]  # across a space
    assert await found(bob.id, "droponic") == [theirs.id]  # each sees only their own
    assert await found(alice.id, "leaks!") == [] and await found(alice.id, 'say "hi"') == []
    # shorter than a trigram: titles only (no index serves it; it would read every message)
    assert await found(alice.id, "Hy") == [] and await found(alice.id, "pL") == [mine.id]

    # kept in step: edited text (as storage rewrites it), deleted messages, deleted chats
    retried = await repository.put_reply(
        alice.id, mine.id, NewMessage("assistant", "now about aquaponics", created_at=utcnow()), after_seq=0
    )
    assert await found(alice.id, "aquaponic") == [mine.id]
    async with repository.database.writer() as session, session.begin():
        await session.execute(
            update(Message).where(Message.conversation_id == mine.id, Message.seq == 0).values(content="rewritten")
        )
    assert await found(alice.id, "hydroponics") == [] and await found(alice.id, "rewritt") == [mine.id]
    await repository.delete_messages_from(alice.id, mine.id, retried.seq)
    assert await found(alice.id, "aquaponic") == []
    await repository.delete_conversation(bob.id, theirs.id)
    assert await found(bob.id, "droponic") == []
    if repository.database.engine.dialect.name == "sqlite":
        async with repository.database.reader() as session:  # the index holds exactly the live rows
            hits = "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'hydroponics'"
            assert await session.scalar(text(hits)) == 0
            await session.execute(text("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)"))
