"""Judgments of replies: one per user per reply version, "up" or "down" with an optional comment."""

from __future__ import annotations

from sqlalchemy import delete, select

from storage.errors import InvalidInput
from storage.models import Rating, User, utcnow
from storage.repository.base import RepositoryBase
from storage.repository.checks import check_rating
from storage.repository.convert import rating_record
from storage.repository.records import RatingRecord


class RatingStore(RepositoryBase):
    """The ``ratings`` table, for replies in the rater's own chats."""

    async def set_rating(
        self, user_id: int, conversation_id: str, message_id: int, value: str, comment: str | None = None
    ) -> RatingRecord:
        """Rate a reply of one's own chat ("up" / "down", optional comment); a second call changes it."""
        number, comment = check_rating(value, comment)
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id, lock=True)
            row = await self._message_in(session, conversation.id, message_id)
            if row.role != "assistant":
                raise InvalidInput("only the model's replies can be rated")
            rating = await session.scalar(
                select(Rating).where(Rating.message_id == row.id, Rating.user_id == user_id)
            )
            now = utcnow()
            if rating is None:
                rating = Rating(message_id=row.id, user_id=user_id, value=number, comment=comment,
                                created_at=now, updated_at=now)
                session.add(rating)
            else:
                rating.value, rating.comment, rating.updated_at = number, comment, now
            await session.flush()
            username = await session.scalar(select(User.username).where(User.id == user_id))
            return rating_record(rating, username or "")

    async def clear_rating(self, user_id: int, conversation_id: str, message_id: int) -> bool:
        """Remove one's rating of a reply; False if there was none."""
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id, lock=True)
            row = await self._message_in(session, conversation.id, message_id)
            result = await session.execute(
                delete(Rating).where(Rating.message_id == row.id, Rating.user_id == user_id)
            )
            return bool(result.rowcount)
