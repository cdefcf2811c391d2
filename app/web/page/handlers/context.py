"""What every handler shares: the service, which chat each page shows, the components, and their common updates."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.blocks import Block

from app.config import Settings
from app.services.chat import ChatOptions, ChatService
from app.services.errors import ChatError
from app.web.page.layout import PageComponents
from app.web.page.message_window import PAGE_MESSAGES
from app.web.page.page_views import Views
from app.web.page.service_holder import ServiceHolder
from app.web.page.transcript import conversation_bubbles, feedback_values, shown_messages
from storage.repository import ConversationRecord

Updates = dict[Block, Any]
"""What a handler changes, by component; a component left out stays as it is."""


def marks(
    conversation: ConversationRecord | None, bubbles: list[dict[str, str]], shown: int = PAGE_MESSAGES
) -> list[str | None]:
    """The Chatbot's like/dislike state for these bubbles (the stored ratings)."""
    return feedback_values(shown_messages(conversation, shown)[0], bubbles)


@dataclass
class PageContext:
    """The service holder, the page views and the components, handed explicitly to each handler class."""

    holder: ServiceHolder
    page: PageComponents
    views: Views
    max_new_tokens: int
    default_options: ChatOptions

    @classmethod
    def create(cls, holder: ServiceHolder, page: PageComponents, settings: Settings) -> PageContext:
        return cls(
            holder, page, Views(), settings.max_new_tokens,
            ChatOptions(max_new_tokens=min(256, settings.max_new_tokens)),
        )

    @property
    def service(self) -> ChatService:
        """The started service; before it started, a ChatError that says so."""
        return self.holder.get()

    def buttons(self, replying: bool, exchange: bool | None = None) -> Updates:
        """Send and Stop share one place: Stop shows while the chat on screen has a reply coming.
        Retry/Undo show only under a chat with an exchange and no reply coming (None: leave as is)."""
        page = self.page
        updates: Updates = {
            page.send_button: gr.update(visible=not replying), page.stop_button: gr.update(visible=replying),
        }
        if replying:
            updates[page.reply_actions] = gr.update(visible=False)
        elif exchange is not None:
            updates[page.reply_actions] = gr.update(visible=exchange)
        return updates

    def chat_settings(self, options: ChatOptions | None) -> Updates:
        """The settings sidebar for a chat's options (None: the defaults), within the server's limit."""
        options = options or self.default_options
        page = self.page
        return {
            page.system_prompt: options.system_prompt,
            page.temperature: options.temperature,
            page.top_p: options.top_p,
            page.max_new_tokens: max(1, min(int(options.max_new_tokens), self.max_new_tokens)),
        }

    def model_control(self, value: str) -> Updates:
        """The model control set to ``value``, its choices saying which models are down now (a dead engine
        process, an inference server gone); nothing with one model (the control is not on the page)."""
        if not self.page.model_boxes:
            return {}
        choices = [
            (model.label if model.engine.stats().accepting else f"{model.label} (unavailable)", model.name)
            for model in self.service.models
        ]
        return {self.page.model_choice: gr.update(value=value, choices=choices)}

    def chat_model(self, conversation: ConversationRecord | None) -> tuple[str, str]:
        """The model control's value for this chat (None: a new one, the default) and, when its model is
        no longer offered (with several offered), the sentence saying so and what the next message does."""
        models = self.service.models
        if conversation is None or conversation.model in models:
            return (conversation.model if conversation else models.default.name), ""
        default = models.default
        if len(models) < 2:
            return default.name, ""  # one model, as always: the chat continues with it, re-encoded
        gone = html.escape(conversation.model)
        return default.name, (
            f"This chat was written by {gone}, which this server no longer offers: your next message goes to "
            f"{html.escape(default.label)} (or pick another model on the left), and the earlier messages are "
            "re-encoded from text."
        )

    def marked_view(
        self, conversation: ConversationRecord | None, live: str | None = None, shown: int = PAGE_MESSAGES
    ) -> Any:
        """The chat and its like/dislike marks (the stored ratings), for page-only events.

        Events an API client calls return the plain message list (an update object would
        change what the client receives); their marks follow in ``ViewHandlers.sync_marks``.
        """
        bubbles = conversation_bubbles(conversation, live, shown)
        return gr.update(value=bubbles, feedback_value=marks(conversation, bubbles, shown))

    async def open_quietly(self, username: str | None, conversation_id: str | None) -> ConversationRecord | None:
        """The chat if it can be opened now, else None: for redraws that have nothing to say about a failure."""
        if not conversation_id:
            return None
        try:
            return await self.service.open(username, conversation_id)
        except ChatError:
            return None
