"""Ratings and versions of replies: the Chatbot's thumbs, a rating's comment, and the ‹ › version arrows."""

from __future__ import annotations

import gradio as gr

from app.services.errors import ChatError
from app.web.page.handlers.context import PageContext, Updates
from app.web.page.handlers.refusals import problem, require_chat
from app.web.page.transcript import conversation_bubbles, shown_messages
from storage.repository import RatingRecord

LIKED = {True: "up", False: "down"}
RATE_FIRST = "Rate a reply first (👍 or 👎), then add a comment."


def rating_note(rating: RatingRecord | None) -> str:
    """The status line after a rating changed."""
    if rating is None:
        return "Rating removed."
    thumb = "👍" if rating.value == "up" else "👎"
    return f"Rated {thumb}. Add a short comment below if you like."


class RatingHandlers:
    """Events on a reply of the chat on screen: rate it, comment on the rating, show another version."""

    def __init__(self, context: PageContext) -> None:
        self.context = context
        self.page = context.page

    def comment_row(self, rating: RatingRecord | None) -> Updates:
        """The status line and the comment row after a rating changed: open under a rating, closed without."""
        page = self.page
        if rating is None:
            return {page.status: rating_note(None), page.rating_row: gr.update(visible=False),
                    page.rated_message: "", page.rating_comment: ""}
        return {page.status: rating_note(rating), page.rating_row: gr.update(visible=True),
                page.rating_comment: rating.comment or ""}

    async def stored_view(self, username: str | None, conversation_id: str, shown: int) -> list[dict[str, str]]:
        """The chat as stored now (its ratings drawn), for events an API client calls."""
        return conversation_bubbles(await self.context.service.open(username, conversation_id), shown=shown)

    async def on_switch_version(self, conversation_id: str | None, message_id: str, request: gr.Request) -> Updates:
        """Show another version of a turn (the ‹ › arrows); the chat continues from it."""
        page, service = self.page, self.context.service
        try:
            chat = require_chat(conversation_id)
            conversation = await service.show_version(request.username, chat, message_id)
        except ChatError as error:
            return {page.status: problem(error)}
        shown = self.context.views.shown(request.session_hash)
        view = conversation_bubbles(conversation, service.live_text(conversation), shown)
        return {page.chatbot: view, page.status: ""}

    async def on_like(self, conversation_id: str | None, like: gr.LikeData, request: gr.Request) -> Updates:
        """The Chatbot's thumbs: up, down, or (clicking the same thumb again) no rating."""
        page, service, username = self.page, self.context.service, request.username
        index = like.index if isinstance(like.index, int) else like.index[0]
        shown = self.context.views.shown(request.session_hash)
        value = LIKED.get(like.liked) if isinstance(like.liked, bool) else None
        conversation = None
        try:
            chat = require_chat(conversation_id)
            conversation = await service.open(username, chat)
            # bubble i is message hidden + i: a long chat shows only its newest messages
            message = service.shown_message(conversation, index + shown_messages(conversation, shown)[1])
            comment = message.rating.comment if message.rating else None
            rating = await service.rate(username, chat, message.id, value, comment)
            chatbot = self.context.marked_view(await service.open(username, chat), shown=shown)
        except ChatError as error:
            # also as a toast: while a reply streams, its frames rewrite the status line
            gr.Warning(str(error))
            updates: Updates = {page.status: problem(error), page.rating_row: gr.update(visible=False),
                                page.rated_message: "", page.rating_comment: ""}
            if conversation is not None:
                updates[page.chatbot] = self.context.marked_view(conversation, service.live_text(conversation), shown)
            return updates
        return {page.chatbot: chatbot, **self.comment_row(rating),
                page.rated_message: str(message.id) if rating else ""}

    async def on_rate(
        self, conversation_id: str | None, message_id: str, value: str, comment: str, request: gr.Request
    ) -> Updates:
        """API: rate a reply by id ("up", "down", or "" to clear) with an optional comment."""
        shown = self.context.views.shown(request.session_hash)
        try:
            chat = require_chat(conversation_id)
            rating = await self.context.service.rate(request.username, chat, message_id, value or None, comment or None)
            chatbot = await self.stored_view(request.username, chat, shown)
        except ChatError as error:
            return {self.page.status: problem(error)}
        return {self.page.chatbot: chatbot, self.page.status: rating_note(rating)}

    async def on_comment(
        self, conversation_id: str | None, message_id: str, comment: str, request: gr.Request
    ) -> Updates:
        shown = self.context.views.shown(request.session_hash)
        try:
            if not conversation_id or not message_id:
                raise ChatError(RATE_FIRST)
            await self.context.service.comment(request.username, conversation_id, message_id, comment or "")
            chatbot = await self.stored_view(request.username, conversation_id, shown)
        except ChatError as error:
            return {self.page.status: problem(error)}
        return {self.page.chatbot: chatbot, self.page.status: "Comment saved."}
