"""Every query the app needs: one function, one transaction, always scoped by owner.

Functions return frozen records, never ORM objects, so nothing lazy-loads after
its session is gone and nothing the UI holds can write to the database by accident.
Conversation functions take the owner's user id and filter on it in the same
query that finds the row: another user's conversation is simply "not found".
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, delete, func, literal_column, or_, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.database import Database
from storage.errors import Conflict, InvalidInput, NotFound, SearchTooSlow
from storage.models import (
    MODEL_NAME_MAX,
    RATING_COMMENT_MAX,
    TITLE_MAX,
    USERNAME_MAX,
    Conversation,
    LoginSession,
    Message,
    Rating,
    User,
    utcnow,
)
from storage.search_index import FTS_TABLE, IndexKind, find_index, fts_phrase, titles_only
from storage.tokens import pack_token_ids, unpack_token_ids
from storage.tree import branch, children_of, subtree_ids

ROLES = ("system", "user", "assistant")
USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
EXPORT_BATCH = 50
FINISH_REASON_MAX = 16  # messages.finish_reason is VARCHAR(16)
INT32_MAX = 2**31 - 1  # the counts are INTEGER columns
SEARCH_MAX_CHARS = 100
SEARCH_TIMEOUT_SECONDS = 2.0
# up to this many messages of their own, a user's searches scan them rather than use the index
SCAN_UP_TO_MESSAGES = 5_000
SQLITE_PROGRESS_STEPS = 1_000  # VM steps between deadline checks (a LIKE over a long text is one step)
RATING_VALUES = {"up": 1, "down": -1}
RATING_NAMES = {value: name for name, value in RATING_VALUES.items()}
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


# ---------------------------------------------------------------- validation


def check_text(text: str, what: str = "text") -> str:
    """Refuse strings that cannot be stored as UTF-8 (lone surrogates) or NUL bytes."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInput(
            f"{what} contains invalid Unicode (an unpaired surrogate at position {error.start})"
        ) from None
    if "\x00" in text:
        raise InvalidInput(f"{what} contains a NUL character")
    return text


def _storable(text: str) -> bool:
    """Whether ``text`` can be sent to the database at all; a lookup of anything else finds nothing."""
    try:
        check_text(text)
    except InvalidInput:
        return False
    return True


def check_title(title: str) -> str:
    """A title is one line (it heads a sidebar row and an exported section): runs of
    whitespace, newlines included, become one space."""
    title = " ".join(check_text(title, "title").split())
    if not title:
        raise InvalidInput("title is empty")
    if len(title) > TITLE_MAX:
        raise InvalidInput(f"title is {len(title)} characters long; at most {TITLE_MAX} allowed")
    return title


def check_username(username: str) -> str:
    """The name as stored: NFKC-normalised (fullwidth letters become plain ones), then checked."""
    username = unicodedata.normalize("NFKC", check_text(username, "username")).strip()
    if not 1 <= len(username) <= USERNAME_MAX or not USERNAME_PATTERN.match(username):
        raise InvalidInput(
            f"username must be 1-{USERNAME_MAX} characters of letters, digits and . _ - @, "
            "starting with a letter or digit"
        )
    return username


