"""The Gradio Blocks page: layout and event wiring only; every rule lives in ChatService.

Handlers read the user from ``request.username`` (our login, app/accounts/sessions.py) and nothing the
browser sends can name another user. Text is shown as text: HTML in messages and
titles is made inert outside code (app/web/page/rendering.py), so a ``<script>`` is displayed,
never run, and code shows ``<`` literally.

One chat, one stream: a reply streams through the event that sent its message, and
every update it makes first checks (app/web/page/page_views.py) that its chat is still the one on
that page, so opening another chat mid-reply shows that chat and nothing else.
"""

from __future__ import annotations

import abc
import asyncio
import html
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from app.config import Settings
from app.services.chat import ChatError, ChatEvent, ChatOptions, ChatService, interrupted, options_of, valid_text
from app.web.page import chat_list as listing
from app.web.page.assets import (
    CHAT_LIST_JS,
    NEW_CHAT_JS,
    PICKED_VERSION_JS,
    SET_ADDRESS_JS,
    TIMEZONE_JS,
    TOGGLE_THEME_JS,
)
from app.web.page.message_window import PAGE_MESSAGES, earlier_label, more, newest
from app.web.page.page_views import Views
from app.web.page.transcript import (
    FINISH_NOTES,
    PENDING_NOTE,
    conversation_bubbles,
    feedback_values,
    message_bubble,
    shown_as_text,
    shown_messages,
    with_user_versions,
)
from storage.repository import ConversationRecord
from storage.tree import path_to

LIKED = {True: "up", False: "down"}

REPLY_EVENTS = "replies"
STOP_WAIT_STEPS = 15
ON_SCREEN = object()  # marks a stream whose last frame showed its own chat


# The sidebar's chat list as the page shows it (rendered by app/web/page/chat_list.py). It is left
# out of the API: API clients read the same list as (label, id) choices of the hidden
# radio, so this page-only output changes no endpoint's shape. Gradio's ComponentMeta
# would also write a .pyi stub into our source tree for any Component subclass; for a
# subclass that adds no events or constructor, ABCMeta.__new__ (what ComponentMeta ends
# with) builds the same class without that side effect.
ChatRows = abc.ABCMeta.__new__(
    type(gr.HTML), "ChatRows", (gr.HTML,),
    {"skip_api": property(lambda _self: True), "__module__": __name__, "__qualname__": "ChatRows"},
)


class ServiceHolder:
    """The service appears when the server's lifespan has started it; the UI is built before."""

    def __init__(self) -> None:
        self.service: ChatService | None = None

    def get(self) -> ChatService:
        if self.service is None:
            raise ChatError("The server is still starting; try again in a few seconds.")
        return self.service



def has_exchange(conversation: ConversationRecord | None) -> bool:
    """Retry and Undo only make sense once the chat has a message of the tester's."""
    return conversation is not None and any(m.role == "user" for m in conversation.messages)


def problem(error: Exception) -> str:
    return f"⚠ {html.escape(str(error), quote=False)}"


def waiting_note(event: ChatEvent) -> str:
    """What the queue really looks like: replies running, and messages ahead of this one."""
    running = f"The model is busy with {event.running} repl{'y' if event.running == 1 else 'ies'}"
    ahead = event.position or 0
    if ahead == 0:
        return f"⏳ {running}; yours is next and starts as soon as one finishes."
    return f"⏳ {running}; {ahead} message{'s' if ahead != 1 else ''} wait ahead of yours."


