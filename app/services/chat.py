"""ChatService: what a tester can do, with every rule enforced in one place.

It composes storage and the engine and knows nothing of Gradio, so the UI only
wires buttons to these methods and the same rules hold for the browser and for
anyone calling the API directly. Every method takes the username from the login
(never from the client) and resolves conversation ids through the repository's
owner-scoped queries: someone else's chat is indistinguishable from a missing one.

Durability: a user's message is committed before its reply is queued (a new chat
and its first message in one transaction), and the reply is committed when it
ends for any reason (done, stopped, disconnected, failed, server stopping) with
that reason. A reply the database does not accept goes to the local journal
(storage/journal.py) and is written later: what a tester saw is what gets stored.
Retry replaces the old reply only when the new one is stored. A reply lost to a
crash leaves the user message alone at the end of the chat; ``open`` reports it as
interrupted and ``retry`` redoes it.

Database faults reach testers as one sentence (:class:`Unavailable`); the driver's
text, which may quote SQL and the tester's own message, stays in the server log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import shutil
import tempfile
import time
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncio_throttle import Throttler

from app.engine import (
    Engine,
    EngineBusy,
    EngineStopped,
    GenerationResult,
    GenerationStream,
    InvalidParams,
    PromptFormat,
    PromptTooLong,
    SamplingParams,
    Turn,
)
from app.engine.detokenize import shown_prefix
from app.services.errors import (
    CANNOT_READ,
    CANNOT_SAVE,
    Busy,
    ChatError,
    ConversationNotFound,
    MessageNotFound,
    RateLimited,
    database_faults,
)
from app.services.export_formats import FILE_SUFFIX, write_export
from app.services.limits import SearchGate
from storage.errors import InvalidInput, NotFound, SearchTooSlow, StorageUnavailable
from storage.journal import Journal, PendingReply
from storage.models import utcnow
from storage.repository import (
    LEAF,
    ConversationRecord,
    ConversationSummary,
    MessageRecord,
    NewMessage,
    RatingRecord,
    Repository,
)
from storage.tree import path_to

log = logging.getLogger(__name__)

TITLE_LENGTH = 60
WAIT_FOR_RESULT_SECONDS = 10.0
EXPORT_FILES_KEPT_SECONDS = 3600
ALLOWED_CONTROL_CHARACTERS = {"\n", "\t", "\r"}


@dataclass(frozen=True)
class ChatOptions:
    """Per-message settings from the UI's settings panel (validated by SamplingParams)."""

    system_prompt: str = ""
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int | None = None

    def sampling(self, max_allowed: int) -> SamplingParams:
        for name, value in (("Temperature", self.temperature), ("Top p", self.top_p),
                            ("Max new tokens", self.max_new_tokens)):
            # NaN, infinity, text or nothing from an API client: one sentence, not Python's words
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ChatError(f"{name} must be a finite number; got {str(value)[:20]!r}.")
        if not 1 <= int(self.max_new_tokens) <= max_allowed:
            raise ChatError(f"Max new tokens must be between 1 and {max_allowed}.")
        try:
            return SamplingParams(
                temperature=float(self.temperature),
                top_p=float(self.top_p),
                max_new_tokens=int(self.max_new_tokens),
                seed=self.seed,
            )
        except (InvalidParams, TypeError, ValueError) as error:
            raise ChatError(f"Invalid setting: {error}") from None


@dataclass(frozen=True)
class ChatEvent:
    """One update for the UI while a reply is produced.

    kind: ``conversation`` (the chat id, first for a new chat), ``waiting`` (requests
    ahead in ``position``, replies being generated in ``running``), ``text`` (the reply
    so far), ``done`` (``message`` holds the stored reply).
    """

    kind: str
    conversation_id: str
    text: str = ""
    position: int | None = None
    message: MessageRecord | None = None
    running: int = 0


@dataclass
class _Reply:
    """What a reply has produced so far and where it goes, so any ending can persist it; and its Stop switch."""

    stream: GenerationStream
    user_id: int
    conversation_id: str
    after_seq: int  # the user message it answers
    replace: bool = False  # Retry: supersedes what follows ``after_seq``
    text: str = ""
    started: float = field(default_factory=time.perf_counter)
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)


