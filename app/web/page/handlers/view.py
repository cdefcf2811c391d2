"""What the chat pane shows: the page loading, a chat opened, a new chat, earlier messages, the marks."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from app.services.branch import has_exchange
from app.services.chat import options_of
from app.services.errors import ChatError
from app.web.page.handlers.chat_list import ChatListHandlers
from app.web.page.handlers.context import PageContext, Updates, marks
from app.web.page.handlers.refusals import problem
from app.web.page.message_window import PAGE_MESSAGES, earlier_label, more
from app.web.page.transcript import conversation_bubbles, shown_messages
from storage.repository import ConversationRecord


class ViewHandlers:
    """Events that change which chat is on screen, or how much of it."""

    def __init__(self, context: PageContext, lists: ChatListHandlers) -> None:
        self.context = context
        self.page = context.page
        self.lists = lists

    def chat_updates(self, conversation: ConversationRecord | None) -> Updates:
        """The chat pane for this chat (None: a new one): messages, id, status, buttons and the chat's settings."""
        page = self.page
        model, note = self.context.chat_model(conversation)
        if conversation is None:
            return {
                page.chatbot: [], page.conversation_state: None, page.status: "",
                **self.context.buttons(False, False), **self.context.chat_settings(None),
                **self.context.model_control(model),
            }
        live = self.context.service.live_text(conversation)
        return {
            page.chatbot: conversation_bubbles(conversation, live), page.conversation_state: conversation.id,
            page.status: note, **self.context.buttons(live is not None, has_exchange(conversation)),
            **self.context.chat_settings(options_of(conversation)),
            **self.context.model_control(model),
        }

    async def on_model_picked(self, model: str | None, conversation_id: str | None, request: gr.Request) -> Updates:
        """A model picked on the page: the settings it sets (a variant's temperature...) fill in; a system
        prompt only for a new chat (it is set when a chat starts). Whether it is offered, the server checks."""
        page = self.page
        models = self.context.service.models
        if not model or model not in models:
            return {page.status: ""}
        defaults = dict(models.get(model).defaults)
        if conversation_id:
            defaults.pop("system_prompt", None)
        updates: Updates = {page.status: ""}
        boxes = {"system_prompt": page.system_prompt, "temperature": page.temperature, "top_p": page.top_p,
                 "max_new_tokens": page.max_new_tokens}
        for key, value in defaults.items():
            updates[boxes[key]] = min(value, self.context.max_new_tokens) if key == "max_new_tokens" else value
        return updates

    async def on_load(self, timezone: str, request: gr.Request) -> Updates:
        """The page as it opens: the chat its address names (``?c=``), else a new chat with the last settings."""
        page, views = self.page, self.context.views
        username, session = request.username, request.session_hash
        service = self.context.service
        views.open_page(session, timezone or "UTC")
        wanted = request.query_params.get("c") if request.query_params else None
        greeting = f"Signed in as **{html.escape(username or '')}** · model `{service.model_name}`"
        if len(service.models) > 1:
            greeting = f"Signed in as **{html.escape(username or '')}** · {len(service.models)} models"
        conversation, note = None, ""
        if wanted:
            try:
                conversation = await service.open(username, wanted)
            except ChatError as error:
                note = problem(error)
        views.show(session, conversation.id if conversation else None)
        updates = {page.greeting: greeting, **self.chat_updates(conversation)}
        try:
            if conversation is None:
                updates.update(self.context.chat_settings(await service.last_options(username)))
            updates.update(await self.lists.list_updates(username, "", session, conversation and conversation.id))
        except ChatError as error:  # the database is unavailable: say so in words, show an empty list
            note = problem(error)
            updates.update({
                page.chat_list: gr.update(choices=[], value=None), page.chat_rows: "",
                page.more_button: gr.update(visible=False),
            })
        updates[page.status] = note
        return updates

    async def on_select(self, conversation_id: str | None, request: gr.Request) -> Updates:
        views = self.context.views
        views.show(request.session_hash, conversation_id)
        if not conversation_id:
            return self.chat_updates(None)
        try:
            conversation = await self.context.service.open(request.username, conversation_id)
        except ChatError as error:
            views.show(request.session_hash, None)
            return {**self.chat_updates(None), self.page.status: problem(error)}
        return self.chat_updates(conversation)

    async def new_chat(self, request: gr.Request) -> Updates:
        """An empty chat on screen, with the settings of the tester's last chat."""
        self.context.views.show(request.session_hash, None)
        updates = {**self.chat_updates(None), self.page.chat_list: gr.update(value=None)}
        updates.update(self.context.chat_settings(await self.context.service.last_options(request.username)))
        return updates

    async def sync_marks(self, conversation_id: str | None, request: gr.Request) -> Any:
        """The like/dislike marks of the chat on screen, after an event that redrew it."""
        conversation = await self.context.open_quietly(request.username, conversation_id)
        live = self.context.service.live_text(conversation) if conversation else None
        shown = self.context.views.shown(request.session_hash)
        return gr.update(feedback_value=marks(conversation, conversation_bubbles(conversation, live, shown), shown))

    async def earlier_control(self, conversation_id: str | None, request: gr.Request) -> Any:
        """The "Show earlier messages" button of the chat on screen: shown when some are left out."""
        conversation = await self.context.open_quietly(request.username, conversation_id)
        if conversation is None:
            return gr.update(visible=False)
        hidden = shown_messages(conversation, self.context.views.shown(request.session_hash))[1]
        return gr.update(visible=hidden > 0, value=earlier_label(hidden))

    async def on_earlier(self, conversation_id: str | None, request: gr.Request) -> Updates:
        """One more page of the open chat's earlier messages."""
        page = self.page
        view = self.context.views.page(request.session_hash)
        shown = more(view.shown_messages if view else PAGE_MESSAGES)
        if view is not None:
            view.shown_messages = shown
        if not conversation_id:
            return {page.earlier_button: gr.update(visible=False), page.status: ""}
        try:
            conversation = await self.context.service.open(request.username, conversation_id)
        except ChatError as error:
            return {page.earlier_button: gr.update(visible=False), page.status: problem(error)}
        hidden = shown_messages(conversation, shown)[1]
        return {
            page.chatbot: conversation_bubbles(conversation, self.context.service.live_text(conversation), shown),
            page.earlier_button: gr.update(visible=hidden > 0, value=earlier_label(hidden)),
            page.status: "",
        }

    def forget_page(self, request: gr.Request) -> None:
        """A closed page: its view is dropped (its name is also its private API name: keep it)."""
        self.context.views.forget(request.session_hash)