def build_ui(holder: ServiceHolder, settings: Settings) -> gr.Blocks:
    """The chat page. Wiring only: each handler calls one ChatService method."""
    views = Views()
    default_options = ChatOptions(max_new_tokens=min(256, settings.max_new_tokens))

    def settings_updates(options: ChatOptions | None) -> tuple[Any, ...]:
        options = options or default_options
        return (
            options.system_prompt,
            options.temperature,
            options.top_p,
            max(1, min(int(options.max_new_tokens), settings.max_new_tokens)),
        )

    def button_updates(replying: bool, exchange: bool | None = None) -> tuple[Any, Any, Any]:
        """Send and Stop share one place: Stop shows while the chat on screen has a reply coming.
        Retry/Undo show only under a chat with an exchange and no reply coming (None: leave as is)."""
        if replying:
            actions = gr.update(visible=False)
        else:
            actions = gr.update() if exchange is None else gr.update(visible=exchange)
        return gr.update(visible=not replying), gr.update(visible=replying), actions

    async def list_updates(username: str | None, search: str, session: str | None, value: Any) -> tuple[Any, ...]:
        """The chat list (data for API clients, rows for the page; a page of it, more on request),
        its "show more" button and its note line."""
        view = views.page(session)
        shown = max(listing.PAGE_SIZE, view.shown_chats if view else 0)
        summaries = await holder.get().list_conversations(username, search or "", limit=shown + 1)
        more = len(summaries) > shown
        timezone = view.timezone if view else None
        choices = listing.choices(summaries[:shown], timezone)
        rows = listing.render(summaries[:shown], timezone, value, searching=bool((search or "").strip()))
        if value is not None and value not in {c[1] for c in choices}:
            value = None
        note = listing.search_note(search)
        return gr.update(choices=choices, value=value), rows, gr.update(visible=more), gr.update(value=note)

    async def lists(username: str | None, search: str, session: str | None, value: Any) -> tuple[Any, Any]:
        """Just the list itself (data and rows), after a change to it."""
        chats, rows, _more, _note = await list_updates(username, search, session, value)
        return chats, rows

    def chat_view(
        conversation: ConversationRecord | None, live: str | None = None, shown: int = PAGE_MESSAGES
    ) -> list[dict[str, str]]:
        return conversation_bubbles(conversation, live, shown)

    def marked_view(
        conversation: ConversationRecord | None, live: str | None = None, shown: int = PAGE_MESSAGES
    ) -> Any:
        """The chat and its like/dislike marks (the stored ratings), for page-only events.

        Events an API client calls return the plain message list (an update object would
        change what the client receives); their marks follow in ``sync_marks``.
        """
        bubbles = conversation_bubbles(conversation, live, shown)
        return gr.update(value=bubbles, feedback_value=marks(conversation, bubbles, shown))

    def marks(
        conversation: ConversationRecord | None, bubbles: list[dict[str, str]], shown: int = PAGE_MESSAGES
    ) -> list[str | None]:
        return feedback_values(shown_messages(conversation, shown)[0], bubbles)

    async def sync_marks(conversation_id: str | None, request: gr.Request) -> Any:
        """The like/dislike marks of the chat on screen, after an event that redrew it."""
        conversation = None
        if conversation_id:
            try:
                conversation = await holder.get().open(request.username, conversation_id)
            except ChatError:
                conversation = None
        live = holder.get().live_text(conversation) if conversation else None
        shown = views.shown(request.session_hash)
        return gr.update(feedback_value=marks(conversation, conversation_bubbles(conversation, live, shown), shown))

    async def chat_updates(conversation: ConversationRecord | None) -> tuple[Any, ...]:
        """chatbot, conversation id, status, send, stop, retry/undo, and the chat's settings."""
        service = holder.get()
        if conversation is None:
            return ([], None, "", *button_updates(False, False), *settings_updates(None))
        live = service.live_text(conversation)
        return (
            chat_view(conversation, live), conversation.id, "",
            *button_updates(live is not None, has_exchange(conversation)), *settings_updates(options_of(conversation)),
        )

    async def on_load(timezone: str, request: gr.Request) -> tuple[Any, ...]:
        username, session = request.username, request.session_hash
        service = holder.get()
        views.open_page(session, timezone or "UTC")
        wanted = request.query_params.get("c") if request.query_params else None
        greeting = f"Signed in as **{html.escape(username or '')}** · model `{service.model_name}`"
        conversation, note = None, ""
        if wanted:
            try:
                conversation = await service.open(username, wanted)
            except ChatError as error:
                note = problem(error)
        views.show(session, conversation.id if conversation else None)
        chat = list(await chat_updates(conversation))
        try:
            if conversation is None:
                chat[6:] = settings_updates(await service.last_options(username))
            chat_list, rows, more, no_match = await list_updates(
                username, "", session, conversation and conversation.id
            )
        except ChatError as error:  # the database is unavailable: say so in words, show an empty list
            note = problem(error)
            chat_list, rows = gr.update(choices=[], value=None), ""
            more, no_match = gr.update(visible=False), gr.update()
        chatbot, conversation_id, _status, *rest = chat
        return (greeting, chat_list, chatbot, conversation_id, note, more, no_match, *rest, rows)

    async def on_select(conversation_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        views.show(request.session_hash, conversation_id)
        if not conversation_id:
            return await chat_updates(None)
        try:
            conversation = await holder.get().open(request.username, conversation_id)
        except ChatError as error:
            views.show(request.session_hash, None)
            return ([], None, problem(error), *button_updates(False, False), *settings_updates(None))
        return await chat_updates(conversation)

    def picked_row(evt: gr.EventData) -> tuple[str, str, bool]:
        """A click in the chat list: which chat (and the new title or pin state), checked."""
        row = listing.read_row_event(getattr(evt, "_data", None))
        return row.conversation_id, row.title, row.pinned

    def picked_chat(evt: gr.EventData) -> str:
        return picked_row(evt)[0]

    async def on_search(search: str, current: str | None, request: gr.Request) -> tuple[Any, ...]:
        try:
            return await list_updates(request.username, search, request.session_hash, current)
        except ChatError as error:
            return gr.update(), gr.update(), gr.update(), gr.update(value=problem(error))

    async def on_clear_search(current: str | None, request: gr.Request) -> tuple[Any, ...]:
        return ("", *await list_updates(request.username, "", request.session_hash, current))

    async def on_more(search: str, current: str | None, request: gr.Request) -> tuple[Any, ...]:
        view = views.page(request.session_hash)
        if view is not None:
            view.shown_chats = max(listing.PAGE_SIZE, view.shown_chats) + listing.PAGE_SIZE
        return await on_search(search, current, request)

    async def new_chat(request: gr.Request) -> tuple[Any, ...]:
        views.show(request.session_hash, None)
        chatbot, conversation_id, status, *rest = await chat_updates(None)
        options = await holder.get().last_options(request.username)
        return (chatbot, conversation_id, gr.update(value=None), status, *rest[:3], *settings_updates(options))

    async def on_screen_frame(username: str | None, session: str | None) -> tuple[Any, ...]:
        """(chatbot, conversation id, status, chat list, rows) of the chat this page shows now.

        Sent once by a stream whose own chat just left the screen: Gradio may deliver a
        frame the stream made a moment before the switch after the switch itself, and
        the client applies each frame as the whole chat, so that stale frame would stay
        on screen until the reply ended. This frame, later in the same stream, replaces it.
        """
        conversation_id = views.on_screen(session)
        conversation = None
        if conversation_id:
            try:
                conversation = await holder.get().open(username, conversation_id)
            except ChatError:
                conversation = None
        live = holder.get().live_text(conversation) if conversation else None
        view = chat_view(conversation, live, views.shown(session))
        return view, conversation_id, gr.update(), gr.update(), gr.update()

    async def relay(
        events: AsyncIterator[ChatEvent], bubbles: list[dict[str, str]], origin: str | None,
        username: str | None, search: str, session: str | None,
    ) -> AsyncIterator[tuple[tuple[Any, ...], bool] | None]:
        """Service events to frames (chatbot, conversation id, status, chat list, rows), each with
        whether it shows this stream's own chat; None while another chat is on screen."""
        conversation_id = origin
        # what the last frame showed: this stream's chat (ON_SCREEN) or another chat's id (or None)
        last_shown: object = ON_SCREEN

        async def elsewhere() -> tuple[tuple[Any, ...], bool] | None:
            """A frame of the chat on screen when that changed since this stream's last frame."""
            nonlocal last_shown
            if last_shown == views.on_screen(session):
                return None
            frame = await on_screen_frame(username, session)
            last_shown = frame[1]
            return frame, False

        async for event in events:
            if event.kind == "conversation":
                if event.conversation_id != conversation_id and views.showing(session, conversation_id):
                    views.show(session, event.conversation_id)  # the new chat is the one on screen
                conversation_id = event.conversation_id
                if views.showing(session, conversation_id):
                    chats, rows = await lists(username, search, session, conversation_id)
                    last_shown = ON_SCREEN
                    yield (bubbles, conversation_id, "", chats, rows), True
                else:
                    yield await elsewhere()
                continue
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
            if views.showing(session, conversation_id):
                last_shown = ON_SCREEN
                yield (bubbles, conversation_id, status, gr.update(), gr.update()), True
            else:
                yield await elsewhere()

    async def on_send(
        text: str, conversation_id: str | None, system_prompt: str, temperature: float, top_p: float,
        max_new_tokens: float, search: str, request: gr.Request,
    ) -> AsyncIterator[tuple[Any, ...]]:
        username, session = request.username, request.session_hash
        service = holder.get()
        conversation_id = conversation_id or None
        unchanged = (gr.update(),) * 6
        try:
            before = await service.open(username, conversation_id) if conversation_id else None
        except ChatError as error:
            yield [], valid_text(text or ""), None, problem(error), gr.update(), gr.update()
            return
        bubbles = conversation_bubbles(before, shown=views.shown(session))
        if before is not None and interrupted(before):
            bubbles[-1] = {"role": "assistant", "content": f"*{FINISH_NOTES['interrupted']}*"}
        history = list(bubbles)
        options = ChatOptions(system_prompt or "", temperature, top_p, max_new_tokens)  # checked by the service
        bubbles += [{"role": "user", "content": shown_as_text(text or "")}, {"role": "assistant", "content": "…"}]
        cleared = False
        try:
            events = service.send(username, conversation_id, text, options)
            async for frame in relay(events, bubbles, conversation_id, username, search, session):
                if frame is None:
                    yield unchanged
                    continue
                (chatbot, current_id, status, chats, rows), own = frame
                # the textbox empties only once the message is safely stored (and only in its own chat)
                yield chatbot, ("" if own and not cleared else gr.update()), current_id, status, chats, rows
                cleared = cleared or own
        except ChatError as error:  # busy, rate limit, bad input: the typed text goes back
            if views.showing(session, conversation_id):
                # the typed text goes back as it was, save what JSON cannot carry (a lone surrogate)
                yield history, valid_text(text or ""), conversation_id, problem(error), gr.update(), gr.update()
            else:
                gr.Warning(str(error))
                yield unchanged

    async def on_retry(
        conversation_id: str | None, temperature: float, top_p: float, max_new_tokens: float, search: str,
        request: gr.Request,
    ) -> AsyncIterator[tuple[Any, ...]]:
        username, session = request.username, request.session_hash
        service = holder.get()
        keep = gr.update(), gr.update()
        if not conversation_id:
            yield gr.update(), conversation_id, problem(ChatError("Open a chat first.")), *keep
            return
        try:
            conversation = await service.open(username, conversation_id)
            last_user = max(i for i, m in enumerate(conversation.messages) if m.role == "user")
        except ChatError as error:
            yield gr.update(), conversation_id, problem(error), *keep
            return
        except ValueError:
            yield gr.update(), conversation_id, problem(ChatError("There is no message to retry yet.")), *keep
            return
        kept = newest(conversation.messages[: last_user + 1], views.shown(session))[0]
        bubbles = with_user_versions(kept, [*(message_bubble(m) for m in kept), {"role": "assistant", "content": "…"}])
        options = ChatOptions("", temperature, top_p, max_new_tokens)  # checked by the service
        try:
            events = service.retry(username, conversation_id, options)
            async for frame in relay(events, bubbles, conversation_id, username, search, session):
                yield frame[0] if frame is not None else (gr.update(),) * 5
        except ChatError as error:
            if views.showing(session, conversation_id):
                yield chat_view(conversation, shown=views.shown(session)), conversation_id, problem(error), *keep
            else:
                gr.Warning(str(error))
                yield (gr.update(),) * 5

    def begin_reply() -> tuple[Any, Any, Any]:
        return button_updates(True)

    async def end_reply(request: gr.Request) -> tuple[Any, ...]:
        """After a send, retry or edit: the buttons for whatever chat is on screen now, that
        chat as stored (its version switches and ratings) unless a reply still streams there,
        and its id: a frame of the reply's own chat that Gradio delivered after a switch to
        another chat would otherwise leave the next message aimed at the chat no longer shown."""
        if views.page(request.session_hash) is None:
            # a page this server did not see load (open across a restart): what it shows is its own
            return (gr.update(), gr.update(), *button_updates(False, False))
        conversation_id = views.on_screen(request.session_hash)
        if not conversation_id:  # a new, empty chat is on screen
            return (chat_view(None), None, *button_updates(False, False))
        try:
            conversation = await holder.get().open(request.username, conversation_id)
        except ChatError:
            return (gr.update(), gr.update(), *button_updates(False, False))
        live = holder.get().live_text(conversation)
        shown = views.shown(request.session_hash)
        return (gr.update() if live is not None else marked_view(conversation, shown=shown), conversation_id,
                *button_updates(live is not None, has_exchange(conversation)))

    async def on_stop(conversation_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Stop the reply of the chat on screen at once; its stream shows and stores it as stopped."""
        service = holder.get()
        try:
            # a Stop right after Send may come before the reply has started (or, in a new
            # chat, before the chat exists): give it a moment to appear
            for _ in range(STOP_WAIT_STEPS):
                target = conversation_id or views.on_screen(request.session_hash)
                if await service.stop(request.username, target):
                    return "Stopped.", *button_updates(False, True)
                await asyncio.sleep(0.1)
        except ChatError as error:
            return problem(error), *button_updates(False)
        return "Nothing to stop.", *button_updates(False)

    async def on_undo(conversation_id: str | None, search: str, request: gr.Request) -> tuple[Any, ...]:
        """chatbot, status, chat list, conversation id, rows, send, stop, retry/undo."""
        keep = (gr.update(),) * 4
        if not conversation_id:
            return gr.update(), problem(ChatError("Open a chat first.")), gr.update(), gr.update(), *keep
        try:
            conversation = await holder.get().undo(request.username, conversation_id)
        except ChatError as error:
            return gr.update(), problem(error), gr.update(), gr.update(), *keep
        chats, rows = await lists(request.username, search, request.session_hash, conversation and conversation.id)
        if conversation is None:  # the chat had one exchange: it is gone, and so is its row
            views.show(request.session_hash, None)
            note = "Removed the last exchange; the chat was empty, so it is gone."
            return [], note, chats, None, rows, *button_updates(False, False)
        return (chat_view(conversation, shown=views.shown(request.session_hash)), "Removed the last exchange.", chats,
                conversation.id, rows, *button_updates(False, has_exchange(conversation)))

    async def on_rename(conversation_id: str | None, title: str, search: str, request: gr.Request) -> tuple[Any, ...]:
        """status, chat list, the title box, rows; the rows are redrawn either way (the page
        already shows the new title, which must go back if it was refused)."""
        session, note = request.session_hash, "Renamed."
        try:
            if not conversation_id:
                raise ChatError("Open a chat first.")
            await holder.get().rename(request.username, conversation_id, title or "")
        except ChatError as error:
            note = problem(error)
        try:
            chats, rows = await lists(request.username, search, session, views.on_screen(session) or conversation_id)
        except ChatError:
            chats, rows = gr.update(), gr.update()
        return note, chats, "" if note == "Renamed." else gr.update(), rows

    async def on_pin(conversation_id: str | None, pinned: bool, search: str, request: gr.Request) -> tuple[Any, ...]:
        """status, chat list, rows."""
        session = request.session_hash
        try:
            if not conversation_id:
                raise ChatError("Open a chat first.")
            await holder.get().pin(request.username, conversation_id, bool(pinned))
            chats, rows = await lists(request.username, search, session, views.on_screen(session) or conversation_id)
        except ChatError as error:
            return problem(error), gr.update(), gr.update()
        return ("Pinned to the top." if pinned else "Unpinned."), chats, rows

    async def on_delete(conversation_id: str | None, search: str, request: gr.Request) -> tuple[Any, ...]:
        """chatbot, conversation id, status, chat list, rows, send, stop, retry/undo.

        Any row can be deleted; the chat pane empties only when it showed that chat."""
        session = request.session_hash
        keep = (gr.update(),) * 5
        try:
            if not conversation_id:
                raise ChatError("Open a chat first.")
            await holder.get().delete(request.username, conversation_id)
        except ChatError as error:
            return gr.update(), gr.update(), problem(error), *keep
        on_screen = views.showing(session, conversation_id)
        if on_screen:
            views.show(session, None)
        chats, rows = await lists(request.username, search, session, views.on_screen(session))
        if not on_screen:
            return gr.update(), gr.update(), "Chat deleted.", chats, rows, *(gr.update(),) * 3
        return [], None, "Chat deleted.", chats, rows, *button_updates(False, False)

    # ------------------------------------------------------------ versions, edits, ratings

    async def on_switch_version(conversation_id: str | None, message_id: str, request: gr.Request) -> tuple[Any, ...]:
        """Show another version of a turn (the ‹ › arrows); the chat continues from it."""
        service = holder.get()
        try:
            if not conversation_id:
                raise ChatError("Open a chat first.")
            conversation = await service.show_version(request.username, conversation_id, message_id)
        except ChatError as error:
            return gr.update(), problem(error)
        return chat_view(conversation, service.live_text(conversation), views.shown(request.session_hash)), ""

    async def rated(username: str | None, conversation_id: str, rating: Any, shown: int) -> tuple[Any, ...]:
        """chatbot, status, comment row, rated message id, comment box after a rating changed."""
        conversation = await holder.get().open(username, conversation_id)
        if rating is None:
            return chat_view(conversation, shown=shown), "Rating removed.", gr.update(visible=False), "", ""
        thumb = "👍" if rating.value == "up" else "👎"
        note = f"Rated {thumb}. Add a short comment below if you like."
        return chat_view(conversation, shown=shown), note, gr.update(visible=True), gr.update(), rating.comment or ""

    async def on_like(conversation_id: str | None, like: gr.LikeData, request: gr.Request) -> tuple[Any, ...]:
        """The Chatbot's thumbs: up, down, or (clicking the same thumb again) no rating."""
        service, username = holder.get(), request.username
        index = like.index if isinstance(like.index, int) else like.index[0]
        shown = views.shown(request.session_hash)
        value = LIKED.get(like.liked) if isinstance(like.liked, bool) else None
        conversation = None
        try:
            if not conversation_id:
                raise ChatError("Open a chat first.")
            conversation = await service.open(username, conversation_id)
            # bubble i is message hidden + i: a long chat shows only its newest messages
            message = service.shown_message(conversation, index + shown_messages(conversation, shown)[1])
            comment = message.rating.comment if message.rating else None
            rating = await service.rate(username, conversation_id, message.id, value, comment)
            _, status, row, _, comment_box = await rated(username, conversation_id, rating, shown)
            chatbot = marked_view(await service.open(username, conversation_id), shown=shown)
        except ChatError as error:
            # also as a toast: while a reply streams, its frames rewrite the status line
            gr.Warning(str(error))
            live = service.live_text(conversation) if conversation else None
            chatbot = marked_view(conversation, live, shown) if conversation else gr.update()
            return chatbot, problem(error), gr.update(visible=False), "", ""
        return chatbot, status, row, str(message.id) if rating else "", comment_box

    async def on_rate(
        conversation_id: str | None, message_id: str, value: str, comment: str, request: gr.Request
    ) -> tuple[Any, ...]:
        """API: rate a reply by id ("up", "down", or "" to clear) with an optional comment."""
        try:
            if not conversation_id:
                raise ChatError("Open a chat first.")
            rating = await holder.get().rate(request.username, conversation_id, message_id, value or None,
                                             comment or None)
            chatbot, status, *_ = await rated(request.username, conversation_id, rating,
                                              views.shown(request.session_hash))
        except ChatError as error:
            return gr.update(), problem(error)
        return chatbot, status

    async def on_comment(
        conversation_id: str | None, message_id: str, comment: str, request: gr.Request
    ) -> tuple[Any, ...]:
        try:
            if not conversation_id or not message_id:
                raise ChatError("Rate a reply first (👍 or 👎), then add a comment.")
            await holder.get().comment(request.username, conversation_id, message_id, comment or "")
            chatbot, *_ = await rated(request.username, conversation_id, None, views.shown(request.session_hash))
        except ChatError as error:
            return gr.update(), problem(error)
        return chatbot, "Comment saved."

    async def edit_stream(
        conversation_id: str | None, message_id: Any, text: str, temperature: float, top_p: float,
        max_new_tokens: float, search: str, request: gr.Request,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """A new version of a sent message, and its reply streaming; the old branch stays."""
        username, session = request.username, request.session_hash
        service = holder.get()
        conversation = None
        try:
            if not conversation_id:
                raise ChatError("Open a chat first.")
            conversation = await service.open(username, conversation_id)
            edited = service.stored_message(conversation, message_id)
            kept = [] if edited.parent_id is None else path_to(conversation.all_messages(), edited.parent_id)
            kept = newest(kept, views.shown(session))[0]
            bubbles = with_user_versions(kept, [message_bubble(m) for m in kept])
            bubbles += [{"role": "user", "content": shown_as_text(text or "")}, {"role": "assistant", "content": "…"}]
            options = ChatOptions("", temperature, top_p, max_new_tokens)  # checked by the service
            events = service.edit(username, conversation_id, edited.id, text, options)
            async for frame in relay(events, bubbles, conversation_id, username, search, session):
                yield frame[0] if frame is not None else (gr.update(),) * 5
        except ChatError as error:
            if views.showing(session, conversation_id):
                live = service.live_text(conversation) if conversation else None
                view = chat_view(conversation, live, views.shown(session)) if conversation else gr.update()
                yield view, conversation_id, problem(error), gr.update(), gr.update()
            else:
                gr.Warning(str(error))
                yield (gr.update(),) * 5

    async def on_edit(
        conversation_id: str | None, message_id: str, text: str, temperature: float, top_p: float,
        max_new_tokens: float, search: str, request: gr.Request,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """API: edit the user message ``message_id``."""
        async for update in edit_stream(conversation_id, message_id, text, temperature, top_p, max_new_tokens,
                                        search, request):
            yield update

    async def on_chat_edit(
        conversation_id: str | None, temperature: float, top_p: float, max_new_tokens: float, search: str,
        edit: gr.EditData, request: gr.Request,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """The Chatbot's own edit of a user bubble: its position on screen names the message."""
        index = edit.index if isinstance(edit.index, int) else edit.index[0]
        value = edit.value
        if isinstance(value, list):
            value = "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in value)
        message_id: Any = None
        try:
            if conversation_id:
                conversation = await holder.get().open(request.username, conversation_id)
                index += shown_messages(conversation, views.shown(request.session_hash))[1]
                if 0 <= index < len(conversation.messages):
                    message_id = conversation.messages[index].id
        except ChatError:
            pass
        async for update in edit_stream(conversation_id, message_id, str(value or ""), temperature, top_p,
                                        max_new_tokens, search, request):
            yield update

    async def earlier_control(conversation_id: str | None, request: gr.Request) -> Any:
        """The "Show earlier messages" button of the chat on screen: shown when some are left out."""
        if not conversation_id:
            return gr.update(visible=False)
        try:
            conversation = await holder.get().open(request.username, conversation_id)
        except ChatError:
            return gr.update(visible=False)
        hidden = shown_messages(conversation, views.shown(request.session_hash))[1]
        return gr.update(visible=hidden > 0, value=earlier_label(hidden))

    async def on_earlier(conversation_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        """One more page of the open chat's earlier messages."""
        view = views.page(request.session_hash)
        shown = more(view.shown_messages if view else PAGE_MESSAGES)
        if view is not None:
            view.shown_messages = shown
        if not conversation_id:
            return gr.update(), gr.update(visible=False), ""
        try:
            conversation = await holder.get().open(request.username, conversation_id)
        except ChatError as error:
            return gr.update(), gr.update(visible=False), problem(error)
        hidden = shown_messages(conversation, shown)[1]
        bubbles = conversation_bubbles(conversation, holder.get().live_text(conversation), shown)
        return bubbles, gr.update(visible=hidden > 0, value=earlier_label(hidden)), ""

    def forget_page(request: gr.Request) -> None:
        views.forget(request.session_hash)

    with gr.Blocks(title="Team Chat", delete_cache=(600, 3600)) as demo:
        # The open chat's id lives in a hidden box rather than gr.State so every endpoint
        # takes the id explicitly, from the page or from an API client, and checks it.
        conversation_state = gr.Textbox(visible="hidden", elem_id="conversation-id")
        timezone = gr.Textbox("UTC", visible="hidden", elem_id="timezone")
        # the chat a row's menu acts on (any row, not only the open chat), and what it asked for
        row_id = gr.Textbox(visible="hidden", elem_id="row-id")
        row_title = gr.Textbox(visible="hidden", elem_id="row-title")
        row_pinned = gr.Checkbox(visible="hidden", elem_id="row-pinned")
        with gr.Sidebar(label="Chats", open=True, elem_id="chats-sidebar"):
            greeting = gr.Markdown(elem_id="greeting")
            with gr.Row(elem_id="sidebar-actions"):
                new_chat_button = gr.Button("+ New chat", variant="primary", scale=4, elem_id="new-chat")
                theme_button = gr.Button("◐", scale=1, min_width=40, elem_id="theme-toggle")
            with gr.Row(elem_id="search-row"):
                search = gr.Textbox(
                    placeholder="Search titles and messages", show_label=False, elem_id="search", scale=8,
                )
                clear_search = gr.Button("✕", scale=1, min_width=36, elem_id="clear-search", size="sm")
            no_match = gr.Markdown(elem_id="no-match")
            chat_rows = ChatRows("", elem_id="chat-list", js_on_load=CHAT_LIST_JS, apply_default_css=False)
            # the same list as data, for API clients (the page shows the rows above)
            chat_list = gr.Radio(choices=[], label="Your chats", visible=False, elem_id="chat-list-data")
            more_button = gr.Button("Show older chats", size="sm", visible=False, elem_id="more-chats")
            gr.HTML(
                '<a href="export/all?format=jsonl" download id="export-all-link">Download all my chats (JSONL)</a>'
                '<a href="export/all?format=preferences" download id="export-preferences-link">'
                'Download rated pairs (preferences JSONL)</a>',
                elem_id="sidebar-footer", apply_default_css=False, js_on_load=None,
            )
            with gr.Row():
                gr.Button("Account", link="/account", size="sm", elem_id="account")
                gr.Button("Log out", link="/logout", size="sm", elem_id="logout")
        with gr.Sidebar(label="Settings", open=False, position="right", elem_id="settings-sidebar"):
            gr.Markdown("**Settings of this chat** (kept with it; a new chat starts with your last ones)")
            system_prompt = gr.Textbox(label="System prompt (set when a chat starts)", lines=3,
                                       elem_id="system-prompt")
            temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature (0 = deterministic)",
                                    elem_id="temperature")
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top p", elem_id="top-p")
            max_new_tokens = gr.Slider(
                1, settings.max_new_tokens, value=min(256, settings.max_new_tokens), step=1, label="Max new tokens",
                elem_id="max-new-tokens",
            )
        earlier_button = gr.Button("Show earlier messages", size="sm", visible=False, elem_id="earlier-messages")
        chatbot = gr.Chatbot(
            label="Chat", elem_id="chat", buttons=["copy", "copy_all"], sanitize_html=True, height="65vh",
            placeholder="Start a new chat below, or open one of yours from the sidebar.", show_label=False,
            editable="user", feedback_options=("Like", "Dislike"),
        )
        status = gr.Markdown(elem_id="status")
        with gr.Row(visible=False, elem_id="rating-row") as rating_row:
            rating_comment = gr.Textbox(
                placeholder="Why? A short comment, e.g. “wrong fact”, “too long” (optional, at most 200 characters)",
                show_label=False, max_lines=1, max_length=200, scale=6, elem_id="rating-comment",
            )
            save_comment = gr.Button("Save comment", size="sm", scale=1, min_width=90, elem_id="save-comment")
        # Ids for the version arrows, ratings and edits: hidden boxes, so API clients pass them explicitly too
        rated_message = gr.Textbox(visible="hidden", elem_id="rated-message")
        rating_value = gr.Textbox(visible="hidden", elem_id="rating-value")
        version_target = gr.Textbox(visible="hidden", elem_id="version-target")
        edit_target = gr.Textbox(visible="hidden", elem_id="edit-target")
        edit_text = gr.Textbox(visible="hidden", elem_id="edit-text")
        switch_version = gr.Button("Switch version", visible="hidden", elem_id="switch-version")
        rate_button = gr.Button("Rate", visible="hidden", elem_id="rate")
        edit_button = gr.Button("Edit", visible="hidden", elem_id="edit")
        with gr.Row(equal_height=True, elem_id="composer"):
            message = gr.Textbox(
                placeholder="Message the model… (Enter sends, Shift+Enter adds a line)", show_label=False,
                lines=2, max_lines=12, scale=8, elem_id="message", autofocus=True,
            )
            send_button = gr.Button("Send", variant="primary", scale=1, min_width=70, elem_id="send")
            stop_button = gr.Button("Stop", variant="stop", scale=1, min_width=70, elem_id="stop", visible=False)
        with gr.Row(elem_id="reply-actions", visible=False) as reply_actions:
            retry_button = gr.Button("↻ Retry", size="sm", elem_id="retry")
            undo_button = gr.Button("↶ Undo", size="sm", elem_id="undo")

        # page-only outputs (buttons, rows, layout) come last or are left out of the API by Gradio,
        # so every endpoint keeps the shape API clients know
        buttons = [send_button, stop_button, reply_actions]
        settings_boxes = [system_prompt, temperature, top_p, max_new_tokens]
        chat_outputs = [chatbot, conversation_state, status, *buttons, *settings_boxes]
        # after an event that redrew the chat: its like/dislike marks
        marks_after: dict[str, Any] = dict(
            fn=sync_marks, inputs=[conversation_state], outputs=[chatbot], api_name=False, show_progress="hidden"
        )
        list_outputs = [chat_list, chat_rows, more_button, no_match]
        row_inputs = [row_id, row_title, row_pinned]
        quick = {"api_name": False, "queue": False, "show_progress": "hidden"}

        demo.load(
            on_load, [timezone], [greeting, chat_list, chatbot, conversation_state, status, more_button, no_match,
                                  *buttons, *settings_boxes, chat_rows],
            api_name="load", js=TIMEZONE_JS,
        ).then(**marks_after)
        demo.unload(forget_page)
        # the page's address follows the chat on screen, whoever changed it
        conversation_state.change(None, [conversation_state], None, js=SET_ADDRESS_JS)
        # long chats open at their newest page; the button above the chat brings earlier ones
        conversation_state.change(earlier_control, [conversation_state], [earlier_button], api_name=False,
                                  show_progress="hidden")
        earlier_button.click(on_earlier, [conversation_state], [chatbot, earlier_button, status], api_name="earlier",
                             show_progress="hidden").then(**marks_after)
        # a row of the list: its script sends the row's chat id with the event (page_assets.CHAT_LIST_JS)
        chat_rows.open_chat(picked_chat, None, [conversation_state], **quick).then(
            on_select, [conversation_state], chat_outputs, api_name="open", show_progress="hidden",
        ).then(**marks_after)
        chat_rows.rename_chat(picked_row, None, row_inputs, **quick).then(
            on_rename, [row_id, row_title, search], [status, chat_list, row_title, chat_rows], api_name="rename",
            show_progress="hidden",
        )
        chat_rows.pin_chat(picked_row, None, row_inputs, **quick).then(
            on_pin, [row_id, row_pinned, search], [status, chat_list, chat_rows], api_name="pin",
            show_progress="hidden",
        )
        chat_rows.delete_chat(picked_row, None, row_inputs, **quick).then(
            on_delete, [row_id, search], [chatbot, conversation_state, status, chat_list, chat_rows, *buttons],
            api_name="delete", show_progress="hidden",
        ).then(**marks_after)
        # .change, not .input: pasting and clearing must search too; always the latest text
        search.change(on_search, [search, conversation_state], list_outputs, api_name="search",
                      show_progress="hidden", trigger_mode="always_last")
        clear_search.click(on_clear_search, [conversation_state], [search, *list_outputs], api_name=False,
                           show_progress="hidden")
        more_button.click(on_more, [search, conversation_state], list_outputs, api_name=False)
        theme_button.click(None, None, None, js=TOGGLE_THEME_JS)
        new_chat_outputs = [chatbot, conversation_state, chat_list, status, *buttons, *settings_boxes]
        new_chat_button.click(new_chat, None, new_chat_outputs, api_name="new_chat").then(
            None, None, None, js=NEW_CHAT_JS
        ).then(**marks_after)
        # the chatbot's own trash button clears the view only: make it start a new chat
        chatbot.clear(new_chat, None, new_chat_outputs, api_name=False).then(
            None, None, None, js=NEW_CHAT_JS
        ).then(**marks_after)
        send_inputs = [message, conversation_state, system_prompt, temperature, top_p, max_new_tokens, search]
        send_outputs = [chatbot, message, conversation_state, status, chat_list, chat_rows]
        # Enter in the message box clicks Send (see page_assets.PAGE_JS); "multiple": a reply
        # streaming in one chat must not block sending in another
        send_button.click(begin_reply, None, buttons, api_name=False, show_progress="hidden", queue=False)
        send_button.click(
            on_send, send_inputs, send_outputs, api_name="send", show_progress="hidden", trigger_mode="multiple",
            concurrency_id=REPLY_EVENTS,
        ).then(end_reply, None, [chatbot, conversation_state, *buttons], api_name=False, show_progress="hidden")
        retry_button.click(begin_reply, None, buttons, api_name=False, show_progress="hidden", queue=False)
        retry_button.click(
            on_retry, [conversation_state, temperature, top_p, max_new_tokens, search],
            [chatbot, conversation_state, status, chat_list, chat_rows], api_name="retry", show_progress="hidden",
            trigger_mode="multiple", concurrency_id=REPLY_EVENTS,
        ).then(end_reply, None, [chatbot, conversation_state, *buttons], api_name=False, show_progress="hidden")
        edit_outputs = [chatbot, conversation_state, status, chat_list, chat_rows]
        edit_settings = [temperature, top_p, max_new_tokens, search]
        chatbot.edit(begin_reply, None, buttons, api_name=False, show_progress="hidden", queue=False)
        chatbot.edit(
            on_chat_edit, [conversation_state, *edit_settings], edit_outputs, api_name=False,
            show_progress="hidden", trigger_mode="multiple", concurrency_id=REPLY_EVENTS,
        ).then(end_reply, None, [chatbot, conversation_state, *buttons], api_name=False, show_progress="hidden")
        edit_button.click(
            on_edit, [conversation_state, edit_target, edit_text, *edit_settings], edit_outputs, api_name="edit",
            show_progress="hidden", trigger_mode="multiple", concurrency_id=REPLY_EVENTS,
        ).then(end_reply, None, [chatbot, conversation_state, *buttons], api_name=False, show_progress="hidden")
        switch_version.click(
            on_switch_version, [conversation_state, version_target], [chatbot, status], api_name="switch_version",
            js=PICKED_VERSION_JS, show_progress="hidden",
        ).then(**marks_after)
        chatbot.like(
            on_like, [conversation_state], [chatbot, status, rating_row, rated_message, rating_comment],
            api_name=False, show_progress="hidden",
        )
        rate_button.click(
            on_rate, [conversation_state, rated_message, rating_value, rating_comment], [chatbot, status],
            api_name="rate",
        ).then(**marks_after)
        save_comment.click(
            on_comment, [conversation_state, rated_message, rating_comment], [chatbot, status], api_name="comment"
        ).then(**marks_after)
        stop_button.click(on_stop, [conversation_state], [status, *buttons], api_name="stop",
                          show_progress="hidden")
        undo_button.click(
            on_undo, [conversation_state, search],
            [chatbot, status, chat_list, conversation_state, chat_rows, *buttons], api_name="undo",
        ).then(**marks_after)
        # a comment box left open belongs to the chat it was opened in
        for opened in (chat_rows.open_chat, new_chat_button.click):
            opened(lambda: gr.update(visible=False), None, rating_row, api_name=False, queue=False)
    return demo
