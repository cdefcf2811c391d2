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
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.database import Database
from storage.errors import Conflict, InvalidInput, NotFound, SearchTooSlow
from storage.models import (
    MODEL_NAME_MAX,
    TITLE_MAX,
    USERNAME_MAX,
    Conversation,
    LoginSession,
    Message,
    User,
    utcnow,
)
from storage.tokens import pack_token_ids, unpack_token_ids

ROLES = ("system", "user", "assistant")
USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
EXPORT_BATCH = 50
FINISH_REASON_MAX = 16  # messages.finish_reason is VARCHAR(16)
INT32_MAX = 2**31 - 1  # the counts are INTEGER columns
SEARCH_MAX_CHARS = 100
SEARCH_TIMEOUT_SECONDS = 2.0
SQLITE_PROGRESS_STEPS = 1_000  # VM steps between deadline checks (a LIKE over a long text is one step)


@dataclass(frozen=True)
class UserRecord:
    id: int
    username: str
    password_hash: str
    is_admin: bool
    created_at: datetime


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
    messages: list[MessageRecord] = field(default_factory=list)

    def token_history(self) -> list[int]:
        """All stored ids in order: exactly what the model saw so far."""
        return [token for message in self.messages for token in message.token_ids]


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
    title = check_text(title, "title").strip()
    if not title:
        raise InvalidInput("title is empty")
    if len(title) > TITLE_MAX:
        raise InvalidInput(f"title is {len(title)} characters long; at most {TITLE_MAX} allowed")
    return title


def check_username(username: str) -> str:
    username = check_text(username, "username").strip()
    if not 1 <= len(username) <= USERNAME_MAX or not USERNAME_PATTERN.match(username):
        raise InvalidInput(
            f"username must be 1-{USERNAME_MAX} characters of letters, digits and . _ - @, "
            "starting with a letter or digit"
        )
    return username


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


