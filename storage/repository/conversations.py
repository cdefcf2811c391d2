"""A user's conversations as wholes: create, read, rename, pin, delete (listing: search.py)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from storage.errors import Conflict, NotFound
from storage.models import MODEL_NAME_MAX, Conversation, Message, User, utcnow
from storage.repository.base import RepositoryBase
from storage.repository.checks import check_text, check_title
from storage.repository.convert import conversation_summary
from storage.repository.records import ConversationRecord, ConversationSummary


class ConversationStore(RepositoryBase):
    """The ``conversations`` table; every call names the owner, and another user's chat is "not found"."""

    async def create_conversation(
        self,
        user_id: int,
        title: str,
        model: str,
        *,
        conversation_id: str | None = None,
        created_at: datetime | None = None,
    ) -> ConversationSummary:
        title = check_title(title)
        model = check_text(model, "model name")[:MODEL_NAME_MAX]
        now = created_at or utcnow()
        async with self.database.writer() as session, session.begin():
            if await session.get(User, user_id) is None:
                raise NotFound(f"no user with id {user_id}")
            conversation = Conversation(
                id=conversation_id or str(uuid.uuid4()),
                user_id=user_id,
                title=title,
                model=model,
                created_at=now,
                updated_at=now,
            )
            session.add(conversation)
            try:
                await session.flush()
            except IntegrityError:
                raise Conflict(f"conversation {conversation.id} already exists") from None
            return conversation_summary(conversation)

    async def get_conversation(self, user_id: int, conversation_id: str) -> ConversationRecord:
        async with self.database.reader() as session:
            conversation = await self._owned(session, user_id, conversation_id)
            return await self._load_full(session, conversation)

    async def rename_conversation(self, user_id: int, conversation_id: str, title: str) -> None:
        title = check_title(title)
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id)
            conversation.title = title

    async def set_conversation_model(self, user_id: int, conversation_id: str, model: str) -> None:
        """The model a chat continues with (the tester picked another, or its own is no longer offered);
        each message keeps the model that wrote it."""
        model = check_text(model, "model name")[:MODEL_NAME_MAX]
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id)
            conversation.model = model

    async def set_pinned(self, user_id: int, conversation_id: str, pinned: bool) -> None:
        """Pin or unpin a chat; its last-active time stays as it was."""
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id)
            conversation.pinned = bool(pinned)

    async def delete_conversation(self, user_id: int, conversation_id: str) -> None:
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id)
            await session.execute(delete(Message).where(Message.conversation_id == conversation.id))
            await session.delete(conversation)
