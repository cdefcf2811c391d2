"""What the team did in a period, for the admin page: per user, per model, and the ratings given.

Aggregates only (counts, sums, the latest time): nothing of what anyone wrote leaves here.
A message counts in the period it was stored in; a chat counts when it got a message then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, select

from storage.models import Conversation, LoginSession, Message, Rating, User, utcnow
from storage.repository.base import RepositoryBase


@dataclass(frozen=True)
class UsageRow:
    """One user's (or one model's) activity in the period."""

    name: str
    chats: int
    messages: int
    prompt_tokens: int
    output_tokens: int
    last_active: datetime | None


@dataclass(frozen=True)
class RatingsRow:
    model: str
    up: int
    down: int
    comments: int


@dataclass(frozen=True)
class AccountRow:
    username: str
    is_admin: bool
    created_at: datetime
    logins: int  # live login sessions


class UsageStore(RepositoryBase):
    """Read-only aggregates across every user: only the admin page calls these."""

    async def usage_by_user(self, since: datetime) -> list[UsageRow]:
        return await self._usage(User.username, since)

    async def usage_by_model(self, since: datetime) -> list[UsageRow]:
        return await self._usage(Conversation.model, since)

    async def _usage(self, key: Any, since: datetime) -> list[UsageRow]:
        query = (
            select(
                key,
                func.count(func.distinct(Message.conversation_id)),
                func.count(Message.id),
                func.coalesce(func.sum(Message.prompt_tokens), 0),
                func.coalesce(func.sum(Message.completion_tokens), 0),
                func.max(Message.created_at),
            )
            .select_from(Message)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .join(User, User.id == Conversation.user_id)
            .where(Message.created_at >= since)
            .group_by(key)
            .order_by(func.count(Message.id).desc(), key)
        )
        async with self.database.reader() as session:
            rows = (await session.execute(query)).all()
        return [UsageRow(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), _aware(r[5])) for r in rows]

    async def ratings_by_model(self, since: datetime) -> list[RatingsRow]:
        query = (
            select(
                Conversation.model,
                func.sum(case((Rating.value > 0, 1), else_=0)),
                func.sum(case((Rating.value < 0, 1), else_=0)),
                func.count(Rating.comment),
            )
            .select_from(Rating)
            .join(Message, Message.id == Rating.message_id)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Rating.updated_at >= since)
            .group_by(Conversation.model)
            .order_by(Conversation.model)
        )
        async with self.database.reader() as session:
            rows = (await session.execute(query)).all()
        return [RatingsRow(str(r[0]), int(r[1] or 0), int(r[2] or 0), int(r[3] or 0)) for r in rows]

    async def accounts(self) -> list[AccountRow]:
        """Every account with its number of live logins."""
        live = (
            select(LoginSession.user_id, func.count().label("logins"))
            .where(LoginSession.expires_at > utcnow())
            .group_by(LoginSession.user_id)
            .subquery()
        )
        query = (
            select(User.username, User.is_admin, User.created_at, func.coalesce(live.c.logins, 0))
            .outerjoin(live, live.c.user_id == User.id)
            .order_by(User.username)
        )
        async with self.database.reader() as session:
            rows = (await session.execute(query)).all()
        return [AccountRow(r[0], bool(r[1]), _aware(r[2]) or utcnow(), int(r[3])) for r in rows]


def _aware(value: Any) -> datetime | None:
    """``max()`` over a UTC column comes back as the driver's raw value on SQLite (text, no zone)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
