"""Chats in and out whole: restoring exported conversations exactly, and reading them for export.

An import keeps ids, times, token ids, versions and ratings, and is all or nothing; an
export reads a batch of conversations per short transaction, so neither holds the
database (or memory) for the length of a whole file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import Conflict, InvalidInput, NotFound
from storage.models import MODEL_NAME_MAX, Conversation, Rating, User
from storage.repository.base import RepositoryBase
from storage.repository.checks import RATING_VALUES, check_message, check_rating, check_text, check_title, storable
from storage.repository.convert import message_row
from storage.repository.records import ConversationRecord, ImportedConversation, ImportedNode, NewMessage
from storage.tokens import pack_token_ids

EXPORT_BATCH = 50


class TransferStore(RepositoryBase):
    """Import and export of whole conversations (the admin CLI and the page's download)."""

    async def import_conversation(
        self,
        user_id: int,
        *,
        conversation_id: str,
        title: str,
        model: str,
        created_at: datetime,
        updated_at: datetime,
        messages: Sequence[NewMessage],
        tree: Sequence[ImportedNode] | None = None,
        raters: dict[str, int] | None = None,
    ) -> None:
        """Restore one exported conversation exactly, all or nothing (see ``import_conversations``)."""
        await self.import_conversations(
            [ImportedConversation(user_id, conversation_id, title, model, created_at, updated_at, messages, tree)],
            raters=raters,
        )

    async def import_conversations(
        self, conversations: Sequence[ImportedConversation], *, raters: dict[str, int] | None = None
    ) -> None:
        """Restore exported conversations in one transaction: all of them or none.

        Every conversation is checked before anything is written, so a file with one bad
        or already-present chat changes nothing and can be fixed and imported again
        (a half-imported file would make every re-run fail on the chats already in).
        ``raters`` maps the names in ratings to user ids.
        """
        checked = [checked_import(conversation, raters) for conversation in conversations]
        ids = [conversation.conversation_id for conversation, _ in checked]
        if len(set(ids)) != len(ids):
            raise InvalidInput("the file holds the same conversation id twice")
        async with self.database.writer() as session, session.begin():
            for conversation, tree in checked:
                await self._insert_imported(session, conversation, tree, raters or {})

    @staticmethod
    async def _insert_imported(
        session: AsyncSession, conversation: ImportedConversation, tree: Sequence[ImportedNode],
        raters: dict[str, int],
    ) -> None:
        conversation_id = conversation.conversation_id
        if await session.get(User, conversation.user_id) is None:
            raise NotFound(f"no user with id {conversation.user_id}")
        if await session.get(Conversation, conversation_id) is not None:
            raise Conflict(f"conversation {conversation_id} already exists")
        session.add(
            Conversation(
                id=conversation_id,
                user_id=conversation.user_id,
                title=conversation.title,
                model=conversation.model,
                created_at=conversation.created_at,
                updated_at=conversation.updated_at,
            )
        )
        await session.flush()
        ids: dict[int, int] = {}
        for node, message in sorted(zip(tree, conversation.messages, strict=True), key=lambda pair: pair[0].seq):
            row = message_row(
                message, conversation_id, node.seq, pack_token_ids(message.token_ids),
                message.created_at or conversation.created_at,
                parent_id=None if node.parent_seq is None else ids[node.parent_seq], active=node.active,
            )
            session.add(row)
            await session.flush()
            ids[node.seq] = row.id
            for rating in node.ratings:
                session.add(
                    Rating(
                        message_id=row.id,
                        user_id=raters[rating.username],
                        value=RATING_VALUES[rating.value],
                        comment=rating.comment,
                        created_at=rating.created_at,
                        updated_at=rating.updated_at,
                    )
                )

    async def iter_conversations(
        self, user_id: int | None, conversation_id: str | None = None
    ) -> AsyncIterator[ConversationRecord]:
        """Whole conversations for export, oldest first, a batch per short transaction.

        ``user_id=None`` means every user's (the admin CLI). Memory stays bounded by
        one batch however many chats there are.
        """
        if conversation_id is not None and not storable(conversation_id):
            raise NotFound("conversation not found")
        query = select(Conversation.id)
        if user_id is not None:
            query = query.where(Conversation.user_id == user_id)
        if conversation_id is not None:
            query = query.where(Conversation.id == conversation_id)
        async with self.database.reader() as session:
            ids = list(await session.scalars(query.order_by(Conversation.created_at, Conversation.id)))
        if conversation_id is not None and not ids:
            raise NotFound("conversation not found")
        for start in range(0, len(ids), EXPORT_BATCH):
            async with self.database.reader() as session:
                for cid in ids[start : start + EXPORT_BATCH]:
                    conversation = await session.get(Conversation, cid)
                    if conversation is not None:  # deleted since the id list was read
                        yield await self._load_full(session, conversation)


def checked_import(
    conversation: ImportedConversation, raters: dict[str, int] | None
) -> tuple[ImportedConversation, list[ImportedNode]]:
    """Every rule an imported conversation must meet, checked before any write; the cleaned copy and its tree."""
    conversation_id = conversation.conversation_id
    if not isinstance(conversation_id, str) or not 1 <= len(conversation_id) <= 36:
        raise InvalidInput("conversation id must be a string of 1-36 characters")
    check_text(conversation_id, "conversation id")
    title = check_title(conversation.title)
    model = check_text(conversation.model, "model name")[:MODEL_NAME_MAX]
    messages = conversation.messages
    for message in messages:
        check_message(message)
    tree = list(conversation.tree) if conversation.tree is not None else [
        ImportedNode(seq, seq - 1 if seq else None, True) for seq in range(len(messages))
    ]
    if len(tree) != len(messages):
        raise InvalidInput("the tree does not describe every message")
    seqs = [node.seq for node in tree]
    if len(set(seqs)) != len(seqs) or not all(isinstance(seq, int) for seq in seqs):
        raise InvalidInput("message seq numbers must be distinct whole numbers")
    known = set(seqs)
    for node in tree:
        if node.parent_seq is not None and (node.parent_seq not in known or node.parent_seq >= node.seq):
            raise InvalidInput(f"message {node.seq} names a parent ({node.parent_seq}) stored after it or absent")
        for rating in node.ratings:
            check_rating(rating.value, rating.comment)
            if raters is None or rating.username not in raters:
                raise InvalidInput(f"rating by unknown user {rating.username!r}")
    return replace(conversation, title=title, model=model), tree
