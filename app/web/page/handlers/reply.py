"""Replies: send, retry, edit (each streaming its reply), stop and undo, and the buttons around them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from app.services.branch import edit_base, has_exchange, message_id_at, retried_branch
from app.services.chat import ChatEvent, ChatOptions, interrupted, valid_text
from app.services.errors import ChatError
from app.web.page.handlers.chat_list import ChatListHandlers
from app.web.page.handlers.context import PageContext, Updates
from app.web.page.handlers.refusals import problem, require_chat
from app.web.page.handlers.stream import ReplyRelay
from app.web.page.message_window import newest
from app.web.page.transcript import (
    FINISH_NOTES,
    conversation_bubbles,
    message_bubble,
    shown_as_text,
    shown_messages,
    with_user_versions,
)

STOP_WAIT_STEPS = 15


class ReplyHandlers:
    """Events that start, stop or take back a reply; a reply streams through the event that started it."""

    def __init__(self, context: PageContext, lists: ChatListHandlers) -> None:
        self.context = context
        self.page = context.page
        self.lists = lists

    def relay(self, request: gr.Request, search: str, origin: str | None) -> ReplyRelay:
        return ReplyRelay(self.context, self.lists, request.username, search, request.session_hash, origin)

    async def streamed(
        self, events: AsyncIterator[ChatEvent], bubbles: list[dict[str, str]], relay: ReplyRelay
    ) -> AsyncIterator[Updates]:
        """The relay's frames as updates; nothing changes while another chat is on screen."""
        async for frame in relay.frames(events, bubbles):
            yield frame.updates if frame is not None else gr.skip()

    def refused_elsewhere(self, error: ChatError) -> Updates:
        """A refusal for a chat no longer on screen: a toast, since its status line is gone."""
        gr.Warning(str(error))
        return gr.skip()

    def begin_reply(self) -> Updates:
        return self.context.buttons(True)

    async def end_reply(self, request: gr.Request) -> Updates:
        """After a send, retry or edit: the buttons for whatever chat is on screen now, that
        chat as stored (its version switches and ratings) unless a reply still streams there,
        and its id: a frame of the reply's own chat that Gradio delivered after a switch to
        another chat would otherwise leave the next message aimed at the chat no longer shown."""
        page, views, session = self.page, self.context.views, request.session_hash
        if views.page(session) is None:
            # a page this server did not see load (open across a restart): what it shows is its own
            return self.context.buttons(False, False)
        conversation_id = views.on_screen(session)
        if not conversation_id:  # a new, empty chat is on screen
            return {page.chatbot: conversation_bubbles(None), page.conversation_state: None,
                    **self.context.buttons(False, False)}
        conversation = await self.context.open_quietly(request.username, conversation_id)
        if conversation is None:
            return self.context.buttons(False, False)
        live = self.context.service.live_text(conversation)
        updates = {page.conversation_state: conversation_id,
                   **self.context.buttons(live is not None, has_exchange(conversation))}
        if live is None:
            updates[page.chatbot] = self.context.marked_view(conversation, shown=views.shown(session))
        return updates

    async def on_send(
        self, text: str, conversation_id: str | None, system_prompt: str, temperature: float, top_p: float,
        max_new_tokens: float, search: str, request: gr.Request, model: str | None = None,
    ) -> AsyncIterator[Updates]:
        """``model``: the model picked on the page (None or '': the chat's own; a new chat's default)."""
        page, views = self.page, self.context.views
        username, session = request.username, request.session_hash
        service = self.context.service
        conversation_id = conversation_id or None
        try:
            before = await service.open(username, conversation_id) if conversation_id else None
        except ChatError as error:
            yield {page.chatbot: [], page.message: valid_text(text or ""), page.conversation_state: None,
                   page.status: problem(error)}
            return
        bubbles = conversation_bubbles(before, shown=views.shown(session))
        if before is not None and interrupted(before):
            bubbles[-1] = {"role": "assistant", "content": f"*{FINISH_NOTES['interrupted']}*"}
        history = list(bubbles)
        # checked by the service, the model name too
        options = ChatOptions(system_prompt or "", temperature, top_p, max_new_tokens, model=model or "")
        bubbles += [{"role": "user", "content": shown_as_text(text or "")}, {"role": "assistant", "content": "…"}]
        cleared = False
        try:
            events = service.send(username, conversation_id, text, options)
            async for frame in self.relay(request, search, conversation_id).frames(events, bubbles):
                if frame is None:
                    yield gr.skip()
                    continue
                if frame.own and not cleared:
                    # the textbox empties only once the message is safely stored (and only in its own chat)
                    frame.updates[page.message] = ""
                yield frame.updates
                cleared = cleared or frame.own
        except ChatError as error:  # busy, rate limit, bad input: the typed text goes back
            if not views.showing(session, conversation_id):
                yield self.refused_elsewhere(error)
                return
            # the typed text goes back as it was, save what JSON cannot carry (a lone surrogate)
            yield {page.chatbot: history, page.message: valid_text(text or ""),
                   page.conversation_state: conversation_id, page.status: problem(error)}

    async def on_retry(
        self, conversation_id: str | None, temperature: float, top_p: float, max_new_tokens: float, search: str,
        request: gr.Request, model: str | None = None,
    ) -> AsyncIterator[Updates]:
        page, views = self.page, self.context.views
        username, session = request.username, request.session_hash
        service = self.context.service
        try:
            chat = require_chat(conversation_id)
            conversation = await service.open(username, chat)
            kept = newest(retried_branch(conversation), views.shown(session))[0]
        except ChatError as error:
            yield {page.conversation_state: conversation_id, page.status: problem(error)}
            return
        bubbles = with_user_versions(kept, [*(message_bubble(m) for m in kept), {"role": "assistant", "content": "…"}])
        options = ChatOptions("", temperature, top_p, max_new_tokens, model=model or "")  # checked by the service
        try:
            events = service.retry(username, chat, options)
            async for update in self.streamed(events, bubbles, self.relay(request, search, conversation_id)):
                yield update
        except ChatError as error:
            if not views.showing(session, conversation_id):
                yield self.refused_elsewhere(error)
                return
            yield {page.chatbot: conversation_bubbles(conversation, shown=views.shown(session)),
                   page.conversation_state: conversation_id, page.status: problem(error)}

    async def edit_stream(
        self, conversation_id: str | None, message_id: Any, text: str, temperature: float, top_p: float,
        max_new_tokens: float, search: str, request: gr.Request,
    ) -> AsyncIterator[Updates]:
        """A new version of a sent message, and its reply streaming; the old branch stays."""
        page, views = self.page, self.context.views
        username, session = request.username, request.session_hash
        service = self.context.service
        conversation = None
        try:
            chat = require_chat(conversation_id)
            conversation = await service.open(username, chat)
            edited = service.stored_message(conversation, message_id)
            kept = newest(edit_base(conversation, edited), views.shown(session))[0]
            bubbles = with_user_versions(kept, [message_bubble(m) for m in kept])
            bubbles += [{"role": "user", "content": shown_as_text(text or "")}, {"role": "assistant", "content": "…"}]
            options = ChatOptions("", temperature, top_p, max_new_tokens)  # checked by the service
            events = service.edit(username, chat, edited.id, text, options)
            async for update in self.streamed(events, bubbles, self.relay(request, search, conversation_id)):
                yield update
        except ChatError as error:
            if not views.showing(session, conversation_id):
                yield self.refused_elsewhere(error)
                return
            updates: Updates = {page.conversation_state: conversation_id, page.status: problem(error)}
            if conversation is not None:
                live = service.live_text(conversation)
                updates[page.chatbot] = conversation_bubbles(conversation, live, views.shown(session))
            yield updates

    async def on_edit(
        self, conversation_id: str | None, message_id: str, text: str, temperature: float, top_p: float,
        max_new_tokens: float, search: str, request: gr.Request,
    ) -> AsyncIterator[Updates]:
        """API: edit the user message ``message_id``."""
        async for update in self.edit_stream(conversation_id, message_id, text, temperature, top_p, max_new_tokens,
                                             search, request):
            yield update

    async def on_chat_edit(
        self, conversation_id: str | None, temperature: float, top_p: float, max_new_tokens: float, search: str,
        edit: gr.EditData, request: gr.Request,
    ) -> AsyncIterator[Updates]:
        """The Chatbot's own edit of a user bubble: its position on screen names the message."""
        index = edit.index if isinstance(edit.index, int) else edit.index[0]
        value = edit.value
        if isinstance(value, list):
            value = "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in value)
        message_id: Any = None
        try:
            if conversation_id:
                conversation = await self.context.service.open(request.username, conversation_id)
                # bubble i is message hidden + i: a long chat shows only its newest messages
                hidden = shown_messages(conversation, self.context.views.shown(request.session_hash))[1]
                message_id = message_id_at(conversation, index + hidden)
        except ChatError:
            pass
        async for update in self.edit_stream(conversation_id, message_id, str(value or ""), temperature, top_p,
                                             max_new_tokens, search, request):
            yield update

    async def on_stop(self, conversation_id: str | None, request: gr.Request) -> Updates:
        """Stop the reply of the chat on screen at once; its stream shows and stores it as stopped."""
        status, service = self.page.status, self.context.service
        try:
            # a Stop right after Send may come before the reply has started (or, in a new
            # chat, before the chat exists): give it a moment to appear
            for _ in range(STOP_WAIT_STEPS):
                target = conversation_id or self.context.views.on_screen(request.session_hash)
                if await service.stop(request.username, target):
                    return {status: "Stopped.", **self.context.buttons(False, True)}
                await asyncio.sleep(0.1)
        except ChatError as error:
            return {status: problem(error), **self.context.buttons(False)}
        return {status: "Nothing to stop.", **self.context.buttons(False)}

    async def on_undo(self, conversation_id: str | None, search: str, request: gr.Request) -> Updates:
        """Take back the last exchange on screen; a chat left empty is deleted, and its row goes."""
        page, views, session = self.page, self.context.views, request.session_hash
        try:
            chat = require_chat(conversation_id)
            conversation = await self.context.service.undo(request.username, chat)
        except ChatError as error:
            return {page.status: problem(error)}
        chats = await self.lists.lists(request.username, search, session, conversation and conversation.id)
        if conversation is None:  # the chat had one exchange: it is gone, and so is its row
            views.show(session, None)
            note = "Removed the last exchange; the chat was empty, so it is gone."
            return {page.chatbot: [], page.status: note, page.conversation_state: None, **chats,
                    **self.context.buttons(False, False)}
        return {
            page.chatbot: conversation_bubbles(conversation, shown=views.shown(session)),
            page.status: "Removed the last exchange.", page.conversation_state: conversation.id, **chats,
            **self.context.buttons(False, has_exchange(conversation)),
        }