def _message_record(message: Message) -> MessageRecord:
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

    # ------------------------------------------------------------ users

    async def create_user(
        self, username: str, password_hash: str, *, is_admin: bool = False
    ) -> UserRecord:
        username = check_username(username)
        async with self.database.writer() as session, session.begin():
            user = User(username=username, password_hash=password_hash, is_admin=is_admin)
            session.add(user)
            try:
                await session.flush()
            except IntegrityError:
                raise Conflict(f"user {username!r} already exists") from None
            return _user_record(user)

    async def get_user(self, username: str) -> UserRecord:
        if not _storable(username):
            raise NotFound(f"no user named {username!r}")
        async with self.database.reader() as session:
            user = await session.scalar(select(User).where(User.username == username))
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
            user_id = await session.scalar(select(User.id).where(User.username == username))
            if user_id is None:
                raise NotFound(f"no user named {username!r}")
            await session.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))
            # a changed password ends every login made with the old one
            await session.execute(delete(LoginSession).where(LoginSession.user_id == user_id))

    async def delete_user(self, username: str) -> None:
        """Remove a user and (by cascade) all of their conversations."""
        if not _storable(username):
            raise NotFound(f"no user named {username!r}")
        async with self.database.writer() as session, session.begin():
            user_id = await session.scalar(select(User.id).where(User.username == username))
            if user_id is None:
                raise NotFound(f"no user named {username!r}")
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
        messages = await session.scalars(
            select(Message)
            .where(Message.conversation_id == conversation.id)
            .order_by(Message.seq)
        )
        username = await session.scalar(select(User.username).where(User.id == conversation.user_id))
        return ConversationRecord(
            id=conversation.id,
            user_id=conversation.user_id,
            username=username or "",
            title=conversation.title,
            model=conversation.model,
            created_at=conversation.created_at,
            updated_at=conversation.updated_at,
            messages=[_message_record(message) for message in messages],
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
        if searching:
            assert search is not None
            pattern = "%" + _escape_like(check_search(search)) + "%"
            matching_message = (
                select(Message.id)
                .where(Message.conversation_id == Conversation.id, Message.content.ilike(pattern, escape="\\"))
                .exists()
            )
            query = query.where(or_(Conversation.title.ilike(pattern, escape="\\"), matching_message))
        order = [Conversation.updated_at.desc(), Conversation.id]
        if pinned_first:
            order.insert(0, Conversation.pinned.desc())
        query = query.order_by(*order).limit(limit).offset(offset)
        async with self.database.reader() as session:
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
        self, user_id: int, conversation_id: str, message: NewMessage
    ) -> MessageRecord:
        """Append at the next sequence number; concurrent appends queue, none is lost."""
        return (await self.append_messages(user_id, conversation_id, [message]))[0]

    async def append_messages(
        self, user_id: int, conversation_id: str, messages: Sequence[NewMessage]
    ) -> list[MessageRecord]:
        """Append several messages in one transaction (all or none)."""
        for message in messages:
            _check_message(message)
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id, lock=True)
            if not messages:
                return []
            return await self._insert_after_last(session, conversation, messages)

    async def _insert_after_last(
        self, session: AsyncSession, conversation: Conversation, messages: Sequence[NewMessage]
    ) -> list[MessageRecord]:
        last = await session.scalar(select(func.max(Message.seq)).where(Message.conversation_id == conversation.id))
        return await self._insert_at(session, conversation, messages, 0 if last is None else last + 1)

    async def _insert_at(
        self, session: AsyncSession, conversation: Conversation, messages: Sequence[NewMessage], first_seq: int
    ) -> list[MessageRecord]:
        now = utcnow()
        rows = []
        for seq, message in enumerate(messages, start=first_seq):
            row = Message(
                conversation_id=conversation.id,
                seq=seq,
                role=message.role,
                content=message.content,
                token_ids=pack_token_ids(message.token_ids),
                params=message.params,
                finish_reason=message.finish_reason,
                prompt_tokens=message.prompt_tokens,
                completion_tokens=message.completion_tokens,
                latency_ms=message.latency_ms,
                created_at=message.created_at or now,
            )
            session.add(row)
            rows.append(row)
        conversation.updated_at = max(now, *(row.created_at for row in rows))
        await session.flush()
        return [_message_record(row) for row in rows]

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
            stored = await self._insert_at(session, conversation, messages, 0) if messages else []
            return _summary(conversation, len(stored)), stored

    async def put_reply(
        self, user_id: int, conversation_id: str, message: NewMessage, *, after_seq: int, replace: bool = False
    ) -> MessageRecord:
        """Store a reply to the message at ``after_seq``: idempotent, so a replay never duplicates.

        ``message.created_at`` is required and, with role and text, identifies the
        reply: if it is already among the messages after ``after_seq`` (an earlier
        attempt committed before its confirmation was lost) that row is returned.
        ``replace`` (Retry) swaps the messages after ``after_seq`` for this one in
        the same transaction, so the old reply stays until the new one is stored.
        """
        if message.created_at is None:
            raise InvalidInput("a reply needs its created_at to be stored idempotently")
        _check_message(message)
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id, lock=True)
            later = list(
                await session.scalars(
                    select(Message)
                    .where(Message.conversation_id == conversation.id, Message.seq > after_seq)
                    .order_by(Message.seq)
                )
            )
            for row in later:
                if (row.role, row.content, row.created_at) == (message.role, message.content, message.created_at):
                    return _message_record(row)
            if replace:
                await session.execute(
                    delete(Message).where(Message.conversation_id == conversation.id, Message.seq > after_seq)
                )
                return (await self._insert_at(session, conversation, [message], after_seq + 1))[0]
            return (await self._insert_after_last(session, conversation, [message]))[0]

    async def delete_messages_from(self, user_id: int, conversation_id: str, seq: int) -> int:
        """Drop the messages at ``seq`` and after (undo, retry); returns how many went."""
        async with self.database.writer() as session, session.begin():
            conversation = await self._owned(session, user_id, conversation_id, lock=True)
            result = await session.execute(
                delete(Message).where(Message.conversation_id == conversation.id, Message.seq >= seq)
            )
            conversation.updated_at = utcnow()
            return int(result.rowcount or 0)

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
    ) -> None:
        """Restore an exported conversation exactly (ids, times, token ids), all or nothing."""
        if not isinstance(conversation_id, str) or not 1 <= len(conversation_id) <= 36:
            raise InvalidInput("conversation id must be a string of 1-36 characters")
        check_text(conversation_id, "conversation id")
        title = check_title(title)
        model = check_text(model, "model name")[:MODEL_NAME_MAX]
        for message in messages:
            _check_message(message)
        packed = [pack_token_ids(message.token_ids) for message in messages]
        async with self.database.writer() as session, session.begin():
            if await session.get(User, user_id) is None:
                raise NotFound(f"no user with id {user_id}")
            if await session.get(Conversation, conversation_id) is not None:
                raise Conflict(f"conversation {conversation_id} already exists")
            session.add(
                Conversation(
                    id=conversation_id,
                    user_id=user_id,
                    title=title,
                    model=model,
                    created_at=created_at,
                    updated_at=updated_at,
                )
            )
            await session.flush()
            for seq, (message, blob) in enumerate(zip(messages, packed, strict=True)):
                session.add(
                    Message(
                        conversation_id=conversation_id,
                        seq=seq,
                        role=message.role,
                        content=message.content,
                        token_ids=blob,
                        params=message.params,
                        finish_reason=message.finish_reason,
                        prompt_tokens=message.prompt_tokens,
                        completion_tokens=message.completion_tokens,
                        latency_ms=message.latency_ms,
                        created_at=message.created_at or created_at,
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
