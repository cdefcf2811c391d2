"""A conversation's messages: a tree whose siblings are versions of one turn, one of them shown.

Appends to one conversation queue behind its row lock; a reply is stored idempotently
so a replayed journal entry never duplicates it; undo removes a whole subtree.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import InvalidInput, NotFound
from storage.models import MODEL_NAME_MAX, Conversation, Message, Rating, User, utcnow
from storage.repository.base import RepositoryBase
from storage.repository.checks import check_message, check_text, check_title
from storage.repository.convert import conversation_summary, message_record, message_row
from storage.repository.records import LEAF, ConversationSummary, MessageRecord, NewMessage
from storage.tokens import pack_token_ids
from storage.tree import branch, subtree_ids


class MessageStore(RepositoryBase):
    """The ``messages`` table: append, reply, undo, and which version of a turn is on screen."""

    async def append_message(
        self, user_id: int, conversation_id: str, message: NewMessage, *, parent_id: int | None = LEAF
    ) -> MessageRecord:
        """Append at the end of the branch on screen (or below ``parent_id``); concurrent appends queue."""
        return (await self.append_messages(user_id, conversation_id, [message], parent_id=parent_id))[0]

    async def append_messages(
        self, user_id: int, conversation_id: str, messages: Sequence[NewMessage], *, parent_id: int | None = LEAF
    ) -> list[MessageRecord]:
        """Append a chain of messages in one transaction (all or none).

        ``parent_id``: the message the first one answers or follows (``LEAF``: the last
        message of the branch on screen; ``None``: a new root, i.e. a new version of
        the chat's first message). The first new message becomes the shown version
        among its siblings, so the branch on screen ends with the new messages.
        """
        for message in messages:
            check_message(message)
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id, lock=True)
            if not messages:
                return []
            nodes = await self._nodes(session, conversation.id)
            if parent_id == LEAF:
                path = branch(nodes)
                parent_id = path[-1].id if path else None
            elif parent_id is not None and not any(node.id == parent_id for node in nodes):
                raise NotFound("message not found")
            return await self._insert_chain(session, conversation, messages, parent_id, nodes)

    @staticmethod
    async def _nodes(session: AsyncSession, conversation_id: str) -> list[Any]:
        """The tree's shape (id, seq, parent_id, active) without the texts."""
        rows = await session.execute(
            select(Message.id, Message.seq, Message.parent_id, Message.active)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.seq)
        )
        return list(rows)

    async def _insert_chain(
        self,
        session: AsyncSession,
        conversation: Conversation,
        messages: Sequence[NewMessage],
        parent_id: int | None,
        nodes: Sequence[Any],
    ) -> list[MessageRecord]:
        first_seq = max((node.seq for node in nodes), default=-1) + 1
        now = utcnow()
        rows: list[Message] = []
        for seq, message in enumerate(messages, start=first_seq):
            row = message_row(
                message, conversation.id, seq, pack_token_ids(message.token_ids), message.created_at or now,
                parent_id=parent_id if not rows else None, active=True,
            )
            if rows:
                await session.flush()
                row.parent_id = rows[-1].id
            session.add(row)
            rows.append(row)
        await session.flush()
        await self._show_only(session, conversation.id, rows[0])
        conversation.updated_at = max(now, *(row.created_at for row in rows))
        siblings = (*(node.id for node in nodes if node.parent_id == parent_id), rows[0].id)
        return [message_record(row, siblings if index == 0 else ()) for index, row in enumerate(rows)]

    @staticmethod
    async def _show_only(session: AsyncSession, conversation_id: str, row: Any) -> None:
        """Make ``row`` the shown version: it becomes active, its siblings inactive."""
        same_parent = Message.parent_id.is_(None) if row.parent_id is None else Message.parent_id == row.parent_id
        await session.execute(
            update(Message)
            .where(Message.conversation_id == conversation_id, same_parent)
            .values(active=(Message.id == row.id))
            .execution_options(synchronize_session=False)
        )

    async def start_conversation(
        self, user_id: int, title: str, model: str, messages: Sequence[NewMessage]
    ) -> tuple[ConversationSummary, list[MessageRecord]]:
        """A new chat and its first messages in one transaction.

        A crash can never leave a chat titled after a message that was not stored.
        """
        title = check_title(title)
        model = check_text(model, "model name")[:MODEL_NAME_MAX]
        for message in messages:
            check_message(message)
        now = utcnow()
        async with self.database.writer() as session, session.begin():
            if await session.get(User, user_id) is None:
                raise NotFound(f"no user with id {user_id}")
            conversation = Conversation(
                id=str(uuid.uuid4()), user_id=user_id, title=title, model=model, created_at=now, updated_at=now
            )
            session.add(conversation)
            await session.flush()
            stored = await self._insert_chain(session, conversation, messages, None, []) if messages else []
            return conversation_summary(conversation, len(stored)), stored

    async def put_reply(
        self, user_id: int, conversation_id: str, message: NewMessage, *, after_seq: int, replace: bool = False
    ) -> MessageRecord:
        """Store a reply to the message at ``after_seq``: idempotent, so a replay never duplicates.

        The reply becomes a child of that message and the shown version; earlier
        replies to it (a Retry's old versions) stay as siblings, so the old reply is
        kept whether or not the new one is ever stored. ``message.created_at`` is
        required and, with role and text, identifies the reply: if it is already
        among that message's children (an earlier attempt committed before its
        confirmation was lost) that row is returned. ``replace`` is what the journal
        recorded for a Retry; it no longer deletes anything.
        """
        del replace
        if message.created_at is None:
            raise InvalidInput("a reply needs its created_at to be stored idempotently")
        check_message(message)
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id, lock=True)
            parent = await session.scalar(
                select(Message).where(Message.conversation_id == conversation.id, Message.seq == after_seq)
            )
            if parent is None:
                raise NotFound("the message this reply answers is gone")
            nodes = await self._nodes(session, conversation.id)
            for row in await session.scalars(select(Message).where(Message.parent_id == parent.id)):
                if (row.role, row.content, row.created_at) == (message.role, message.content, message.created_at):
                    return message_record(row)
            return (await self._insert_chain(session, conversation, [message], parent.id, nodes))[0]

    async def delete_messages_from(self, user_id: int, conversation_id: str, seq: int) -> int:
        """Drop the message at ``seq`` and everything below it (undo); returns how many went.

        If it was the version on screen and it has other versions, the newest of
        them is shown instead.
        """
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id, lock=True)
            nodes = await self._nodes(session, conversation.id)
            target = next((node for node in nodes if node.seq == seq), None)
            conversation.updated_at = utcnow()
            if target is None:
                return 0
            doomed = subtree_ids(nodes, target.id)
            await session.execute(delete(Rating).where(Rating.message_id.in_(doomed)))
            # children first: the self-referencing key must never point at a deleted row
            by_depth = sorted(doomed, key=lambda node_id: -_depth(nodes, node_id))
            for node_id in by_depth:
                await session.execute(delete(Message).where(Message.id == node_id))
            remaining = [node for node in nodes if node.parent_id == target.parent_id and node.id not in doomed]
            if target.active and remaining:
                await self._show_only(session, conversation.id, remaining[-1])
            return len(doomed)

    async def show_version(self, user_id: int, conversation_id: str, message_id: int) -> None:
        """Put this version of its turn on screen (and, below it, the versions last shown there)."""
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id, lock=True)
            row = await self._message_in(session, conversation.id, message_id)
            await self._show_only(session, conversation.id, row)


def _depth(nodes: Sequence[Any], node_id: int) -> int:
    """How many ancestors ``node_id`` has (bounded, so a malformed cycle cannot loop forever)."""
    parents = {node.id: node.parent_id for node in nodes}
    depth, current = 0, parents.get(node_id)
    while current is not None and depth <= len(parents):
        depth, current = depth + 1, parents.get(current)
    return depth
