"""Sending, retrying and editing: the three ways a tester asks the model for a reply.

All three pass the same way in (:meth:`RepliesMixin._admit`: not while this chat is
replying, not when the engine's queue is full, not over the tester's rate, and the
chat's journaled replies stored first) and meet the engine's refusals through the
same mapping (:func:`engine_refusal`), whose sentence says what to do next for that
action. Durability: a user's message is committed before its reply is queued (a new
chat and its first message in one transaction); if the engine then refuses, what was
stored for the request is removed again, so nothing is left half-done.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal

from app.engine import (
    ChatEngine,
    EngineBusy,
    EngineStopped,
    GenerationStream,
    PromptTooLong,
    PromptWindow,
    SamplingParams,
    Turn,
)
from app.services.errors import (
    CANNOT_SAVE,
    Busy,
    ChatError,
    ConversationNotFound,
    MessageNotFound,
    RateLimited,
    database_faults,
)
from app.services.events import ChatEvent
from app.services.history import history_turns
from app.services.judgments import JudgmentsMixin, stored_message
from app.services.observer import BUSY, RATE_LIMITED
from app.services.persist import LiveReply
from app.services.rules import ChatOptions, check_message_text, interrupted, title_from
from app.services.served_models import ServedModel
from storage.errors import InvalidInput, NotFound, StorageUnavailable
from storage.repository import LEAF, ConversationRecord, MessageRecord, NewMessage
from storage.tree import path_to

Action = Literal["send", "retry", "edit"]

# what a tester should do when the engine is busy, which differs with what they asked for
BUSY_NEXT_STEP: dict[Action, str] = {
    "send": "Your message was kept; send it again.",
    "retry": "Press Retry again in a moment.",
    "edit": "Your edit was not kept; try again.",
}


def engine_refusal(action: Action, error: PromptTooLong | EngineBusy | EngineStopped) -> ChatError:
    """The tester's sentence for an engine refusal: a prompt that cannot fit, or a busy or stopping engine."""
    if isinstance(error, PromptTooLong):
        return ChatError(str(error))
    return Busy(f"The model is busy right now ({error}). {BUSY_NEXT_STEP[action]}")


def check_capacity(engine: ChatEngine, model_label: str | None = None) -> None:
    """Refuse before anything is stored or counted against the rate when the engine cannot take more.

    ``model_label`` is given when the server offers several models: then an engine that
    takes nothing is that model being down (the others serve), and the sentence names it.
    """
    stats = engine.stats()
    if not stats.accepting and model_label is not None:
        raise Busy(f"The model {model_label} is unavailable right now; pick another model or try again in a minute.")
    if not stats.accepting:
        raise Busy("The server is shutting down; try again in a minute.")
    if stats.waiting >= stats.max_queue:
        raise Busy(
            f"The model is busy ({stats.running} replies running, {stats.waiting} waiting). "
            "Your message was not sent; try again in a moment."
        )


@contextlib.contextmanager
def storing_messages(not_found: Callable[[], ChatError]) -> Iterator[None]:
    """Storing the tester's new message(s): a vanished chat or message is ``not_found``."""
    try:
        with database_faults(CANNOT_SAVE):
            yield
    except NotFound:
        raise not_found() from None
    except InvalidInput as error:
        raise ChatError(f"Cannot store this message: {error}.") from None


