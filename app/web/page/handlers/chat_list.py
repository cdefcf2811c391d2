"""The sidebar's chat list: listing, search, "show older chats", and a row's menu (rename, pin, delete).

The list is rendered by app/web/page/chat_list.py; the export links of a row's menu are
plain links (app/web/export_route.py), so they need no handler here.
"""

from __future__ import annotations

import contextlib

import gradio as gr

from app.services.errors import ChatError
from app.web.page import chat_list as listing
from app.web.page.handlers.context import PageContext, Updates
from app.web.page.handlers.refusals import problem, require_chat


class ChatListHandlers:
    """Events of the chat list; ``list_updates`` is also how other events redraw it after a change."""

    def __init__(self, context: PageContext) -> None:
        self.context = context
        self.page = context.page

    async def list_updates(self, username: str | None, search: str, session: str | None, value: str | None) -> Updates:
        """The chat list (data for API clients, rows for the page; a page of it, more on request),
        its "show more" button and its note line."""
        page, view = self.page, self.context.views.page(session)
        shown = max(listing.PAGE_SIZE, view.shown_chats if view else 0)
        summaries = await self.context.service.list_conversations(username, search or "", limit=shown + 1)
        more = len(summaries) > shown
        timezone = view.timezone if view else None
        choices = listing.choices(summaries[:shown], timezone)
        rows = listing.render(summaries[:shown], timezone, value, searching=bool((search or "").strip()))
        if value is not None and value not in {c[1] for c in choices}:
            value = None
        return {
            page.chat_list: gr.update(choices=choices, value=value),
            page.chat_rows: rows,
            page.more_button: gr.update(visible=more),
            page.no_match: gr.update(value=listing.search_note(search)),
        }

    async def lists(self, username: str | None, search: str, session: str | None, value: str | None) -> Updates:
        """Just the list itself (data and rows), after a change to it."""
        updates = await self.list_updates(username, search, session, value)
        return {self.page.chat_list: updates[self.page.chat_list], self.page.chat_rows: updates[self.page.chat_rows]}

    def picked_row(self, evt: gr.EventData) -> Updates:
        """A click in the chat list: which chat (and the new title or pin state), checked."""
        row = listing.read_row_event(getattr(evt, "_data", None))
        return {self.page.row_id: row.conversation_id, self.page.row_title: row.title, self.page.row_pinned: row.pinned}

    def picked_chat(self, evt: gr.EventData) -> str:
        return listing.read_row_event(getattr(evt, "_data", None)).conversation_id

    async def on_search(self, search: str, current: str | None, request: gr.Request) -> Updates:
        try:
            return await self.list_updates(request.username, search, request.session_hash, current)
        except ChatError as error:
            return {self.page.no_match: gr.update(value=problem(error))}

    async def on_clear_search(self, current: str | None, request: gr.Request) -> Updates:
        return {self.page.search: "", **await self.list_updates(request.username, "", request.session_hash, current)}

    async def on_more(self, search: str, current: str | None, request: gr.Request) -> Updates:
        view = self.context.views.page(request.session_hash)
        if view is not None:
            view.shown_chats = max(listing.PAGE_SIZE, view.shown_chats) + listing.PAGE_SIZE
        return await self.on_search(search, current, request)

    async def on_rename(self, conversation_id: str | None, title: str, search: str, request: gr.Request) -> Updates:
        """The rows are redrawn either way: the page already shows the new title, which must go
        back if it was refused; the title box empties once the rename is stored."""
        page, session = self.page, request.session_hash
        updates: Updates = {page.status: "Renamed.", page.row_title: ""}
        try:
            chat = require_chat(conversation_id)
            await self.context.service.rename(request.username, chat, title or "")
        except ChatError as error:
            updates = {page.status: problem(error)}
        on_screen = self.context.views.on_screen(session)
        with contextlib.suppress(ChatError):  # the rows stay as they are
            updates.update(await self.lists(request.username, search, session, on_screen or conversation_id))
        return updates

    async def on_pin(self, conversation_id: str | None, pinned: bool, search: str, request: gr.Request) -> Updates:
        session = request.session_hash
        try:
            chat = require_chat(conversation_id)
            await self.context.service.pin(request.username, chat, bool(pinned))
            on_screen = self.context.views.on_screen(session)
            chats = await self.lists(request.username, search, session, on_screen or conversation_id)
        except ChatError as error:
            return {self.page.status: problem(error)}
        return {self.page.status: "Pinned to the top." if pinned else "Unpinned.", **chats}

    async def on_delete(self, conversation_id: str | None, search: str, request: gr.Request) -> Updates:
        """Any row can be deleted; the chat pane empties only when it showed that chat."""
        page, session, views = self.page, request.session_hash, self.context.views
        try:
            chat = require_chat(conversation_id)
            await self.context.service.delete(request.username, chat)
        except ChatError as error:
            return {page.status: problem(error)}
        on_screen = views.showing(session, conversation_id)
        if on_screen:
            views.show(session, None)
        updates = {page.status: "Chat deleted.", **await self.lists(request.username, search, session,
                                                                     views.on_screen(session))}
        if on_screen:
            updates.update({page.chatbot: [], page.conversation_state: None, **self.context.buttons(False, False)})
        return updates