def with_pending(conversation: ConversationRecord, pending: list[PendingReply]) -> ConversationRecord:
    """The chat as the tester saw it: stored messages plus replies still waiting in the journal.

    A waiting reply becomes the shown version below the message it answers, as it
    will once stored; one answering a message off the branch on screen is not shown.
    """
    messages = list(conversation.messages)
    next_seq = max((m.seq for m in conversation.all_messages()), default=-1) + 1
    for entry in pending:
        position = next((i for i, m in enumerate(messages) if m.seq == entry.after_seq), None)
        if position is None:
            continue
        messages = messages[: position + 1]
        messages.append(entry.as_record(next_seq))
        next_seq += 1
    return dataclasses.replace(conversation, messages=messages)


def interrupted(conversation: ConversationRecord) -> bool:
    """A chat whose last message is a user message never got its reply (crash, restart)."""
    return bool(conversation.messages) and conversation.messages[-1].role == "user"


def valid_text(text: str) -> str:
    """Model output as storable, sendable text: a lone surrogate (which UTF-8 cannot carry,
    so it would break the stream and the database write) becomes U+FFFD; pairs are joined."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def check_message_text(text: Any, max_chars: int) -> str:
    if not isinstance(text, str):
        raise ChatError("The message must be text.")
    if not text.strip():
        raise ChatError("Type a message first: it is empty.")
    if len(text) > max_chars:
        raise ChatError(f"The message is {len(text):,} characters long; the limit is {max_chars:,}. Shorten it.")
    for char in text:
        if unicodedata.category(char) == "Cc" and char not in ALLOWED_CONTROL_CHARACTERS:
            raise ChatError(f"The message contains a control character (U+{ord(char):04X}); remove it.")
        if unicodedata.category(char) == "Cs":
            raise ChatError("The message contains invalid Unicode (an unpaired surrogate).")
    return text


def options_of(conversation: ConversationRecord) -> ChatOptions:
    """The settings a chat was last used with: its system prompt and its last message's sampling.

    Every user message stores the sampling parameters it was sent with, so a chat's
    settings live with the chat without a column of their own.
    """
    system = next((m.content for m in conversation.messages if m.role == "system"), "")
    for message in reversed(conversation.messages):
        if message.role == "user" and message.params:
            params = message.params
            try:
                return ChatOptions(
                    system, float(params["temperature"]), float(params["top_p"]), int(params["max_new_tokens"])
                )
            except (KeyError, TypeError, ValueError):
                break
    return ChatOptions(system)


def title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


class ChatService:
    def __init__(
        self,
        repository: Repository,
        engine: Engine,
        prompt_format: PromptFormat,
        model_name: str,
        *,
        max_input_chars: int = 8000,
        max_new_tokens: int = 1024,
        rate_limit: int = 10,
        rate_period: float = 60.0,
        export_dir: Path | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.repository = repository
        self.journal = journal or Journal(None)
        self._active_replies = 0
        self._no_active_replies = asyncio.Event()
        self._no_active_replies.set()
        self.engine = engine
        self.prompt_format = prompt_format
        self.model_name = model_name
        self.max_input_chars = max_input_chars
        self.max_new_tokens = max_new_tokens
        self.rate_limit = rate_limit
        self.rate_period = rate_period
        self._throttlers: dict[str, Throttler] = {}
        self._searches = SearchGate()
        # replies being generated, by conversation id: one at a time per chat
        self._live: dict[str, _Reply] = {}
        self.export_dir = export_dir or Path(tempfile.mkdtemp(prefix="chat-exports-"))

    # ------------------------------------------------------------ identity

    async def user_id(self, username: str | None) -> int:
        """Looked up on every call (one indexed query), so a user removed by the CLI is gone at once."""
        if not username:
            raise ChatError("Please log in.")
        try:
            with database_faults(CANNOT_READ):
                return (await self.repository.get_user(username)).id
        except NotFound:
            raise ChatError("Your account no longer exists; ask an admin.") from None

    async def _throttle(self, username: str) -> None:
        """Refuse, rather than delay, a message over the per-user rate.

        asyncio-throttle's ``acquire`` returns at once while under the limit and
        otherwise waits; a short timeout turns that wait into a clear refusal.
        """
        throttler = self._throttlers.setdefault(username, Throttler(self.rate_limit, self.rate_period))
        try:
            async with asyncio.timeout(0.05):
                await throttler.acquire()
        except TimeoutError:
            raise RateLimited(
                f"Slow down: at most {self.rate_limit} messages per {self.rate_period:g} seconds. "
                "Your message was not sent; try again shortly."
            ) from None

    # ------------------------------------------------------------ reading

    async def list_conversations(
        self, username: str | None, search: str = "", limit: int = 100, offset: int = 0
    ) -> list[ConversationSummary]:
        user_id = await self.user_id(username)
        try:
            with database_faults(CANNOT_READ):
                if not (search and search.strip()):
                    return await self.repository.list_conversations(user_id, limit=limit, offset=offset)
                async with self._searches.turn(username or ""):
                    return await self.repository.list_conversations(user_id, limit=limit, offset=offset, search=search)
        except InvalidInput as error:
            raise ChatError(f"Cannot search: {error}.") from None
        except SearchTooSlow as error:
            raise ChatError(str(error)) from None

    async def last_options(self, username: str | None) -> ChatOptions | None:
        """The settings of the user's most recently active chat: the defaults for a new one."""
        user_id = await self.user_id(username)
        latest = await self.repository.list_conversations(user_id, limit=1, pinned_first=False)
        if not latest:
            return None
        try:
            conversation = await self.repository.get_conversation(user_id, latest[0].id)
        except NotFound:
            return None
        return options_of(conversation)

    def live_text(self, conversation: ConversationRecord) -> str | None:
        """The reply being generated in this (already opened, so owned) chat, or None."""
        reply = self._live.get(conversation.id)
        if reply is None or reply.user_id != conversation.user_id:
            return None
        return reply.text

    async def stop(self, username: str | None, conversation_id: str | None) -> bool:
        """Stop the reply being generated in this chat at once; False if none was running.

        The engine is told immediately; the reply's own stream stops showing text at
        once and stores what was generated, marked stopped.
        """
        user_id = await self.user_id(username)
        reply = self._live.get(conversation_id or "")
        if reply is None or reply.user_id != user_id:
            return False
        reply.stop_requested.set()
        reply.stream.cancel()
        return True

    def _refuse_if_replying(self, conversation_id: str | None) -> None:
        if conversation_id and conversation_id in self._live:
            raise ChatError("A reply is still being written in this chat: wait for it, or press Stop.")

    async def open(self, username: str | None, conversation_id: str) -> ConversationRecord:
        user_id = await self.user_id(username)
        if not isinstance(conversation_id, str) or not conversation_id:
            raise ConversationNotFound()
        try:
            with database_faults(CANNOT_READ):
                conversation = await self.repository.get_conversation(user_id, conversation_id)
        except NotFound:
            raise ConversationNotFound() from None
        return with_pending(conversation, self.journal.pending_for(conversation.id))

    async def _settle(self, conversation_id: str) -> None:
        """Before a chat changes, its replies waiting in the journal must be stored (order matters)."""
        if self.journal.pending_for(conversation_id):
            with database_faults(CANNOT_SAVE):
                await self.journal.replay(self.repository, conversation_id)

    # ------------------------------------------------------------ changing

    async def rename(self, username: str | None, conversation_id: str, title: str) -> None:
        user_id = await self.user_id(username)
        try:
            with database_faults(CANNOT_SAVE):
                await self.repository.rename_conversation(user_id, conversation_id, title)
        except NotFound:
            raise ConversationNotFound() from None
        except InvalidInput as error:
            raise ChatError(f"Cannot rename: {error}.") from None

    async def pin(self, username: str | None, conversation_id: str, pinned: bool) -> None:
        """Keep a chat at the top of the list (or let it go back to its place by time)."""
        user_id = await self.user_id(username)
        try:
            with database_faults(CANNOT_SAVE):
                await self.repository.set_pinned(user_id, conversation_id, pinned)
        except NotFound:
            raise ConversationNotFound() from None

    async def delete(self, username: str | None, conversation_id: str) -> None:
        user_id = await self.user_id(username)
        await self.stop(username, conversation_id)
        try:
            with database_faults(CANNOT_SAVE):
                await self.repository.delete_conversation(user_id, conversation_id)
        except NotFound:
            raise ConversationNotFound() from None

    async def undo(self, username: str | None, conversation_id: str) -> ConversationRecord | None:
        """Remove the last exchange on screen (the last user message and everything below it).

        Other versions of that message stay; the newest of them is shown instead.

        Undoing a chat's only exchange deletes the chat (None is returned): an empty
        chat titled after a message that no longer exists would only mislead.
        """
        conversation = await self.open(username, conversation_id)
        self._refuse_if_replying(conversation.id)
        user_messages = [m for m in conversation.messages if m.role == "user"]
        if not user_messages:
            raise ChatError("Nothing to undo.")
        await self._settle(conversation.id)
        try:
            with database_faults(CANNOT_SAVE):
                if len(user_messages) == 1 and user_messages[0].version_count == 1:
                    await self.repository.delete_conversation(conversation.user_id, conversation.id)
                    return None
                await self.repository.delete_messages_from(conversation.user_id, conversation.id, user_messages[-1].seq)
        except NotFound:
            raise ConversationNotFound() from None
        return await self.open(username, conversation_id)

    # ------------------------------------------------------------ chatting

    async def send(
        self, username: str | None, conversation_id: str | None, text: str, options: ChatOptions
    ) -> AsyncIterator[ChatEvent]:
        """Post a message and stream the reply. Refusals raise ChatError before anything is stored."""
        user_id = await self.user_id(username)
        text = check_message_text(text, self.max_input_chars)
        params = options.sampling(self.max_new_tokens)
        if conversation_id:
            conversation = await self.open(username, conversation_id)
            self._refuse_if_replying(conversation.id)
        else:
            conversation = None
        self._check_capacity()
        await self._throttle(username or "")

        history = [] if conversation is None else self._history_turns(conversation)
        history_texts = [] if conversation is None else [(m.role, m.content) for m in conversation.messages]
        new_messages: list[NewMessage] = []
        system_prompt = options.system_prompt.strip()
        if conversation is None and system_prompt:
            check_message_text(system_prompt, self.max_input_chars)
            system_ids = self.prompt_format.system_turn(system_prompt)
            new_messages.append(NewMessage("system", system_prompt, system_ids))
            history.append(Turn("system", system_ids))
            history_texts.append(("system", system_prompt))
        if conversation is not None and interrupted(conversation):
            # close the reply that never came, so the history stays well formed
            closing = self.prompt_format.assistant_turn([])
            new_messages.append(NewMessage("assistant", "", closing, finish_reason="interrupted"))
            history.append(Turn("assistant", closing))
            history_texts.append(("assistant", ""))
        user_ids = self.prompt_format.user_turn(history_texts, text)
        try:
            window = self.prompt_format.build_prompt(history, user_ids, params.max_new_tokens)
        except PromptTooLong as error:
            raise ChatError(str(error)) from None
        new_messages.append(NewMessage("user", text, user_ids, params=params.to_dict()))

        try:
            with database_faults(CANNOT_SAVE):
                if conversation is None:
                    summary, stored = await self.repository.start_conversation(
                        user_id, title_from(text), self.model_name, new_messages
                    )
                    conversation_id = summary.id
                else:
                    await self._settle(conversation.id)
                    # below the message the prompt was built from (a reply that waited in the
                    # journal is stored by now as the shown version: the end of the branch)
                    leaf = conversation.messages[-1] if conversation.messages else None
                    parent = LEAF if leaf is None or leaf.pending else leaf.id
                    stored = await self.repository.append_messages(
                        user_id, conversation.id, new_messages, parent_id=parent
                    )
        except NotFound:
            raise ConversationNotFound() from None
        except InvalidInput as error:
            raise ChatError(f"Cannot store this message: {error}.") from None
        assert conversation_id is not None
        yield ChatEvent("conversation", conversation_id)
        first_new_seq = stored[0].seq
        try:
            stream = await self.engine.submit(window.token_ids, params)
        except (EngineBusy, EngineStopped) as error:
            # nothing may be left half-done: the message goes back to the tester
            with contextlib.suppress(StorageUnavailable, NotFound):
                if conversation is None:
                    await self.repository.delete_conversation(user_id, conversation_id)
                else:
                    await self.repository.delete_messages_from(user_id, conversation_id, first_new_seq)
            raise Busy(f"The model is busy right now ({error}). Your message was kept; send it again.") from None
        reply = _Reply(stream, user_id, conversation_id, after_seq=stored[-1].seq)
        async for event in self._stream_reply(reply, params, window.dropped_turns):
            yield event

    async def retry(self, username: str | None, conversation_id: str, options: ChatOptions) -> AsyncIterator[ChatEvent]:
        """Generate a new version of the reply to the last user message on screen (also after an interrupted reply).

        The old reply stays stored as an earlier version (and is what a crash leaves);
        the new one becomes the version on screen when it is stored.
        """
        user_id = await self.user_id(username)
        params = options.sampling(self.max_new_tokens)
        conversation = await self.open(username, conversation_id)
        messages = conversation.messages
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
        if last_user is None:
            raise ChatError("There is no message to retry yet.")
        self._refuse_if_replying(conversation.id)
        self._check_capacity()
        await self._throttle(username or "")
        await self._settle(conversation.id)
        turns = self._history_turns(conversation)[: last_user + 1]
        try:
            window = self.prompt_format.build_prompt(turns[:-1], turns[-1].token_ids, params.max_new_tokens)
        except PromptTooLong as error:
            raise ChatError(str(error)) from None
        try:
            stream = await self.engine.submit(window.token_ids, params)
        except (EngineBusy, EngineStopped) as error:
            raise Busy(f"The model is busy right now ({error}). Press Retry again in a moment.") from None
        yield ChatEvent("conversation", conversation_id)
        reply = _Reply(stream, user_id, conversation.id, after_seq=messages[last_user].seq, replace=True)
        async for event in self._stream_reply(reply, params, window.dropped_turns):
            yield event

    async def edit(
        self, username: str | None, conversation_id: str, message_id: Any, text: str, options: ChatOptions
    ) -> AsyncIterator[ChatEvent]:
        """Send a new version of one of the user's messages and stream the reply to it.

        The new message is a sibling of the edited one (same parent), so the old
        message and everything that followed it stay as the other branch. The prompt
        is the stored ids along the path to that parent plus the new message.
        """
        user_id = await self.user_id(username)
        text = check_message_text(text, self.max_input_chars)
        params = options.sampling(self.max_new_tokens)
        conversation = await self.open(username, conversation_id)
        target = self.stored_message(conversation, message_id)
        if target.role != "user":
            raise ChatError("Only your own messages can be edited.")
        self._refuse_if_replying(conversation.id)
        self._check_capacity()
        await self._throttle(username or "")
        await self._settle(conversation.id)
        path = [] if target.parent_id is None else path_to(conversation.all_messages(), target.parent_id)
        history = self._history_turns(dataclasses.replace(conversation, messages=path))
        user_ids = self.prompt_format.user_turn([(m.role, m.content) for m in path], text)
        try:
            window = self.prompt_format.build_prompt(history, user_ids, params.max_new_tokens)
        except PromptTooLong as error:
            raise ChatError(str(error)) from None
        message = NewMessage("user", text, user_ids, params=params.to_dict())
        try:
            with database_faults(CANNOT_SAVE):
                stored = await self.repository.append_messages(
                    user_id, conversation.id, [message], parent_id=target.parent_id
                )
        except NotFound:
            raise MessageNotFound() from None
        except InvalidInput as error:
            raise ChatError(f"Cannot store this message: {error}.") from None
        yield ChatEvent("conversation", conversation.id)
        try:
            stream = await self.engine.submit(window.token_ids, params)
        except (EngineBusy, EngineStopped) as error:
            with contextlib.suppress(StorageUnavailable, NotFound):
                await self.repository.delete_messages_from(user_id, conversation.id, stored[0].seq)
            raise Busy(f"The model is busy right now ({error}). Your edit was not kept; try again.") from None
        reply = _Reply(stream, user_id, conversation.id, after_seq=stored[0].seq)
        async for event in self._stream_reply(reply, params, window.dropped_turns):
            yield event

    async def show_version(self, username: str | None, conversation_id: str, message_id: Any) -> ConversationRecord:
        """Put another version of a turn on screen; the chat continues from it. Returns the chat as shown now."""
        conversation = await self.open(username, conversation_id)
        message = self.stored_message(conversation, message_id)
        self._refuse_if_replying(conversation.id)
        try:
            with database_faults(CANNOT_SAVE):
                await self.repository.show_version(conversation.user_id, conversation.id, message.id)
        except NotFound:
            raise MessageNotFound() from None
        return await self.open(username, conversation_id)

    @staticmethod
    def stored_message(conversation: ConversationRecord, message_id: Any) -> MessageRecord:
        """A message of this (owned) chat by id; anything else is "not found", like a missing one."""
        if isinstance(message_id, str) and message_id.strip().isdigit():
            message_id = int(message_id)
        if isinstance(message_id, float) and message_id.is_integer():
            message_id = int(message_id)
        found = next(
            (m for m in conversation.all_messages() if m.id == message_id and not m.pending and m.id > 0), None
        )
        if found is None or isinstance(message_id, bool):
            raise MessageNotFound()
        return found

    def shown_message(self, conversation: ConversationRecord, position: int) -> MessageRecord:
        """The message at ``position`` of the branch on screen, refusing what cannot be rated yet."""
        if not isinstance(position, int) or position < 0:
            raise MessageNotFound()
        if position < len(conversation.messages):
            message = conversation.messages[position]
            if message.pending:
                raise ChatError("This reply is still being saved; rate it once it is stored.")
            return message
        if position == len(conversation.messages) and self.live_text(conversation) is not None:
            raise ChatError("This reply is still being written; rate it when it is done.")
        raise MessageNotFound()

    async def rate(
        self,
        username: str | None,
        conversation_id: str,
        message_id: Any,
        value: str | None,
        comment: str | None = None,
    ) -> RatingRecord | None:
        """Rate a reply "up" or "down" (a second call changes it); ``value`` None or "" clears it.

        Returns the rating as stored (None once cleared). Only the chat's owner can
        rate its replies: another user's message id is "not found".
        """
        conversation = await self.open(username, conversation_id)
        message = self.stored_message(conversation, message_id)
        if message.role != "assistant" or (message.finish_reason == "interrupted" and not message.content):
            raise ChatError("Only the model's replies can be rated.")
        if comment is not None and not isinstance(comment, str):
            raise ChatError("The comment must be text.")
        try:
            with database_faults(CANNOT_SAVE):
                if not value:
                    await self.repository.clear_rating(conversation.user_id, conversation.id, message.id)
                    return None
                return await self.repository.set_rating(
                    conversation.user_id, conversation.id, message.id, value, comment
                )
        except NotFound:
            raise MessageNotFound() from None
        except InvalidInput as error:
            raise ChatError(f"Cannot rate: {error}.") from None

    async def comment(
        self, username: str | None, conversation_id: str, message_id: Any, comment: str
    ) -> RatingRecord:
        """Add or change the short comment of one's rating of a reply (rate first)."""
        conversation = await self.open(username, conversation_id)
        message = self.stored_message(conversation, message_id)
        if message.rating is None:
            raise ChatError("Rate the reply first (👍 or 👎), then add a comment.")
        rating = await self.rate(username, conversation_id, message.id, message.rating.value, comment)
        assert rating is not None
        return rating

    async def replies_settled(self, max_seconds: float) -> bool:
        """Wait until every reply under way has been stored (or journaled); False on timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_seconds):
                await self._no_active_replies.wait()
                return True
        return False

    def _check_capacity(self) -> None:
        stats = self.engine.stats()
        if not stats.accepting:
            raise Busy("The server is shutting down; try again in a minute.")
        if stats.waiting >= stats.max_queue:
            raise Busy(
                f"The model is busy ({stats.running} replies running, {stats.waiting} waiting). "
                "Your message was not sent; try again in a moment."
            )

    def _history_turns(self, conversation: ConversationRecord) -> list[Turn]:
        """The stored token history; re-encoded from text only when it cannot be trusted.

        Ids made by another model (or imported without ids) mean nothing to this
        tokenizer, so then, and only then, the text is re-encoded.
        """
        messages = conversation.messages
        trusted = conversation.model == self.model_name and all(
            m.token_ids or (not m.content and m.role != "user") for m in messages
        )
        if trusted:
            return [Turn(m.role, m.token_ids) for m in messages]
        log.info("conversation %s re-encoded from text for %s", conversation.id, self.model_name)
        ids = self.prompt_format.reencode([(m.role, m.content) for m in messages])
        return [Turn(m.role, turn_ids) for m, turn_ids in zip(messages, ids, strict=True)]

    async def _stream_reply(
        self, reply: _Reply, params: SamplingParams, dropped_turns: int
    ) -> AsyncIterator[ChatEvent]:
        ending = "error"
        ended_here = False  # True only when no exception is on its way out (yielding is allowed)
        self._live[reply.conversation_id] = reply
        self._active_replies += 1
        self._no_active_replies.clear()
        try:
            async for event in self._reply_events(reply.conversation_id, reply):
                yield event
            ending = "stopped" if reply.stop_requested.is_set() else "done"
            ended_here = True
        except asyncio.CancelledError:
            ending = "stopped"  # the Stop button cancels the handler
            raise
        except GeneratorExit:
            ending = "disconnected"  # the tab was closed or the client went away
            raise
        finally:
            reply.stream.cancel()
            storing = asyncio.ensure_future(self._persist_reply(reply, params, dropped_turns, ending))
            storing.add_done_callback(self._reply_settled)
            try:
                message = await asyncio.shield(storing)
            finally:
                if self._live.get(reply.conversation_id) is reply:
                    del self._live[reply.conversation_id]
            if ended_here and message is not None:
                yield ChatEvent("done", reply.conversation_id, text=message.content, message=message)

    def _reply_settled(self, _storing: asyncio.Future[MessageRecord | None]) -> None:
        self._active_replies -= 1
        if not self._active_replies:
            self._no_active_replies.set()

    async def _reply_events(self, conversation_id: str, reply: _Reply) -> AsyncIterator[ChatEvent]:
        """Stream text events; while queued, report the queue position every half second.

        A Stop ends the events at once (not at the engine's next step), so nothing
        more is shown after the click.
        """
        iterator = reply.stream.__aiter__()
        next_delta: asyncio.Task[str] | None = None
        stopping = asyncio.ensure_future(reply.stop_requested.wait())
        try:
            while True:
                if next_delta is None:
                    next_delta = asyncio.ensure_future(iterator.__anext__())
                done, _ = await asyncio.wait({next_delta, stopping}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    yield ChatEvent("stopped", conversation_id, text=reply.text)
                    return
                if not done:
                    position = reply.stream.queue_position
                    if position is not None:
                        running = self.engine.stats().running
                        yield ChatEvent("waiting", conversation_id, text=reply.text, position=position, running=running)
                    continue
                try:
                    delta = next_delta.result()
                except StopAsyncIteration:
                    return
                finally:
                    next_delta = None
                reply.text += valid_text(delta)
                yield ChatEvent("text", conversation_id, text=reply.text)
        finally:
            stopping.cancel()
            if next_delta is not None:
                next_delta.cancel()

    async def _persist_reply(
        self, reply: _Reply, params: SamplingParams, dropped_turns: int, ending: str
    ) -> MessageRecord | None:
        """Store the reply as it ended; if the database refuses, keep it in the journal.

        Returns the stored message, or the journaled one marked ``pending``.
        """
        result = reply.stream.result
        if result is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT_FOR_RESULT_SECONDS):
                    result = await reply.stream.final()
        finish_reason = self._finish_reason(result, ending)
        generated = result.token_ids if result is not None else []
        text = valid_text(result.text) if result is not None else reply.text
        if ending == "stopped" and generated:
            # what was on screen at the click is what is stored, not tokens made after it
            shown = shown_prefix(self.prompt_format.tokenizer, list(generated), reply.text)
            if shown is not None:
                generated, text = shown
        details: dict[str, Any] = params.to_dict()
        if result is not None:
            if result.time_to_first_token is not None:
                details["time_to_first_token_ms"] = round(result.time_to_first_token * 1000)
            if result.error:
                details["error"] = result.error
        if dropped_turns:
            details["dropped_turns"] = dropped_turns
        message = NewMessage(
            role="assistant",
            content=text,
            token_ids=self.prompt_format.assistant_turn(generated),
            params=details,
            finish_reason=finish_reason,
            prompt_tokens=None if result is None else result.prompt_tokens,
            completion_tokens=len(generated),
            latency_ms=round((time.perf_counter() - reply.started) * 1000),
            created_at=utcnow(),  # with role and text, what makes a replay recognisable
        )
        try:
            if self.journal.pending_for(reply.conversation_id):
                # earlier replies of this chat wait: this one may not overtake them
                await self.journal.replay(self.repository, reply.conversation_id)
            return await self.repository.put_reply(
                reply.user_id, reply.conversation_id, message, after_seq=reply.after_seq, replace=reply.replace
            )
        except NotFound:
            log.info("conversation %s was deleted while its reply streamed", reply.conversation_id)
            return None
        except InvalidInput:
            log.exception("the reply in %s cannot be stored", reply.conversation_id)
            return None
        except Exception as error:  # StorageUnavailable, or anything else: keep it and try again
            if not isinstance(error, StorageUnavailable):
                log.exception("could not store the reply in %s; it goes to the journal", reply.conversation_id)
            entry = PendingReply(reply.user_id, reply.conversation_id, reply.after_seq, message, reply.replace)
            await self.journal.add(entry)
            log.warning("reply in %s kept in the journal (%d waiting)", reply.conversation_id, self.journal.backlog)
            return entry.as_record(reply.after_seq + 1)

    @staticmethod
    def _finish_reason(result: GenerationResult | None, ending: str) -> str:
        if ending in ("stopped", "disconnected"):
            return ending
        if result is None:
            return "error"
        if result.finish_reason == "cancelled":
            # nobody pressed Stop or left: the engine itself cut it, which it does only when shutting down
            return "shutdown" if ending == "done" else "stopped"
        return result.finish_reason

    # ------------------------------------------------------------ export

    def _remove_old_exports(self) -> None:
        """Gradio copies a returned file into its own cache; our copy is only needed briefly."""
        cutoff = time.time() - EXPORT_FILES_KEPT_SECONDS
        for folder in self.export_dir.glob("*"):
            with contextlib.suppress(OSError):
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)

    async def export(self, username: str | None, fmt: str, conversation_id: str | None = None) -> Path:
        """Write an export file of one chat or all of the user's chats; returns its path."""
        user_id = await self.user_id(username)
        if fmt not in FILE_SUFFIX:
            raise ChatError(f"Unknown export format {fmt!r}.")
        if conversation_id is not None:
            await self.open(username, conversation_id)  # ownership check, same error as unknown
        await asyncio.to_thread(self._remove_old_exports)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"chat-{conversation_id[:8]}-{stamp}" if conversation_id else f"all-chats-{username}-{stamp}"
        folder = Path(tempfile.mkdtemp(dir=self.export_dir))
        path = folder / (name + FILE_SUFFIX[fmt])
        conversations = self.repository.iter_conversations(user_id, conversation_id)
        with database_faults(CANNOT_READ), path.open("w", encoding="utf-8") as out:
            await write_export(conversations, out, fmt)
        return path