class RepliesMixin(JudgmentsMixin):
    """Send, Retry, Edit and Stop, and the reply under way that the page shows while it is written."""

    # ------------------------------------------------------------ asking for a reply

    async def send(
        self, username: str | None, conversation_id: str | None, text: str, options: ChatOptions
    ) -> AsyncIterator[ChatEvent]:
        """Post a message and stream the reply. Refusals raise ChatError before anything is stored."""
        user_id = await self.user_id(username)
        text = check_message_text(text, self.max_input_chars)
        params = options.sampling(self.max_new_tokens)
        conversation = await self.open(username, conversation_id, in_battle=options.battle) if conversation_id else None
        model = self._model_for(conversation, options.model)
        await self._admit(username, conversation, model)
        history, user_ids, new_messages = self._outgoing(
            conversation, text, options.system_prompt.strip(), params, model
        )
        window = self._prompt_window("send", history, user_ids, params, model)
        chat_id, stored = await self._store_sent(user_id, conversation, text, new_messages, model)
        yield ChatEvent("conversation", chat_id)

        def take_back() -> Awaitable[object]:
            if conversation is None:
                return self.repository.delete_conversation(user_id, chat_id)
            return self.repository.delete_messages_from(user_id, chat_id, stored[0].seq)

        stream = await self._queue("send", window, params, model, take_back)
        reply = self._live_reply(model, stream, user_id, chat_id, after_seq=stored[-1].seq)
        async for event in self._live.stream(reply, params, window.dropped_turns):
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
        model = self._model_for(conversation, options.model)
        await self._admit(username, conversation, model)
        turns = history_turns(conversation, model, self.models)[: last_user + 1]
        window = self._prompt_window("retry", turns[:-1], turns[-1].token_ids, params, model)
        stream = await self._queue("retry", window, params, model)
        yield ChatEvent("conversation", conversation_id)
        reply = self._live_reply(model, stream, user_id, conversation.id, after_seq=messages[last_user].seq,
                                 replace=True)
        async for event in self._live.stream(reply, params, window.dropped_turns):
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
        target = stored_message(conversation, message_id)
        if target.role != "user":
            raise ChatError("Only your own messages can be edited.")
        model = self._model_for(conversation, options.model)
        await self._admit(username, conversation, model)
        path = [] if target.parent_id is None else path_to(conversation.all_messages(), target.parent_id)
        history = history_turns(dataclasses.replace(conversation, messages=path), model, self.models)
        user_ids = model.prompt_format.user_turn([(m.role, m.content) for m in path], text)
        window = self._prompt_window("edit", history, user_ids, params, model)
        message = NewMessage("user", text, user_ids, params=params.to_dict(), **model.stamp())
        with storing_messages(MessageNotFound):
            stored = await self.repository.append_messages(
                user_id, conversation.id, [message], parent_id=target.parent_id
            )
        yield ChatEvent("conversation", conversation.id)

        def take_back() -> Awaitable[object]:
            return self.repository.delete_messages_from(user_id, conversation.id, stored[0].seq)

        stream = await self._queue("edit", window, params, model, take_back)
        reply = self._live_reply(model, stream, user_id, conversation.id, after_seq=stored[0].seq)
        async for event in self._live.stream(reply, params, window.dropped_turns):
            yield event

    # ------------------------------------------------------------ the reply under way

    def live_text(self, conversation: ConversationRecord) -> str | None:
        """The reply being generated in this (already opened, so owned) chat, or None."""
        return self._live.text_of(conversation)

    async def stop(self, username: str | None, conversation_id: str | None) -> bool:
        """Stop the reply being generated in this chat at once; False if none was running.

        The engine is told immediately; the reply's own stream stops showing text at
        once and stores what was generated, marked stopped.
        """
        user_id = await self.user_id(username)
        return self._live.stop(user_id, conversation_id)

    async def replies_settled(self, max_seconds: float) -> bool:
        """Wait until every reply under way has been stored (or journaled); False on timeout."""
        return await self._live.settled(max_seconds)

    # ------------------------------------------------------------ shared steps

    def _model_for(self, conversation: ConversationRecord | None, picked: str) -> ServedModel:
        """Which model writes the next reply: the one picked (checked against the registry here,
        never trusted from the page), else the chat's own, else the default.

        A chat whose model is no longer offered continues with the default, as a chat
        always has after the server changed models (its prompt re-encoded from text).
        """
        if picked:
            return self.models.get(picked)
        if conversation is not None and conversation.model in self.models:
            return self.models.get(conversation.model)
        return self.models.default

    @staticmethod
    def _live_reply(model: ServedModel, stream: GenerationStream, user_id: int, chat_id: str, *,
                    after_seq: int, replace: bool = False) -> LiveReply:
        return LiveReply(stream, user_id, chat_id, after_seq=after_seq, replace=replace, served=model)

    async def _admit(self, username: str | None, conversation: ConversationRecord | None, model: ServedModel) -> None:
        """The one way in for Send, Retry and Edit, before anything is stored or queued.

        Not while this chat is still replying; not when the engine could not take the
        request anyway (checked before the rate, so a refusal costs no message); not
        over the tester's rate; and the chat's replies waiting in the journal are
        stored first, so the new turn comes after them.
        """
        if conversation is not None:
            self._live.refuse_if_replying(conversation.id)
        try:
            check_capacity(model.engine, model.label if len(self.models) > 1 else None)
            await self._message_throttle.admit(username or "")
        except (Busy, RateLimited) as refusal:
            self.observer.reply_refused(BUSY if isinstance(refusal, Busy) else RATE_LIMITED)
            raise
        if conversation is not None:
            await self._settle(conversation.id)

    def _outgoing(
        self, conversation: ConversationRecord | None, text: str, system_prompt: str, params: SamplingParams,
        model: ServedModel,
    ) -> tuple[list[Turn], list[int], list[NewMessage]]:
        """For a message sent to ``conversation`` (None: a new chat): the prompt's history, the new
        user turn's ids and the messages to store (system prompt first in a new chat)."""
        history = [] if conversation is None else history_turns(conversation, model, self.models)
        history_texts = [] if conversation is None else [(m.role, m.content) for m in conversation.messages]
        new_messages: list[NewMessage] = []
        if conversation is None and system_prompt:
            check_message_text(system_prompt, self.max_input_chars)
            system_ids = model.prompt_format.system_turn(system_prompt)
            new_messages.append(NewMessage("system", system_prompt, system_ids, **model.stamp()))
            history.append(Turn("system", system_ids))
            history_texts.append(("system", system_prompt))
        if conversation is not None and interrupted(conversation):
            # close the reply that never came, so the history stays well formed
            closing = model.prompt_format.assistant_turn([])
            new_messages.append(NewMessage("assistant", "", closing, finish_reason="interrupted", **model.stamp()))
            history.append(Turn("assistant", closing))
            history_texts.append(("assistant", ""))
        user_ids = model.prompt_format.user_turn(history_texts, text)
        new_messages.append(NewMessage("user", text, user_ids, params=params.to_dict(), **model.stamp()))
        return history, user_ids, new_messages

    async def _store_sent(
        self, user_id: int, conversation: ConversationRecord | None, text: str, new_messages: list[NewMessage],
        model: ServedModel,
    ) -> tuple[str, list[MessageRecord]]:
        """Commit a sent message before its reply is queued; a new chat and its first message in one transaction."""
        with storing_messages(ConversationNotFound):
            if conversation is None:
                summary, stored = await self.repository.start_conversation(
                    user_id, title_from(text), model.name, new_messages
                )
                return summary.id, stored
            # below the message the prompt was built from (a reply that waited in the
            # journal is stored by now as the shown version: the end of the branch)
            leaf = conversation.messages[-1] if conversation.messages else None
            parent = LEAF if leaf is None or leaf.pending else leaf.id
            stored = await self.repository.append_messages(user_id, conversation.id, new_messages, parent_id=parent)
            if conversation.model != model.name:  # the chat continues with the model picked for it
                await self.repository.set_conversation_model(user_id, conversation.id, model.name)
            return conversation.id, stored

    def _prompt_window(
        self, action: Action, history: Sequence[Turn], new_turn: Sequence[int], params: SamplingParams,
        model: ServedModel,
    ) -> PromptWindow:
        try:
            return model.prompt_format.build_prompt(history, new_turn, params.max_new_tokens)
        except PromptTooLong as error:
            raise engine_refusal(action, error) from None

    async def _queue(
        self,
        action: Action,
        window: PromptWindow,
        params: SamplingParams,
        model: ServedModel,
        take_back: Callable[[], Awaitable[object]] | None = None,
    ) -> GenerationStream:
        """Hand the prompt to the engine; if it refuses, ``take_back`` removes what this request stored."""
        try:
            return await model.engine.submit(window.token_ids, params)
        except (EngineBusy, EngineStopped) as error:
            if take_back is not None:
                # nothing may be left half-done: the message goes back to the tester
                with contextlib.suppress(StorageUnavailable, NotFound):
                    await take_back()
            self.observer.reply_refused(BUSY)
            raise engine_refusal(action, error) from None
