"""The schema, as SQLAlchemy 2 typed ORM classes.

The migrations in ``migrations/versions`` create exactly this (a test compares them
with Alembic's autogenerate), so the two can never drift apart unnoticed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

USERNAME_MAX = 64
USERNAME_KEY_MAX = 80  # a name's key, or for names that clashed before keys existed, key#id
TITLE_MAX = 200
MODEL_NAME_MAX = 200
SESSION_HASH_LENGTH = 64  # hex SHA-256
RATING_COMMENT_MAX = 200
AUDIT_DETAIL_MAX = 200


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite keeps no offset, so without this a value read back is naive and no longer
    compares equal to the one written (an export/import round trip would drift).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; storage keeps UTC-aware times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    __table_args__ = (Index("ix_users_username_key", "username_key", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX), unique=True)
    # the name as compared: NFKC + casefold, so "Admin" and "ＡＤＭＩＮ" are taken once "admin" is
    # (see storage.repository.username_key); unique, and what logins look names up by
    username_key: Mapped[str] = mapped_column(String(USERNAME_KEY_MAX))
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    conversations: Mapped[list[Conversation]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )


class LoginSession(Base):
    """One browser's login. Only a SHA-256 of the random cookie value is stored, so a
    copy of the database cannot be used to log in; the row is bound to the user's id
    (not the name), so a removed and re-added name never inherits old logins."""

    __tablename__ = "login_sessions"
    __table_args__ = (Index("ix_login_sessions_user", "user_id"),)

    id_hash: Mapped[str] = mapped_column(String(SESSION_HASH_LENGTH), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_user_updated", "user_id", "updated_at"),
        # the sidebar's order: pinned chats first, then the most recently active
        Index("ix_conversations_user_pinned_updated", "user_id", "pinned", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(TITLE_MAX))
    model: Mapped[str] = mapped_column(String(MODEL_NAME_MAX))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")

    user: Mapped[User] = relationship(back_populates="conversations")
    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation",
        order_by="Message.seq",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class Message(Base):
    """One message, a node of its conversation's tree.

    ``seq`` is the order of storing (unique per chat), not the position on screen:
    the chat on screen is the path from a root (``parent_id`` None) following the
    ``active`` child at each step. Siblings (same parent) are the versions of a turn:
    a Retry adds a sibling reply, an edit a sibling user message.
    """

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_seq"),
        Index("ix_messages_parent", "parent_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    # little-endian uint32 blob, see storage/tokens.py
    token_ids: Mapped[bytes] = mapped_column(LargeBinary)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE", name="fk_messages_parent_id_messages"), nullable=True
    )
    # the version shown among its siblings (exactly one per parent, see storage/tree.py)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # the model whose weights wrote it (or whose tokenizer encoded it), and the variant used (migration 0009)
    model: Mapped[str | None] = mapped_column(String(MODEL_NAME_MAX), nullable=True)
    variant: Mapped[str | None] = mapped_column(String(MODEL_NAME_MAX), nullable=True)

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class Rating(Base):
    """A tester's judgment of one reply version: up (+1) or down (-1), with an optional short comment."""

    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("message_id", "user_id", name="uq_ratings_message_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    value: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(String(RATING_COMMENT_MAX), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AdminAudit(Base):
    """One admin action (who, what, on whom, when), kept for the admin page.

    Names, not user ids: the record of removing a user must outlive that user (and
    an admin removed later stays named in what they did).
    """

    __tablename__ = "admin_audit"
    __table_args__ = (Index("ix_admin_audit_created", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(USERNAME_MAX))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(USERNAME_MAX))
    detail: Mapped[str] = mapped_column(String(AUDIT_DETAIL_MAX), default="")


SHARE_ID_MAX = 64


class ShareLink(Base):
    """A link a tester handed out to a frozen copy of one chat (the copy: :class:`ShareSnapshot`).

    The id is random (``secrets.token_urlsafe``), never derived from the chat's id, so a
    link cannot be guessed from anything a tester sees. The source chat may be deleted
    later (its id becomes NULL) without touching what was shared; a revoked link keeps
    its row, so it can say it was revoked, but loses its snapshot.
    """

    __tablename__ = "share_links"
    __table_args__ = (
        Index("ix_share_links_user_created", "user_id", "created_at"),
        Index("ix_share_links_conversation", "conversation_id"),
    )

    id: Mapped[str] = mapped_column(String(SHARE_ID_MAX), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    conversation_id: Mapped[str | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), nullable=True
    )
    title: Mapped[str] = mapped_column(String(TITLE_MAX))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ShareSnapshot(Base):
    """What a share link shows: the branch on screen when it was shared, token ids included, as JSON."""

    __tablename__ = "share_snapshots"

    link_id: Mapped[str] = mapped_column(ForeignKey("share_links.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(MODEL_NAME_MAX))
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


BATTLE_ID_MAX = 36
BATTLE_FLAG_MAX = 200
WINNER_MAX = 16


class Battle(Base):
    """A blind battle: two models answer one tester's prompts in two chats, then one vote.

    ``model_a`` / ``model_b`` are the sides as the page showed them (left, right). The
    vote (``winner``: FastChat's ``model_a`` / ``model_b`` / ``tie`` / ``tie (bothbad)``)
    is set once, with ``sides``: both chats as they were voted on (the same message JSON
    as a share's snapshot), so the vote, its export and its preference pair stay whole
    when a chat is later deleted. ``flag`` says why a battle was not blind (a reply named
    a model): its vote is kept and exported but left out of the leaderboard.
    """

    __tablename__ = "battles"
    __table_args__ = (
        Index("ix_battles_user_created", "user_id", "created_at"),
        Index("ix_battles_voted", "voted_at"),
        Index("ix_battles_conversation_a", "conversation_a"),
        Index("ix_battles_conversation_b", "conversation_b"),
    )

    id: Mapped[str] = mapped_column(String(BATTLE_ID_MAX), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    model_a: Mapped[str] = mapped_column(String(MODEL_NAME_MAX))
    model_b: Mapped[str] = mapped_column(String(MODEL_NAME_MAX))
    conversation_a: Mapped[str | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), nullable=True
    )
    conversation_b: Mapped[str | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    winner: Mapped[str | None] = mapped_column(String(WINNER_MAX), nullable=True)
    voted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    flag: Mapped[str | None] = mapped_column(String(BATTLE_FLAG_MAX), nullable=True)
    sides: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
