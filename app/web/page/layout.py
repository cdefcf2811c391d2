"""The page's components, declared once, in the order the page shows them.

Handlers and the event graph (app/web/page/wiring.py) name components through
:class:`PageComponents`, never by a position in a tuple. The order of declaration
is part of the page's contract: Gradio numbers components in that order, and API
clients see some of those numbers in the names of unlabelled outputs.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import gradio as gr

from app.config import Settings
from app.web.page.assets import CHAT_LIST_JS
from app.web.page.lean_blocks import TextChatbot

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

EXPORT_ALL_LINKS = (
    '<a href="export/all?format=jsonl" download id="export-all-link">Download all my chats (JSONL)</a>'
    '<a href="export/all?format=preferences" download id="export-preferences-link">'
    'Download rated pairs (preferences JSONL)</a>'
)


@dataclass(frozen=True)
class PageComponents:
    """Every component a handler reads or changes (static ones, like the footer links, are not kept)."""

    # The open chat's id lives in a hidden box rather than gr.State so every endpoint
    # takes the id explicitly, from the page or from an API client, and checks it.
    conversation_state: gr.Textbox
    timezone: gr.Textbox
    # the chat a row's menu acts on (any row, not only the open chat), and what it asked for
    row_id: gr.Textbox
    row_title: gr.Textbox
    row_pinned: gr.Checkbox
    # the sidebar of chats
    greeting: gr.Markdown
    new_chat_button: gr.Button
    # the model of the chat on screen (a new chat's: the default first); hidden when only one is offered
    model_choice: gr.Dropdown
    theme_button: gr.Button
    search: gr.Textbox
    clear_search: gr.Button
    no_match: gr.Markdown
    chat_rows: gr.HTML
    chat_list: gr.Radio
    more_button: gr.Button
    # the settings sidebar
    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_new_tokens: gr.Slider
    # the chat
    earlier_button: gr.Button
    chatbot: gr.Chatbot
    status: gr.Markdown
    rating_row: gr.Row
    rating_comment: gr.Textbox
    save_comment: gr.Button
    # ids for the version arrows, ratings and edits: hidden, so API clients pass them explicitly too
    rated_message: gr.Textbox
    rating_value: gr.Textbox
    version_target: gr.Textbox
    edit_target: gr.Textbox
    edit_text: gr.Textbox
    switch_version: gr.Button
    rate_button: gr.Button
    edit_button: gr.Button
    # the composer and the actions under it
    message: gr.Textbox
    send_button: gr.Button
    stop_button: gr.Button
    reply_actions: gr.Row
    retry_button: gr.Button
    undo_button: gr.Button

    @property
    def buttons(self) -> list[gr.components.Component | gr.Row]:
        """Send and Stop (one place, one shows at a time) and the Retry/Undo row."""
        return [self.send_button, self.stop_button, self.reply_actions]

    @property
    def model_boxes(self) -> list[gr.components.Component]:
        """The model control as an input or output of the chat events, with two or more models only: with
        one, the events' inputs and outputs (the API of /send, /open...) stay exactly as they were."""
        return [self.model_choice] if self.model_choice.visible else []

    @property
    def settings_boxes(self) -> list[gr.components.Component]:
        """The open chat's settings, kept with it."""
        return [self.system_prompt, self.temperature, self.top_p, self.max_new_tokens]


def build_layout(settings: Settings, models: Sequence[tuple[str, str]] = ()) -> PageComponents:
    """Declare the page's components inside the current ``gr.Blocks``; ``models`` are the offered
    models as (label, name), the default first."""
    conversation_state = gr.Textbox(visible="hidden", elem_id="conversation-id")
    timezone = gr.Textbox("UTC", visible="hidden", elem_id="timezone")
    row_id = gr.Textbox(visible="hidden", elem_id="row-id")
    row_title = gr.Textbox(visible="hidden", elem_id="row-title")
    row_pinned = gr.Checkbox(visible="hidden", elem_id="row-pinned")
    with gr.Sidebar(label="Chats", open=True, elem_id="chats-sidebar"):
        greeting = gr.Markdown(elem_id="greeting")
        with gr.Row(elem_id="sidebar-actions"):
            new_chat_button = gr.Button("+ New chat", variant="primary", scale=4, elem_id="new-chat")
            theme_button = gr.Button("◐", scale=1, min_width=40, elem_id="theme-toggle")
        # value None: an API client that leaves it out keeps the chat's own model (the default for a new
        # chat); any name is passed on (allow_custom_value) so the server, not the page, checks it
        model_choice = gr.Dropdown(
            choices=list(models), value=None, label="Model", allow_custom_value=True, interactive=True,
            visible=len(models) > 1, elem_id="model-choice",
        )
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
        gr.HTML(EXPORT_ALL_LINKS, elem_id="sidebar-footer", apply_default_css=False, js_on_load=None)
        with gr.Row():
            gr.Button("Battle", link="/battle", size="sm", elem_id="battle")
            gr.Button("Leaderboard", link="/leaderboard", size="sm", elem_id="leaderboard")
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
    chatbot = TextChatbot(
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
    return PageComponents(
        conversation_state=conversation_state, timezone=timezone, row_id=row_id, row_title=row_title,
        row_pinned=row_pinned, greeting=greeting, new_chat_button=new_chat_button, model_choice=model_choice,
        theme_button=theme_button,
        search=search, clear_search=clear_search, no_match=no_match, chat_rows=chat_rows, chat_list=chat_list,
        more_button=more_button, system_prompt=system_prompt, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, earlier_button=earlier_button, chatbot=chatbot, status=status,
        rating_row=rating_row, rating_comment=rating_comment, save_comment=save_comment,
        rated_message=rated_message, rating_value=rating_value, version_target=version_target,
        edit_target=edit_target, edit_text=edit_text, switch_version=switch_version, rate_button=rate_button,
        edit_button=edit_button, message=message, send_button=send_button, stop_button=stop_button,
        reply_actions=reply_actions, retry_button=retry_button, undo_button=undo_button,
    )
