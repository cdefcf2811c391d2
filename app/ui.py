"""The Gradio Blocks page: layout and event wiring only; every rule lives in ChatService.

Handlers read the user from ``request.username`` (our login, app/sessions.py) and nothing the
browser sends can name another user. Text is shown as text: HTML in messages and
titles is escaped outside code, so a ``<script>`` is displayed, never run.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr

from app.chat import ChatError, ChatEvent, ChatOptions, ChatService, interrupted
from app.config import Settings
from storage.repository import ConversationRecord, MessageRecord

CODE_SPANS = re.compile(r"(```[\s\S]*?```|`[^`\n]+`)")
FINISH_NOTES = {
    "stopped": "(stopped)",
    "disconnected": "(stopped: the page was closed)",
    "length": "… cut at the max new tokens limit",
    "error": "⚠ the model failed on this reply; press Retry",
    "interrupted": "⚠ interrupted (the server stopped)",
    "shutdown": "(stopped by the server)",
}
PENDING_NOTE = "💾 saved locally, will be stored when the database is back"
# the Gradio concurrency group of the events that stream a reply; app/server.py sizes it
REPLY_EVENTS = "replies"
INTERRUPTED_NOTE = "⚠ This reply was interrupted (the server stopped). Press **Retry** to generate it."

CSS = """
#chat { min-height: 55vh; }
#chat .message.user, #chat .user-row .message { background: #2f6feb; color: #fff; }
#chat .message.bot, #chat .bot-row .message { background: #f2f3f5; color: #111; }
#status { min-height: 1.5em; }
.finish-note { opacity: .7; font-style: italic; }
@media (max-width: 700px) { #chat { min-height: 60vh; } .gradio-container { padding: 4px !important; } }
"""

SET_ADDRESS_JS = """
(conversationId) => {
  const url = new URL(window.location.href);
  if (conversationId) { url.searchParams.set('c', conversationId); } else { url.searchParams.delete('c'); }
  window.history.replaceState(null, '', url);
  return [];
}
"""


class ServiceHolder:
    """The service appears when the server's lifespan has started it; the UI is built before."""

    def __init__(self) -> None:
        self.service: ChatService | None = None

    def get(self) -> ChatService:
        if self.service is None:
            raise ChatError("The server is still starting; try again in a few seconds.")
        return self.service


def shown_as_text(text: str) -> str:
    """Escape HTML outside code spans/blocks (Markdown already shows code literally)."""
    parts = CODE_SPANS.split(text)
    return "".join(part if index % 2 else html.escape(part, quote=False) for index, part in enumerate(parts))


def message_bubble(message: MessageRecord) -> dict[str, str]:
    if message.role == "user":
        return {"role": "user", "content": shown_as_text(message.content)}
    if message.role == "system":
        return {"role": "assistant", "content": "*System prompt:* " + shown_as_text(message.content)}
    content = shown_as_text(message.content)
    note = FINISH_NOTES.get(message.finish_reason or "")
    if note:
        content = (content + "\n\n" if content else "") + f"*{note}*"
    if message.pending:
        content = (content + "\n\n" if content else "") + f"*{PENDING_NOTE}*"
    return {"role": "assistant", "content": content}


def conversation_bubbles(conversation: ConversationRecord | None) -> list[dict[str, str]]:
    if conversation is None:
        return []
    bubbles = [message_bubble(m) for m in conversation.messages]
    if interrupted(conversation):
        bubbles.append({"role": "assistant", "content": INTERRUPTED_NOTE})
    return bubbles


def problem(error: Exception) -> str:
    return f"⚠ {html.escape(str(error), quote=False)}"


def build_ui(holder: ServiceHolder, settings: Settings) -> gr.Blocks:
    """The chat page. Wiring only: each handler calls one ChatService method."""

    async def chat_choices(username: str | None, search: str = "") -> list[tuple[str, str]]:
        summaries = await holder.get().list_conversations(username, search or "")
        return [(s.title, s.id) for s in summaries]

    async def on_load(request: gr.Request) -> tuple[Any, ...]:
        username = request.username
        service = holder.get()
        greeting = f"Signed in as **{html.escape(username or '')}** · model `{service.model_name}`"
        try:
            choices = await chat_choices(username)
        except ChatError as error:
            return greeting, gr.update(choices=[], value=None), [], None, problem(error)
        wanted = request.query_params.get("c") if request.query_params else None
        if not wanted:
            return greeting, gr.update(choices=choices, value=None), [], None, ""
        try:
            conversation = await service.open(username, wanted)
        except ChatError as error:
            return greeting, gr.update(choices=choices, value=None), [], None, problem(error)
        bubbles = conversation_bubbles(conversation)
        return greeting, gr.update(choices=choices, value=conversation.id), bubbles, conversation.id, ""

    async def on_select(conversation_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        if not conversation_id:
            return [], None, ""
        try:
            conversation = await holder.get().open(request.username, conversation_id)
        except ChatError as error:
            return [], None, problem(error)
        return conversation_bubbles(conversation), conversation.id, ""

    async def on_search(search: str, current: str | None, request: gr.Request) -> Any:
        try:
            choices = await chat_choices(request.username, search)
        except ChatError as error:
            gr.Warning(str(error))
            return gr.update()
        return gr.update(choices=choices, value=current if current in {c[1] for c in choices} else None)

    def new_chat() -> tuple[Any, ...]:
        return [], None, gr.update(value=None), ""

    async def stream_events(
        events: AsyncIterator[ChatEvent], bubbles: list[dict[str, str]], conversation_id: str | None,
        username: str | None, search: str,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Turn service events into (chatbot, conversation id, status, chat list) updates."""
        async for event in events:
            conversation_id = event.conversation_id
            status = ""
            if event.kind == "conversation":
                yield bubbles, conversation_id, "", gr.update(
                    choices=await chat_choices(username, search), value=conversation_id
                )
                continue
            if event.kind == "waiting":
                status = f"⏳ Waiting for the model: {event.position} request(s) ahead of yours…"
            if event.kind == "done" and event.message is not None:
                bubbles[-1] = message_bubble(event.message)
                if event.message.pending:
                    status = f"⚠ The database did not take this reply: {PENDING_NOTE}."
            else:
                bubbles[-1] = {"role": "assistant", "content": shown_as_text(event.text) or "…"}
            yield bubbles, conversation_id, status, gr.update()

    async def on_send(
        text: str, conversation_id: str | None, system_prompt: str, temperature: float, top_p: float,
        max_new_tokens: float, search: str, request: gr.Request,
    ) -> AsyncIterator[tuple[Any, ...]]:
        username = request.username
        service = holder.get()
        try:
            before = await service.open(username, conversation_id) if conversation_id else None
        except ChatError as error:
            yield [], text, None, problem(error), gr.update()
            return
        bubbles = conversation_bubbles(before)
        if before is not None and interrupted(before):
            bubbles[-1] = {"role": "assistant", "content": f"*{FINISH_NOTES['interrupted']}*"}
        history = list(bubbles)
        options = ChatOptions(system_prompt or "", temperature, top_p, int(max_new_tokens))
        bubbles += [{"role": "user", "content": shown_as_text(text or "")}, {"role": "assistant", "content": "…"}]
        try:
            events = service.send(username, conversation_id, text, options)
            first = True
            async for chatbot, current_id, status, choices in stream_events(
                events, bubbles, conversation_id, username, search
            ):
                # the textbox empties only once the message is safely stored
                conversation_id = current_id
                yield chatbot, ("" if first else gr.update()), current_id, status, choices
                first = False
        except ChatError as error:  # busy, rate limit, bad input: the typed text goes back
            yield history, text, conversation_id, problem(error), gr.update()

    async def on_retry(
        conversation_id: str | None, temperature: float, top_p: float, max_new_tokens: float, search: str,
        request: gr.Request,
    ) -> AsyncIterator[tuple[Any, ...]]:
        username = request.username
        service = holder.get()
        if not conversation_id:
            yield gr.update(), conversation_id, problem(ChatError("Open a chat first.")), gr.update()
            return
        try:
            conversation = await service.open(username, conversation_id)
            last_user = max(i for i, m in enumerate(conversation.messages) if m.role == "user")
        except ChatError as error:
            yield gr.update(), conversation_id, problem(error), gr.update()
            return
        except ValueError:
            yield gr.update(), conversation_id, problem(ChatError("There is no message to retry yet.")), gr.update()
            return
        bubbles = [message_bubble(m) for m in conversation.messages[: last_user + 1]]
        bubbles.append({"role": "assistant", "content": "…"})
        options = ChatOptions("", temperature, top_p, int(max_new_tokens))
        try:
            events = service.retry(username, conversation_id, options)
            async for update in stream_events(events, bubbles, conversation_id, username, search):
                yield update
        except ChatError as error:
            yield conversation_bubbles(conversation), conversation_id, problem(error), gr.update()

    async def after_stop(conversation_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Show the stopped reply as stored (its partial text and the stopped mark)."""
        if not conversation_id:
            return gr.update(), ""
        service = holder.get()
        for _ in range(30):
            try:
                conversation = await service.open(request.username, conversation_id)
            except ChatError as error:
                return gr.update(), problem(error)
            if not interrupted(conversation):
                return conversation_bubbles(conversation), "Stopped."
            await asyncio.sleep(0.1)
        return conversation_bubbles(conversation), "Stopped."

    async def on_undo(conversation_id: str | None, search: str, request: gr.Request) -> tuple[Any, ...]:
        if not conversation_id:
            return gr.update(), problem(ChatError("Open a chat first.")), gr.update()
        try:
            conversation = await holder.get().undo(request.username, conversation_id)
        except ChatError as error:
            return gr.update(), problem(error), gr.update()
        choices = await chat_choices(request.username, search)
        return conversation_bubbles(conversation), "Removed the last exchange.", gr.update(choices=choices)

    async def on_rename(conversation_id: str | None, title: str, search: str, request: gr.Request) -> tuple[Any, ...]:
        if not conversation_id:
            return problem(ChatError("Open a chat first.")), gr.update(), gr.update()
        try:
            await holder.get().rename(request.username, conversation_id, title or "")
        except ChatError as error:
            return problem(error), gr.update(), gr.update()
        choices = await chat_choices(request.username, search)
        return "Renamed.", gr.update(choices=choices, value=conversation_id), ""

    def ask_delete(conversation_id: str | None) -> tuple[Any, ...]:
        if not conversation_id:
            return gr.update(visible=False), problem(ChatError("Open a chat first."))
        return gr.update(visible=True), "Delete this chat for good? Confirm below."

    async def on_delete(conversation_id: str | None, search: str, request: gr.Request) -> tuple[Any, ...]:
        try:
            if not conversation_id:
                raise ChatError("Open a chat first.")
            await holder.get().delete(request.username, conversation_id)
        except ChatError as error:
            return gr.update(), gr.update(), gr.update(visible=False), problem(error), gr.update()
        choices = await chat_choices(request.username, search)
        return [], None, gr.update(visible=False), "Chat deleted.", gr.update(choices=choices, value=None)

    def exporter(fmt: str, whole_history: bool) -> Callable[..., Any]:
        async def export(conversation_id: str | None, request: gr.Request) -> tuple[Any, str]:
            if not whole_history and not conversation_id:
                return None, problem(ChatError("Open a chat first."))
            try:
                path = await holder.get().export(request.username, fmt, None if whole_history else conversation_id)
            except ChatError as error:
                return None, problem(error)
            return str(path), "Export ready: use the download link."

        export.__name__ = f"export_{'all' if whole_history else 'chat'}_{fmt}"
        return export

    with gr.Blocks(title="Team Chat", delete_cache=(600, 3600)) as demo:
        # The open chat's id lives in a hidden box rather than gr.State so every endpoint
        # takes the id explicitly, from the page or from an API client, and checks it.
        conversation_state = gr.Textbox(visible="hidden", elem_id="conversation-id")
        with gr.Sidebar(label="Chats", open=True):
            greeting = gr.Markdown()
            new_chat_button = gr.Button("New chat", variant="primary")
            search = gr.Textbox(placeholder="Search titles and messages", show_label=False, elem_id="search")
            chat_list = gr.Radio(choices=[], label="Your chats", elem_id="chat-list")
            with gr.Accordion("Rename or delete this chat", open=False):
                rename_box = gr.Textbox(label="New title", max_lines=1, elem_id="rename-box")
                rename_button = gr.Button("Rename")
                delete_button = gr.Button("Delete chat", variant="stop")
                with gr.Row(visible=False) as confirm_row:
                    confirm_delete = gr.Button("Yes, delete it", variant="stop", elem_id="confirm-delete")
                    cancel_delete = gr.Button("Cancel")
            with gr.Accordion("Export", open=False):
                export_json = gr.Button("This chat as JSON", elem_id="export-json")
                export_md = gr.Button("This chat as Markdown", elem_id="export-md")
                export_all = gr.Button("All my chats as JSONL", elem_id="export-all")
                export_file = gr.File(label="Download", interactive=False, elem_id="export-file")
            with gr.Row():
                gr.Button("Account", link="/account", size="sm", elem_id="account")
                gr.Button("Log out", link="/logout", size="sm", elem_id="logout")
        chatbot = gr.Chatbot(
            label="Chat", elem_id="chat", buttons=["copy", "copy_all"], sanitize_html=True, height="60vh",
            placeholder="Start a new chat below, or open one of yours from the sidebar.",
        )
        status = gr.Markdown(elem_id="status")
        with gr.Row(equal_height=True):
            message = gr.Textbox(
                placeholder="Message the model… (Enter sends, Shift+Enter for a new line)", show_label=False,
                lines=2, max_lines=12, scale=8, elem_id="message", autofocus=True,
            )
            send_button = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        with gr.Row():
            stop_button = gr.Button("Stop", elem_id="stop")
            retry_button = gr.Button("Retry", elem_id="retry")
            undo_button = gr.Button("Undo", elem_id="undo")
        with gr.Accordion("Settings", open=False):
            system_prompt = gr.Textbox(label="System prompt (applies when a new chat starts)", lines=2)
            temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature (0 = deterministic)")
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top p")
            max_new_tokens = gr.Slider(
                1, settings.max_new_tokens, value=min(256, settings.max_new_tokens), step=1, label="Max new tokens"
            )

        demo.load(on_load, None, [greeting, chat_list, chatbot, conversation_state, status], api_name="load")
        # the radio's choices change per user, so its value is copied in the browser, then checked
        chat_list.input(None, [chat_list], [conversation_state], js="(picked) => picked").then(
            on_select, [conversation_state], [chatbot, conversation_state, status], api_name="open"
        ).then(None, [conversation_state], None, js=SET_ADDRESS_JS)
        search.input(on_search, [search, conversation_state], [chat_list], api_name="search", show_progress="hidden")
        new_chat_outputs = [chatbot, conversation_state, chat_list, status]
        new_chat_button.click(new_chat, None, new_chat_outputs, api_name="new_chat").then(
            None, [conversation_state], None, js=SET_ADDRESS_JS
        )
        # the chatbot's own trash button clears the view only: make it start a new chat
        chatbot.clear(new_chat, None, new_chat_outputs, api_name=False).then(
            None, [conversation_state], None, js=SET_ADDRESS_JS
        )
        send_inputs = [message, conversation_state, system_prompt, temperature, top_p, max_new_tokens, search]
        send_outputs = [chatbot, message, conversation_state, status, chat_list]
        sent_by_click = send_button.click(
            on_send, send_inputs, send_outputs, api_name="send", concurrency_id=REPLY_EVENTS
        )
        sent_by_enter = message.submit(
            on_send, send_inputs, send_outputs, api_name=False, concurrency_id=REPLY_EVENTS
        )
        for event in (sent_by_click, sent_by_enter):
            event.then(None, [conversation_state], None, js=SET_ADDRESS_JS)
        retried = retry_button.click(
            on_retry, [conversation_state, temperature, top_p, max_new_tokens, search],
            [chatbot, conversation_state, status, chat_list], api_name="retry", concurrency_id=REPLY_EVENTS,
        )
        stop_button.click(
            after_stop, [conversation_state], [chatbot, status], cancels=[sent_by_click, sent_by_enter, retried],
            api_name="stop",
        )
        undo_button.click(on_undo, [conversation_state, search], [chatbot, status, chat_list], api_name="undo")
        rename_button.click(
            on_rename, [conversation_state, rename_box, search], [status, chat_list, rename_box], api_name="rename"
        )
        delete_button.click(ask_delete, [conversation_state], [confirm_row, status], api_name=False)
        cancel_delete.click(lambda: (gr.update(visible=False), ""), None, [confirm_row, status], api_name=False)
        confirm_delete.click(
            on_delete, [conversation_state, search], [chatbot, conversation_state, confirm_row, status, chat_list],
            api_name="delete",
        ).then(None, [conversation_state], None, js=SET_ADDRESS_JS)
        export_json.click(exporter("json", False), [conversation_state], [export_file, status], api_name="export_json")
        export_md.click(exporter("md", False), [conversation_state], [export_file, status], api_name="export_markdown")
        export_all.click(exporter("jsonl", True), [conversation_state], [export_file, status], api_name="export_all")
    return demo
