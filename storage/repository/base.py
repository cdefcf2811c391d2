"""The state every seam of the repository shares, and the lookups more than one seam needs.

Each store (users, conversations, messages, ratings, ...) is a mixin over this base, so
they all reach the one :class:`Database` and find "this user's conversation" or "this
message of it" the same way: always scoped by owner in the query that finds the row.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.database import Database
from storage.errors import NotFound
from storage.models import Conversation, Message, Rating, User
from storage.repository.checks import INT32_MAX, storable
from storage.repository.convert import message_record, rating_record
from storage.repository.records import ConversationRecord, RatingRecord
from storage.tree import branch, children_of


class RepositoryBase:
    """The database every store works on, and the owner-scoped lookups they share."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def _owned(
        self, session: AsyncSession, user_id: int, conversation_id: str, *, lock: bool = False
    ) -> Conversation:
        if not storable(conversation_id):
            raise NotFound("conversation not found")
        query = select(Conversation).where(
            Conversation.id == conversation_id, Conversation.user_id == user_id
        )
        if lock:
            # Serialises appends to one conversation on PostgreSQL; SQLite's
            # BEGIN IMMEDIATE already holds the database write lock.
            query = query.with_for_update()
        conversation = await session.scalar(query)
        if conversation is None:
            raise NotFound("conversation not found")
        return conversation

    async def _message_in(self, session: AsyncSession, conversation_id: str, message_id: Any) -> Message:
        if not isinstance(message_id, int) or isinstance(message_id, bool) or not 0 < message_id <= INT32_MAX:
            raise NotFound("message not found")
        row = await session.scalar(
            select(Message).where(Message.id == message_id, Message.conversation_id == conversation_id)
        )
        if row is None:
            raise NotFound("message not found")
        return row

    async def _load_full(
        self, session: AsyncSession, conversation: Conversation
    ) -> ConversationRecord:
        """The whole chat: the branch on screen, every version and everyone's ratings (a view and an export alike)."""
        rows = list(
            await session.scalars(
                select(Message).where(Message.conversation_id == conversation.id).order_by(Message.seq)
            )
        )
        username = await session.scalar(select(User.username).where(User.id == conversation.user_id))
        ratings: dict[int, list[RatingRecord]] = {}
        if rows:
            found = await session.execute(
                select(Rating, User.username)
                .join(User, User.id == Rating.user_id)
                .join(Message, Message.id == Rating.message_id)
                .where(Message.conversation_id == conversation.id)
                .order_by(Rating.id)
            )
            for rating, rater in found:
                ratings.setdefault(rating.message_id, []).append(rating_record(rating, rater))
        siblings = children_of(rows)
        records = [
            message_record(
                row,
                tuple(m.id for m in siblings[row.parent_id]),
                tuple(ratings.get(row.id, ())),
                username,
            )
            for row in rows
        ]
        return ConversationRecord(
            id=conversation.id,
            user_id=conversation.user_id,
            username=username or "",
            title=conversation.title,
            model=conversation.model,
            created_at=conversation.created_at,
            updated_at=conversation.updated_at,
            messages=branch(records),
            tree=records,
        )
