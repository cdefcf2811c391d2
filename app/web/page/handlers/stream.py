"""A reply's stream as page frames: the service's events to chat updates, for the right chat only.

One chat, one stream: a reply streams through the event that sent its message, and
every frame it makes first checks (app/web/page/page_views.py) that its chat is still
the one on that page, so opening another chat mid-reply shows that chat and nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.services.chat import ChatEvent
from app.web.page.handlers.chat_list import ChatListHandlers
from app.web.page.handlers.context import PageContext, Updates
from app.web.page.transcript import PENDING_NOTE, conversation_bubbles, message_bubble, shown_as_text

ON_SCREEN = object()  # marks a stream whose last frame showed its own chat


def waiting_note(event: ChatEvent) -> str:
    """What the queue really looks like: replies running, and messages ahead of this one."""
    running = f"The model is busy with {event.running} repl{'y' if event.running == 1 else 'ies'}"
    ahead = event.position or 0
    if ahead == 0:
        return f"⏳ {running}; yours is next and starts as soon as one finishes."
    return f"⏳ {running}; {ahead} message{'s' if ahead != 1 else ''} wait ahead of yours."


@dataclass
class Frame:
    """One update of the chat pane (messages, chat id, status, and the list when it changed),
    and whether it shows this stream's own chat."""

    updates: Updates
    own: bool


class ReplyRelay:
    """Service events of one reply to frames; one relay per stream, remembering what its last frame showed."""

    def __init__(
        self, context: PageContext, lists: ChatListHandlers, username: str | None, search: str, session: str | None,
        origin: str | None,
    ) -> None:
        self.context = context
        self.page = context.page
        self.lists = lists
        self.username, self.search, self.session = username, search, session
        self.conversation_id = origin
        # what the last frame showed: this stream's chat (ON_SCREEN) or another chat's id (or None)
        self.last_shown: object = ON_SCREEN

    async def frames(
        self, events: AsyncIterator[ChatEvent], bubbles: list[dict[str, str]]
    ) -> AsyncIterator[Frame | None]:
        """A frame per event; None while another chat is on screen and nothing changed there.

        ``bubbles`` is the chat as drawn when the stream began; its last bubble is the reply."""
        views, page = self.context.views, self.page
        async for event in events:
            if event.kind == "conversation":
                if event.conversation_id != self.conversation_id and views.showing(self.session, self.conversation_id):
                    views.show(self.session, event.conversation_id)  # the new chat is the one on screen
                self.conversation_id = event.conversation_id
                if views.showing(self.session, self.conversation_id):
                    chats = await self.lists.lists(self.username, self.search, self.session, self.conversation_id)
                    self.last_shown = ON_SCREEN
                    yield Frame({page.chatbot: bubbles, page.conversation_state: self.conversation_id,
                                 page.status: "", **chats}, own=True)
                else:
                    yield await self.elsewhere()
                continue
            status = self.draw(event, bubbles)
            if views.showing(self.session, self.conversation_id):
                self.last_shown = ON_SCREEN
                yield Frame({page.chatbot: bubbles, page.conversation_state: self.conversation_id, page.status: status},
                            own=True)
            else:
                yield await self.elsewhere()

    @staticmethod
    def draw(event: ChatEvent, bubbles: list[dict[str, str]]) -> str:
        """Put the event into the reply's bubble (the last one); the status line it calls for."""
        status = ""
        if event.kind == "waiting":
            status = waiting_note(event)
        if event.kind == "done" and event.message is not None:
            bubbles[-1] = message_bubble(event.message)
            if event.message.pending:
                status = f"⚠ The database did not take this reply: {PENDING_NOTE}."
        elif event.kind == "stopped":
            text = shown_as_text(event.text)
            bubbles[-1] = {"role": "assistant", "content": (text + "\n\n" if text else "") + "*(stopped)*"}
        else:
            bubbles[-1] = {"role": "assistant", "content": shown_as_text(event.text) or "…"}
        return status

    async def elsewhere(self) -> Frame | None:
        """A frame of the chat on screen when that changed since this stream's last frame."""
        if self.last_shown == self.context.views.on_screen(self.session):
            return None
        frame = await self.on_screen_frame()
        self.last_shown = frame.updates[self.page.conversation_state]
        return frame

    async def on_screen_frame(self) -> Frame:
        """The chat this page shows now (its messages and id).

        Sent once by a stream whose own chat just left the screen: Gradio may deliver a
        frame the stream made a moment before the switch after the switch itself, and
        the client applies each frame as the whole chat, so that stale frame would stay
        on screen until the reply ended. This frame, later in the same stream, replaces it.
        """
        conversation_id = self.context.views.on_screen(self.session)
        conversation = await self.context.open_quietly(self.username, conversation_id)
        live = self.context.service.live_text(conversation) if conversation else None
        view = conversation_bubbles(conversation, live, self.context.views.shown(self.session))
        return Frame({self.page.chatbot: view, self.page.conversation_state: conversation_id}, own=False)
