"""A user's chat list, and the search that narrows it, kept cheap whoever else has data.

The limits are module constants so tests can tighten them: ``SEARCH_TIMEOUT_SECONDS``
(then the database stops the statement, see deadline.py) and ``SCAN_UP_TO_MESSAGES``
(up to this many of their own messages, a user's searches scan them, past it they use the
text index of storage/search_index.py). The pattern itself is capped by ``check_search``.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import ColumnElement, func, literal_column, or_, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.database import Database
from storage.errors import SearchTooSlow
from storage.models import Conversation, Message
from storage.repository.base import RepositoryBase
from storage.repository.checks import check_search
from storage.repository.convert import conversation_summary
from storage.repository.deadline import statement_deadline, was_interrupted
from storage.repository.records import ConversationSummary
from storage.search_index import FTS_TABLE, IndexKind, find_index, fts_phrase, titles_only

SEARCH_TIMEOUT_SECONDS = 2.0
# up to this many messages of their own, a user's searches scan them rather than use the index
SCAN_UP_TO_MESSAGES = 5_000


class SearchStore(RepositoryBase):
    """Listing and searching one user's conversations; remembers which text index the database has."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self._index_kind: IndexKind | Literal["unknown"] | None = "unknown"

    async def list_conversations(
        self, user_id: int, *, limit: int = 50, offset: int = 0, search: str | None = None,
        pinned_first: bool = True,
    ) -> list[ConversationSummary]:
        """A user's chats, pinned ones first (unless ``pinned_first`` is false), then the most
        recently active first; ``search`` matches titles and text.

        Every subquery is limited to this user's conversations, so another user's data
        (however large) is never read; the pattern is capped at ``SEARCH_MAX_CHARS`` and a
        search that runs longer than ``SEARCH_TIMEOUT_SECONDS`` is stopped inside the
        database (raises :class:`SearchTooSlow`), so it cannot hold a connection for long.
        """
        limit = max(1, min(int(limit), 500))
        offset = max(0, int(offset))
        # correlated to each of this user's conversations: the planner probes the
        # (conversation_id, seq) index per chat and never reads another user's messages
        message_count = (
            select(func.count(Message.id)).where(Message.conversation_id == Conversation.id).scalar_subquery()
        )
        query = select(Conversation, message_count).where(Conversation.user_id == user_id)
        searching = bool(search and search.strip())
        words = check_search(search) if searching and search is not None else ""
        async with self.database.reader() as session:
            if searching:
                query = query.where(await self._search_condition(session, user_id, words))
            order = [Conversation.updated_at.desc(), Conversation.id]
            if pinned_first:
                order.insert(0, Conversation.pinned.desc())
            query = query.order_by(*order).limit(limit).offset(offset)
            if not searching:
                rows = await session.execute(query)
                return [conversation_summary(conversation, count) for conversation, count in rows]
            try:
                async with statement_deadline(session, SEARCH_TIMEOUT_SECONDS):
                    rows = await session.execute(query)
                    return [conversation_summary(conversation, count) for conversation, count in rows]
            except (OperationalError, DBAPIError) as error:
                if was_interrupted(error):
                    raise SearchTooSlow(
                        f"The search took longer than {SEARCH_TIMEOUT_SECONDS:g} seconds and was stopped; "
                        "try more specific words."
                    ) from None
                raise

    async def _search_index(self, session: AsyncSession) -> IndexKind | None:
        """The text index of this database, looked up once (it comes with a migration)."""
        if self._index_kind == "unknown":
            self._index_kind = await find_index(session)
        return self._index_kind

    @staticmethod
    async def _has_many_messages(session: AsyncSession, user_id: int) -> bool:
        """More than ``SCAN_UP_TO_MESSAGES`` messages? (Counts at most that many: cheap either way.)

        The FTS5 index is one for everybody: its cost grows with the hits of all users, a
        scan's only with the searcher's own text. A light user's scan is a few milliseconds
        and nobody else's data can change that; a heavy user's is what the index is for.
        """
        own = (
            select(Message.id).join(Conversation, Conversation.id == Message.conversation_id)
            .where(Conversation.user_id == user_id).limit(SCAN_UP_TO_MESSAGES).subquery()
        )
        return int(await session.scalar(select(func.count()).select_from(own)) or 0) >= SCAN_UP_TO_MESSAGES

    async def _search_condition(self, session: AsyncSession, user_id: int, words: str) -> ColumnElement[bool]:
        """Title or some message of the chat contains ``words`` (case-insensitive).

        Under ``MIN_INDEXED_CHARS`` characters only titles match: no text index serves so
        short a substring, so it would mean reading every message the user has (over
        100,000 messages, 60 ms on SQLite and 320 ms on PostgreSQL), and the page says to
        type more to search inside messages.

        Message text is probed per conversation of the user, so only their messages count.
        Light users (see ``_has_many_messages``): each chat's messages are scanned. Heavy
        users: on SQLite a message matches when the FTS5 index holds it (one index lookup
        for the whole search); on PostgreSQL ``ILIKE``, which its planner answers from the
        pg_trgm GIN index when that is cheaper than probing chat by chat (measured: a rare
        word over 100,000 messages in 4 ms, a common one in 6 ms).
        """
        pattern = "%" + escape_like(words) + "%"
        title_matches = Conversation.title.ilike(pattern, escape="\\")
        if titles_only(words):
            return title_matches
        index = await self._search_index(session)
        scanning = index is None or not await self._has_many_messages(session, user_id)
        if scanning:
            # ``content || ''`` is not the indexed column, so PostgreSQL cannot swap this probe of
            # the user's own chats for the shared GIN index, whose cost grows with everyone's hits
            found: ColumnElement[bool] = (Message.content + "").ilike(pattern, escape="\\")
        elif index == "fts5":
            hits = select(literal_column("rowid")).select_from(text(FTS_TABLE)).where(
                text(f"{FTS_TABLE} MATCH :fts_words").bindparams(fts_words=fts_phrase(words))
            )
            found = Message.id.in_(hits)
        else:
            found = Message.content.ilike(pattern, escape="\\")
        probe = select(Message.id).where(Message.conversation_id == Conversation.id, found)
        if scanning:
            # OFFSET 0 keeps PostgreSQL from trading the per-chat probe for one hashed pass over
            # every user's matching messages: it picks that pass when its statistics are stale
            # (another user just imported thousands of messages), and it read all of them (25x)
            probe = probe.offset(0)
        return or_(title_matches, probe.exists())


def escape_like(words: str) -> str:
    """``words`` matched literally by LIKE (escape character ``\\``): its ``%`` and ``_`` are not wildcards."""
    return words.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
