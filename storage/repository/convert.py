"""Between ORM rows and records: rows become frozen records on the way out, new messages
become rows on the way in (one place, so a stored chat and an imported one are built alike)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from storage.models import MODEL_NAME_MAX, Conversation, Message, Rating, User
from storage.repository.checks import RATING_NAMES
from storage.repository.records import ConversationSummary, MessageRecord, NewMessage, RatingRecord, UserRecord
from storage.tokens import unpack_token_ids


def user_record(user: User) -> UserRecord:
    return UserRecord(user.id, user.username, user.password_hash, user.is_admin, user.created_at)


def rating_record(rating: Rating, username: str) -> RatingRecord:
    return RatingRecord(
        username, RATING_NAMES.get(rating.value, "up"), rating.comment, rating.created_at, rating.updated_at
    )


def message_record(
    message: Message,
    versions: tuple[int, ...] = (),
    ratings: tuple[RatingRecord, ...] = (),
    owner: str | None = None,
) -> MessageRecord:
    return MessageRecord(
        id=message.id,
        seq=message.seq,
        role=message.role,
        content=message.content,
        token_ids=unpack_token_ids(message.token_ids),
        params=message.params,
        finish_reason=message.finish_reason,
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        latency_ms=message.latency_ms,
        created_at=message.created_at,
        parent_id=message.parent_id,
        active=bool(message.active),
        versions=versions if len(versions) > 1 else (),
        rating=next((r for r in ratings if r.username == owner), None),
        ratings=ratings,
        model=message.model,
        variant=message.variant,
    )


def message_row(
    message: NewMessage, conversation_id: str, seq: int, token_blob: bytes, created_at: datetime,
    *, parent_id: int | None, active: bool,
) -> Message:
    """The row for a new message: one place, so a stored chat and an imported one are built alike."""
    return Message(
        conversation_id=conversation_id,
        seq=seq,
        role=message.role,
        content=message.content,
        token_ids=token_blob,
        params=message.params,
        finish_reason=message.finish_reason,
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        latency_ms=message.latency_ms,
        created_at=created_at,
        parent_id=parent_id,
        active=active,
        model=message.model[:MODEL_NAME_MAX] if message.model else None,
        variant=message.variant[:MODEL_NAME_MAX] if message.variant else None,
    )


def conversation_summary(conversation: Conversation, message_count: int = 0) -> ConversationSummary:
    return ConversationSummary(
        conversation.id,
        conversation.title,
        conversation.model,
        conversation.created_at,
        conversation.updated_at,
        message_count,
        bool(conversation.pinned),
    )


def message_json(message: NewMessage | MessageRecord) -> dict[str, Any]:
    """A message's own fields as JSON, the way the journal and a share's snapshot both keep them
    (token ids as a list, the time as ISO text, None when not yet given)."""
    return {
        "role": message.role,
        "content": message.content,
        "token_ids": list(message.token_ids),
        "params": message.params,
        "finish_reason": message.finish_reason,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "latency_ms": message.latency_ms,
        "created_at": message.created_at.isoformat() if message.created_at else None,
        "model": message.model,
        "variant": message.variant,
    }