def username_key(username: str) -> str:
    """What makes two names the same name: Unicode's caseless match (NFKC, casefold, NFKC)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username.strip()).casefold())


def _check_message(message: NewMessage) -> None:
    if message.role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, not {message.role!r}")
    check_text(message.content, "message text")
    if message.finish_reason is not None:
        check_text(message.finish_reason, "finish reason")
        if len(message.finish_reason) > FINISH_REASON_MAX:
            raise InvalidInput(f"finish reason is longer than {FINISH_REASON_MAX} characters")
    for what, value in (
        ("prompt_tokens", message.prompt_tokens),
        ("completion_tokens", message.completion_tokens),
        ("latency_ms", message.latency_ms),
    ):
        if value is not None and (not isinstance(value, int) or not -INT32_MAX - 1 <= value <= INT32_MAX):
            raise InvalidInput(f"{what} must be a whole number that fits 32 bits, not {value!r}")
    if message.params is not None:
        try:
            json.dumps(message.params, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise InvalidInput(f"params cannot be stored as JSON: {error}") from None


# ---------------------------------------------------------------- conversion


def _user_record(user: User) -> UserRecord:
    return UserRecord(user.id, user.username, user.password_hash, user.is_admin, user.created_at)


def _rating_record(rating: Rating, username: str) -> RatingRecord:
    return RatingRecord(
        username, RATING_NAMES.get(rating.value, "up"), rating.comment, rating.created_at, rating.updated_at
    )


def check_rating(value: str, comment: str | None) -> tuple[int, str | None]:
    if value not in RATING_VALUES:
        raise InvalidInput(f"a rating is 'up' or 'down', not {value!r}")
    if comment is not None:
        comment = check_text(comment, "comment").strip() or None
    if comment is not None and len(comment) > RATING_COMMENT_MAX:
        raise InvalidInput(f"the comment is {len(comment)} characters long; at most {RATING_COMMENT_MAX} allowed")
    return RATING_VALUES[value], comment


def _message_record(
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
    )


def _checked_import(
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
        _check_message(message)
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


def _message_row(
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
    )


def _summary(conversation: Conversation, message_count: int = 0) -> ConversationSummary:
    return ConversationSummary(
        conversation.id,
        conversation.title,
        conversation.model,
        conversation.created_at,
        conversation.updated_at,
        message_count,
        bool(conversation.pinned),
    )


class Repository:
    """The storage API. Construct once per process over a :class:`Database`."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._index_kind: IndexKind | Literal["unknown"] | None = "unknown"

    # ------------------------------------------------------------ users

    async def create_user(
        self, username: str, password_hash: str, *, is_admin: bool = False
    ) -> UserRecord:
        username = check_username(username)
        key = username_key(username)
        async with self.database.writer() as session, session.begin():
            taken = await session.scalar(select(User.username).where(User.username_key == key))
            if taken is not None:
                raise Conflict(f"user {username!r} already exists (as {taken!r}: names differing only in case are one)")
            user = User(username=username, username_key=key, password_hash=password_hash, is_admin=is_admin)
            session.add(user)
            try:
                await session.flush()
            except IntegrityError:
                raise Conflict(f"user {username!r} already exists") from None
            return _user_record(user)

    @staticmethod
    async def _find_user(session: AsyncSession, username: str) -> User | None:
        """By the exact name first (two names that clashed before keys existed both stay
        reachable), then by key, so a login in any case or width finds its account."""
        user = await session.scalar(select(User).where(User.username == username))
        if user is None:
            user = await session.scalar(select(User).where(User.username_key == username_key(username)))
        return user

    async def get_user(self, username: str) -> UserRecord:
        if not _storable(username):
            raise NotFound(f"no user named {username!r}")
        async with self.database.reader() as session:
            user = await self._find_user(session, username)
            if user is None:
                raise NotFound(f"no user named {username!r}")
            return _user_record(user)

    async def list_users(self) -> list[UserRecord]:
        async with self.database.reader() as session:
            users = await session.scalars(select(User).order_by(User.username))
            return [_user_record(user) for user in users]

    async def count_users(self) -> int:
        async with self.database.reader() as session:
            return int(await session.scalar(select(func.count()).select_from(User)) or 0)

    async def set_password(self, username: str, password_hash: str) -> None:
        if not _storable(username):
            raise NotFound(f"no user named {username!r}")
        async with self.database.writer() as session, session.begin():
            user = await self._find_user(session, username)
            if user is None:
                raise NotFound(f"no user named {username!r}")
            user_id = user.id
            await session.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))
            # a changed password ends every login made with the old one
            await session.execute(delete(LoginSession).where(LoginSession.user_id == user_id))

    async def delete_user(self, username: str) -> None:
        """Remove a user and (by cascade) all of their conversations."""
        if not _storable(username):
            raise NotFound(f"no user named {username!r}")
        async with self.database.writer() as session, session.begin():
            user = await self._find_user(session, username)
            if user is None:
                raise NotFound(f"no user named {username!r}")
            user_id = user.id
            # explicit, though the foreign key cascades too: no login outlives its user
            await session.execute(delete(LoginSession).where(LoginSession.user_id == user_id))
            await session.execute(delete(User).where(User.id == user_id))

    # ------------------------------------------------------------ login sessions

    async def create_login_session(self, user_id: int, id_hash: str, expires_at: datetime) -> None:
        async with self.database.writer() as session, session.begin():
            if await session.get(User, user_id) is None:
                raise NotFound(f"no user with id {user_id}")
            session.add(LoginSession(id_hash=id_hash, user_id=user_id, expires_at=expires_at))

    async def login_session_user(self, id_hash: str, now: datetime) -> tuple[UserRecord, datetime, datetime]:
        """The user a live login belongs to, when it was made and when it expires; NotFound otherwise."""
        async with self.database.reader() as session:
            row = (
                await session.execute(
                    select(User, LoginSession.created_at, LoginSession.expires_at)
                    .join(LoginSession, LoginSession.user_id == User.id)
                    .where(LoginSession.id_hash == id_hash, LoginSession.expires_at > now)
                )
            ).first()
            if row is None:
                raise NotFound("no such login")
            return _user_record(row[0]), row[1], row[2]

    async def extend_login_session(self, id_hash: str, expires_at: datetime) -> None:
        async with self.database.writer() as session, session.begin():
            await session.execute(
                update(LoginSession).where(LoginSession.id_hash == id_hash).values(expires_at=expires_at)
            )

    async def delete_login_session(self, id_hash: str) -> None:
        async with self.database.writer() as session, session.begin():
            await session.execute(delete(LoginSession).where(LoginSession.id_hash == id_hash))

    async def delete_login_sessions_of(self, user_id: int) -> int:
        async with self.database.writer() as session, session.begin():
            result = await session.execute(delete(LoginSession).where(LoginSession.user_id == user_id))
            return int(result.rowcount or 0)

    async def delete_expired_login_sessions(self, now: datetime) -> int:
        async with self.database.writer() as session, session.begin():
            result = await session.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
            return int(result.rowcount or 0)

    async def change_password(self, user_id: int, password_hash: str, keep_session: str) -> None:
        """A user's own password change: every other login of theirs ends, this one stays."""
        async with self.database.writer() as session, session.begin():
            result = await session.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))
            if result.rowcount == 0:
                raise NotFound(f"no user with id {user_id}")
            await session.execute(
                delete(LoginSession).where(LoginSession.user_id == user_id, LoginSession.id_hash != keep_session)
            )

    # ------------------------------------------------------------ conversations

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
            return _summary(conversation)

    async def _owned(
        self, session: AsyncSession, user_id: int, conversation_id: str, *, lock: bool = False
    ) -> Conversation:
        if not _storable(conversation_id):
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

    async def get_conversation(self, user_id: int, conversation_id: str) -> ConversationRecord:
        async with self.database.reader() as session:
            conversation = await self._owned(session, user_id, conversation_id)
            return await self._load_full(session, conversation)

    async def _load_full(
        self, session: AsyncSession, conversation: Conversation
    ) -> ConversationRecord:
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
                ratings.setdefault(rating.message_id, []).append(_rating_record(rating, rater))
        siblings = children_of(rows)
        records = [
            _message_record(
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
                return [_summary(conversation, count) for conversation, count in rows]
            try:
                async with _statement_deadline(session, SEARCH_TIMEOUT_SECONDS):
                    rows = await session.execute(query)
                    return [_summary(conversation, count) for conversation, count in rows]
            except (OperationalError, DBAPIError) as error:
                if _was_interrupted(error):
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
        pattern = "%" + _escape_like(words) + "%"
        title_matches = Conversation.title.ilike(pattern, escape="\\")
        if titles_only(words):
            return title_matches
        index = await self._search_index(session)
        if index is None or not await self._has_many_messages(session, user_id):
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
        matching_message = select(Message.id).where(Message.conversation_id == Conversation.id, found).exists()
        return or_(title_matches, matching_message)

    async def rename_conversation(self, user_id: int, conversation_id: str, title: str) -> None:
        title = check_title(title)
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id)
            conversation.title = title

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

    # ------------------------------------------------------------ messages

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
            _check_message(message)
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
            row = _message_row(
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
        return [_message_record(row, siblings if index == 0 else ()) for index, row in enumerate(rows)]

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
            _check_message(message)
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
            return _summary(conversation, len(stored)), stored

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
        _check_message(message)
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
                    return _message_record(row)
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

    async def _message_in(self, session: AsyncSession, conversation_id: str, message_id: Any) -> Message:
        if not isinstance(message_id, int) or isinstance(message_id, bool) or not 0 < message_id <= INT32_MAX:
            raise NotFound("message not found")
        row = await session.scalar(
            select(Message).where(Message.id == message_id, Message.conversation_id == conversation_id)
        )
        if row is None:
            raise NotFound("message not found")
        return row

    # ------------------------------------------------------------ ratings

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
            return _rating_record(rating, username or "")

    async def clear_rating(self, user_id: int, conversation_id: str, message_id: int) -> bool:
        """Remove one's rating of a reply; False if there was none."""
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id, lock=True)
            row = await self._message_in(session, conversation.id, message_id)
            result = await session.execute(
                delete(Rating).where(Rating.message_id == row.id, Rating.user_id == user_id)
            )
            return bool(result.rowcount)

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
        checked = [_checked_import(conversation, raters) for conversation in conversations]
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
            row = _message_row(
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

    # ------------------------------------------------------------ export

    async def iter_conversations(
        self, user_id: int | None, conversation_id: str | None = None
    ) -> AsyncIterator[ConversationRecord]:
        """Whole conversations for export, oldest first, a batch per short transaction.

        ``user_id=None`` means every user's (the admin CLI). Memory stays bounded by
        one batch however many chats there are.
        """
        if conversation_id is not None and not _storable(conversation_id):
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


def _depth(nodes: Sequence[Any], node_id: int) -> int:
    parents = {node.id: node.parent_id for node in nodes}
    depth, current = 0, parents.get(node_id)
    while current is not None and depth <= len(parents):
        depth, current = depth + 1, parents.get(current)
    return depth


def check_search(search: str) -> str:
    """The search words, stripped; refused when too long to be a search (costly to match)."""
    wanted = check_text(search, "search").strip()
    if len(wanted) > SEARCH_MAX_CHARS:
        raise InvalidInput(f"the search is {len(wanted):,} characters long; at most {SEARCH_MAX_CHARS} allowed")
    return wanted


@asynccontextmanager
async def _statement_deadline(session: AsyncSession, seconds: float) -> AsyncIterator[None]:
    """Have the database itself stop statements of this session that run past ``seconds``.

    PostgreSQL: ``SET LOCAL statement_timeout`` (ends with the transaction). SQLite has no
    such setting: a progress handler, called every few thousand VM steps on the
    connection's own thread, interrupts the statement once the deadline has passed.
    """
    if session.bind.dialect.name != "sqlite":
        await session.execute(text(f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}"))
        # asyncpg prepares statements: after five runs PostgreSQL may keep a generic plan
        # made when the tables were small (a scan of every message); plan for this user
        await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        yield
        return
    connection = await session.connection()
    raw = (await connection.get_raw_connection()).driver_connection
    deadline = time.monotonic() + seconds

    def past_deadline() -> int:
        return 1 if time.monotonic() > deadline else 0

    await raw.set_progress_handler(past_deadline, SQLITE_PROGRESS_STEPS)
    try:
        yield
    except BaseException:
        # the caller went away (a cancelled search): stop the statement at its next check
        deadline = 0.0
        raise
    finally:
        await raw.set_progress_handler(None, 0)


def _was_interrupted(error: Exception) -> bool:
    """A statement stopped by :func:`_statement_deadline` (SQLite "interrupted", PostgreSQL 57014)."""
    original = getattr(error, "orig", None)
    message = str(original or error).lower()
    code = getattr(original, "sqlstate", None) or getattr(getattr(original, "__cause__", None), "sqlstate", None)
    return "interrupted" in message or code == "57014" or "statement timeout" in message


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
