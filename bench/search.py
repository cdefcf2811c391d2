"""Search over one heavy user's messages, against the goal of 100 ms.

Seeds 100,000 messages (1,000 chats of 100, ~200 characters each, random words) for
one user, plus the same again for a second user whose rows must not matter, then
times searches through ``Repository.list_conversations`` (the page's path, with its
time limit): a word in a few messages, a common word, a word found nowhere, a
2-character search (titles only, as the page tells the tester), each the median of several runs.
Prints milliseconds and the ratio to the goal; ``--scan`` also times the same
searches with the index ignored (the scan it replaces).

    python bench/search.py [--messages 100000] [--database-url URL]   # default: a temp SQLite file
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text as sql

from app.config import sqlite_url
from app.migrate import upgrade
from storage.database import Database
from storage.models import utcnow
from storage.repository import NewMessage, Repository

GOAL_MS = 100.0
RUNS = 7
WORDS = [
    "model", "reply", "token", "batch", "cache", "prompt", "server", "database", "index", "search", "garden",
    "water", "light", "paper", "stone", "river", "window", "table", "chair", "music", "letter", "number",
    "system", "engine", "answer", "question", "history", "morning", "evening",
]
RARE = "zanzibarite"


WORDS_PER_MESSAGE = 30  # ~200 characters; --words 300 gives ~2 kB, like the long messages of the abuse report


def text(rng: random.Random, index: int) -> str:
    words = [rng.choice(WORDS) for _ in range(WORDS_PER_MESSAGE)]
    if index % 10_000 == 0:  # ten messages in 100,000 hold the rare word
        words.insert(rng.randrange(len(words)), RARE)
    return " ".join(words)


async def seed(repository: Repository, user_id: int, messages: int, per_chat: int, rng: random.Random) -> None:
    created = utcnow() - timedelta(days=30)
    for chat in range(messages // per_chat):
        await repository.import_conversation(
            user_id, conversation_id=str(uuid.uuid4()), title=f"chat {chat}", model="bench",
            created_at=created, updated_at=created + timedelta(seconds=chat),
            messages=[
                NewMessage(("user", "assistant")[i % 2], text(rng, chat * per_chat + i)) for i in range(per_chat)
            ],
        )


async def median_ms(repository: Repository, user_id: int, words: str) -> tuple[float, int]:
    times, found = [], 0
    for _ in range(RUNS):
        started = time.perf_counter()
        found = len(await repository.list_conversations(user_id, search=words, limit=51))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), found


async def run(url: str, messages: int, scan: bool) -> None:
    await asyncio.to_thread(upgrade, url)
    database = Database(url)
    repository = Repository(database)
    try:
        rng = random.Random(0)
        heavy = await repository.create_user(f"heavy{uuid.uuid4().hex[:6]}", "x")
        other = await repository.create_user(f"other{uuid.uuid4().hex[:6]}", "x")
        started = time.perf_counter()
        await seed(repository, heavy.id, messages, 100, rng)
        await seed(repository, other.id, messages, 100, rng)
        print(f"seeded 2 x {messages:,} messages of {WORDS_PER_MESSAGE} words in "
              f"{time.perf_counter() - started:.0f} s ({url.split(':')[0]})")
        if database.engine.dialect.name == "postgresql":  # fresh rows: the planner's statistics, as autovacuum would
            async with database.engine.connect() as connection:
                await connection.execute(sql("ANALYZE messages"))
                await connection.execute(sql("ANALYZE conversations"))
                await connection.commit()
        cases = [("rare word (10 messages)", RARE), ("common word (every chat)", "garden"),
                 ("no match", "qqqxqqq"), ("2 characters (titles only)", "zq")]
        modes = [("index", False)] + ([("scan", True)] if scan else [])
        for mode, ignore_index in modes:
            repository._index_kind = None if ignore_index else "unknown"
            for name, words in cases:
                ms, found = await median_ms(repository, heavy.id, words)
                print(f"  {mode:5s} {name:28s} {ms:8.1f} ms  {ms / GOAL_MS:5.2f}x the 100 ms goal  ({found} chats)")
    finally:
        await database.dispose()


def main() -> None:
    global WORDS_PER_MESSAGE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--database-url", default=None, help="default: a new SQLite file in a temp folder")
    parser.add_argument("--scan", action="store_true", help="also time the searches without the index")
    parser.add_argument("--words", type=int, default=WORDS_PER_MESSAGE, help="words per message")
    args = parser.parse_args()
    WORDS_PER_MESSAGE = args.words
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or sqlite_url(Path(folder) / "bench.db")
        asyncio.run(run(url, args.messages, args.scan))


if __name__ == "__main__":
    main()
