"""Which chat each open page shows, so a streaming reply never writes into another chat.

A reply streams through the event that sent its message, and that event keeps
running when the tester opens another chat. Every streaming update therefore asks
this registry whether its chat is still the one on that page; if not, it updates
nothing on screen (the reply goes on and is stored in its own chat). Pages are
keyed by Gradio's per-page session id; a client that never loaded the page (an API
client) has no entry and always sees its own stream.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from app.web.page.message_window import PAGE_MESSAGES

MAX_PAGES = 20_000


@dataclass
class PageView:
    conversation_id: str | None = None
    timezone: str = "UTC"
    shown_chats: int = 0
    shown_messages: int = PAGE_MESSAGES  # of the open chat (see app/web/page/message_window.py)


class Views:
    """The chat on screen per page session, bounded (the oldest pages are forgotten first)."""

    def __init__(self, max_pages: int = MAX_PAGES) -> None:
        self._pages: OrderedDict[str, PageView] = OrderedDict()
        self._max_pages = max_pages

    def page(self, session: str | None) -> PageView | None:
        if not session:
            return None
        view = self._pages.get(session)
        if view is not None:
            self._pages.move_to_end(session)
        return view

    def open_page(self, session: str | None, timezone: str = "UTC") -> PageView:
        view = PageView(timezone=timezone)
        if session:
            self._pages[session] = view
            self._pages.move_to_end(session)
            while len(self._pages) > self._max_pages:
                self._pages.popitem(last=False)
        return view

    def show(self, session: str | None, conversation_id: str | None) -> None:
        view = self.page(session)
        if view is not None:
            if view.conversation_id != (conversation_id or None):
                view.shown_messages = PAGE_MESSAGES  # another chat opens at its newest page
            view.conversation_id = conversation_id or None

    def showing(self, session: str | None, conversation_id: str | None) -> bool:
        """Is this chat (None: a new, unsaved chat) the one on that page? Unknown pages: yes."""
        view = self.page(session)
        return view is None or view.conversation_id == (conversation_id or None)

    def on_screen(self, session: str | None) -> str | None:
        view = self.page(session)
        return None if view is None else view.conversation_id

    def shown(self, session: str | None) -> int:
        """How many of the open chat's newest messages this page shows."""
        view = self.page(session)
        return view.shown_messages if view is not None else PAGE_MESSAGES

    def forget(self, session: str | None) -> None:
        if session:
            self._pages.pop(session, None)
