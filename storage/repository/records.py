"""The records storage hands out and takes in: frozen, so nothing the UI holds can write back.

Functions return these, never ORM objects, so nothing lazy-loads after its session is gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

LEAF = -1  # append_messages(parent_id=LEAF): after the last message of the branch on screen


@dataclass(frozen=True)
class UserRecord:
    id: int
    username: str
    password_hash: str
    is_admin: bool
    created_at: datetime


@dataclass(frozen=True)
class RatingRecord:
    """One user's judgment of one reply version: ``value`` is "up" or "down"."""

    username: str
    value: str
    comment: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class MessageRecord:
    id: int
    seq: int
    role: str
    content: str
    token_ids: list[int]
    params: dict[str, Any] | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int | None
    created_at: datetime
    # kept in the local journal, not yet in the database (see storage/journal.py)
    pending: bool = False
    parent_id: int | None = None
    active: bool = True
    # the ids of this turn's versions (siblings, itself included) in storing order; () = only one
    versions: tuple[int, ...] = ()
    rating: RatingRecord | None = None  # the chat owner's rating
    ratings: tuple[RatingRecord, ...] = ()  # everyone's (for exports)
    model: str | None = None  # the model that wrote it (None: imported or journaled without one)
    variant: str | None = None  # the variant of that model, if one was used

    @property
    def version(self) -> int:
        """1-based position among the versions (1 when there is only one)."""
        return self.versions.index(self.id) + 1 if self.id in self.versions else 1

    @property
    def version_count(self) -> int:
        return max(1, len(self.versions))


@dataclass(frozen=True)
class ConversationSummary:
    id: str
    title: str
    model: str
    created_at: datetime
    updated_at: datetime
    message_count: int = 0
    pinned: bool = False


@dataclass(frozen=True)
class ConversationRecord:
    id: str
    user_id: int
    username: str
    title: str
    model: str
    created_at: datetime
    updated_at: datetime
    # the branch on screen, root to leaf
    messages: list[MessageRecord] = field(default_factory=list)
    # every message of every branch, in storing order (empty: same as ``messages``)
    tree: list[MessageRecord] = field(default_factory=list)

    def all_messages(self) -> list[MessageRecord]:
        return self.tree or self.messages

    def token_history(self) -> list[int]:
        """All stored ids along the branch on screen: exactly what the model saw so far."""
        return [token for message in self.messages for token in message.token_ids]


@dataclass(frozen=True)
class ImportedNode:
    """Where an imported message sits in its tree (by seq) and who rated it."""

    seq: int
    parent_seq: int | None
    active: bool
    ratings: tuple[RatingRecord, ...] = ()


@dataclass(frozen=True)
class ImportedConversation:
    """One exported conversation to restore exactly: ids, times, token ids, versions, ratings.

    ``tree`` gives, per message, its seq, its parent's seq, whether it is shown and its
    ratings; ``None`` makes the messages one branch in order.
    """

    user_id: int
    conversation_id: str
    title: str
    model: str
    created_at: datetime
    updated_at: datetime
    messages: Sequence[NewMessage]
    tree: Sequence[ImportedNode] | None = None


@dataclass(frozen=True)
class NewMessage:
    """What a caller supplies to append a message; storage assigns id, seq and time."""

    role: str
    content: str
    token_ids: Sequence[int] = ()
    params: dict[str, Any] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int | None = None
    created_at: datetime | None = None
    model: str | None = None  # the model that wrote it (its weights), and the variant, if one was used
    variant: str | None = None

