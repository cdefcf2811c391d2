"""The page's event graph: which event calls which handler, with which inputs, outputs and API name.

Outputs are listed here and only here; handlers return their changes by component.
The lists below are the API's contract: page-only outputs (buttons, rows, layout) come
last or are left out of the API by Gradio, so every endpoint keeps the shape API
clients know, and the order of registration is the order of Gradio's ``fn_index``.

Gradio puts events without a ``concurrency_id`` in a group per function object, so a
handler used by several events is bound once below and the events keep sharing a group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.web.page.assets import NEW_CHAT_JS, PICKED_VERSION_JS, SET_ADDRESS_JS, TIMEZONE_JS, TOGGLE_THEME_JS
from app.web.page.handlers.chat_list import ChatListHandlers
from app.web.page.handlers.rating import RatingHandlers
from app.web.page.handlers.reply import ReplyHandlers
from app.web.page.handlers.share import ShareHandlers
from app.web.page.handlers.view import ViewHandlers
from app.web.page.layout import PageComponents

# the concurrency group of every event that streams a reply (sized from the engine in app/web/server.py)
REPLY_EVENTS = "replies"


@dataclass(frozen=True)
class PageHandlers:
    view: ViewHandlers
    lists: ChatListHandlers
    reply: ReplyHandlers
    rating: RatingHandlers
    share: ShareHandlers


QUICK: dict[str, Any] = {"api_name": False, "queue": False, "show_progress": "hidden"}


def wire(demo: gr.Blocks, page: PageComponents, handlers: PageHandlers) -> None:
    """Register every event of the page (inside ``demo``'s context), in a fixed order."""
    graph = EventGraph(page, handlers)
    graph.page_events(demo)
    graph.chat_list_events()
    graph.streaming_events()
    graph.rating_events()
    graph.stop_and_undo()
    graph.comment_row_closing()
    graph.share_events()


class EventGraph:
    """The events of one page; handlers shared by several events are bound once, here."""

    def __init__(self, page: PageComponents, handlers: PageHandlers) -> None:
        self.page, self.handlers = page, handlers
        # after an event that redrew the chat: its like/dislike marks
        self.marks_after: dict[str, Any] = dict(
            fn=handlers.view.sync_marks, inputs=[page.conversation_state], outputs=[page.chatbot], api_name=False,
            show_progress="hidden",
        )
        self.picked_row = handlers.lists.picked_row
        self.new_chat = handlers.view.new_chat
        self.begin_reply, self.end_reply = handlers.reply.begin_reply, handlers.reply.end_reply

    def page_events(self, demo: gr.Blocks) -> None:
        """Loading, the address, earlier messages, and opening a chat from its row."""
        page, view, lists = self.page, self.handlers.view, self.handlers.lists
        demo.load(
            view.on_load, [page.timezone],
            [page.greeting, page.chat_list, page.chatbot, page.conversation_state, page.status, page.more_button,
             page.no_match, *page.buttons, *page.settings_boxes, page.chat_rows, *page.model_boxes],
            api_name="load", js=TIMEZONE_JS,
        ).then(**self.marks_after)
        demo.unload(view.forget_page)
        # the page's address follows the chat on screen, whoever changed it
        page.conversation_state.change(None, [page.conversation_state], None, js=SET_ADDRESS_JS)
        # long chats open at their newest page; the button above the chat brings earlier ones
        page.conversation_state.change(view.earlier_control, [page.conversation_state], [page.earlier_button],
                                       api_name=False, show_progress="hidden")
        page.earlier_button.click(
            view.on_earlier, [page.conversation_state], [page.chatbot, page.earlier_button, page.status],
            api_name="earlier", show_progress="hidden",
        ).then(**self.marks_after)
        # a row of the list: its script sends the row's chat id with the event (page_assets.CHAT_LIST_JS)
        chat_outputs = [page.chatbot, page.conversation_state, page.status, *page.buttons, *page.settings_boxes,
                        *page.model_boxes]
        page.chat_rows.open_chat(lists.picked_chat, None, [page.conversation_state], **QUICK).then(
            view.on_select, [page.conversation_state], chat_outputs, api_name="open", show_progress="hidden",
        ).then(**self.marks_after)

    def chat_list_events(self) -> None:
        """A row's menu, the search box, older chats, the theme, and a new chat."""
        page, lists = self.page, self.handlers.lists
        row_inputs = [page.row_id, page.row_title, page.row_pinned]
        page.chat_rows.rename_chat(self.picked_row, None, row_inputs, **QUICK).then(
            lists.on_rename, [page.row_id, page.row_title, page.search],
            [page.status, page.chat_list, page.row_title, page.chat_rows], api_name="rename", show_progress="hidden",
        )
        page.chat_rows.pin_chat(self.picked_row, None, row_inputs, **QUICK).then(
            lists.on_pin, [page.row_id, page.row_pinned, page.search], [page.status, page.chat_list, page.chat_rows],
            api_name="pin", show_progress="hidden",
        )
        page.chat_rows.delete_chat(self.picked_row, None, row_inputs, **QUICK).then(
            lists.on_delete, [page.row_id, page.search],
            [page.chatbot, page.conversation_state, page.status, page.chat_list, page.chat_rows, *page.buttons],
            api_name="delete", show_progress="hidden",
        ).then(**self.marks_after)
        list_outputs = [page.chat_list, page.chat_rows, page.more_button, page.no_match]
        # .change, not .input: pasting and clearing must search too; always the latest text
        page.search.change(lists.on_search, [page.search, page.conversation_state], list_outputs, api_name="search",
                           show_progress="hidden", trigger_mode="always_last")
        page.clear_search.click(lists.on_clear_search, [page.conversation_state], [page.search, *list_outputs],
                                api_name=False, show_progress="hidden")
        page.more_button.click(lists.on_more, [page.search, page.conversation_state], list_outputs, api_name=False)
        page.theme_button.click(None, None, None, js=TOGGLE_THEME_JS)
        new_chat_outputs = [page.chatbot, page.conversation_state, page.chat_list, page.status, *page.buttons,
                            *page.settings_boxes, *page.model_boxes]
        # picking a model fills in the settings it sets (a variant's temperature, a new chat's system prompt)
        page.model_choice.input(self.handlers.view.on_model_picked, [page.model_choice, page.conversation_state],
                                [*page.settings_boxes, page.status], **QUICK)
        page.new_chat_button.click(self.new_chat, None, new_chat_outputs, api_name="new_chat").then(
            None, None, None, js=NEW_CHAT_JS
        ).then(**self.marks_after)
        # the chatbot's own trash button clears the view only: make it start a new chat
        page.chatbot.clear(self.new_chat, None, new_chat_outputs, api_name=False).then(
            None, None, None, js=NEW_CHAT_JS
        ).then(**self.marks_after)

    def streaming_events(self) -> None:
        """Send, Retry and Edit stream in the REPLY_EVENTS group; each first swaps Send for Stop."""
        page, reply = self.page, self.handlers.reply
        buttons = page.buttons
        after_reply = [page.chatbot, page.conversation_state, *buttons]
        reply_outputs = [page.chatbot, page.conversation_state, page.status, page.chat_list, page.chat_rows]
        streaming: dict[str, Any] = {"show_progress": "hidden", "trigger_mode": "multiple",
                                     "concurrency_id": REPLY_EVENTS}
        send_inputs = [page.message, page.conversation_state, *page.settings_boxes, page.search, *page.model_boxes]
        send_outputs = [page.chatbot, page.message, page.conversation_state, page.status, page.chat_list,
                        page.chat_rows]
        # Enter in the message box clicks Send (see page_assets.PAGE_JS); "multiple": a reply
        # streaming in one chat must not block sending in another
        page.send_button.click(self.begin_reply, None, buttons, api_name=False, show_progress="hidden", queue=False)
        page.send_button.click(reply.on_send, send_inputs, send_outputs, api_name="send", **streaming).then(
            self.end_reply, None, after_reply, api_name=False, show_progress="hidden"
        )
        page.retry_button.click(self.begin_reply, None, buttons, api_name=False, show_progress="hidden", queue=False)
        page.retry_button.click(
            reply.on_retry,
            [page.conversation_state, page.temperature, page.top_p, page.max_new_tokens, page.search,
             *page.model_boxes],
            reply_outputs, api_name="retry", **streaming,
        ).then(self.end_reply, None, after_reply, api_name=False, show_progress="hidden")
        edit_settings = [page.temperature, page.top_p, page.max_new_tokens, page.search]
        page.chatbot.edit(self.begin_reply, None, buttons, api_name=False, show_progress="hidden", queue=False)
        page.chatbot.edit(
            reply.on_chat_edit, [page.conversation_state, *edit_settings], reply_outputs, api_name=False, **streaming,
        ).then(self.end_reply, None, after_reply, api_name=False, show_progress="hidden")
        page.edit_button.click(
            reply.on_edit, [page.conversation_state, page.edit_target, page.edit_text, *edit_settings], reply_outputs,
            api_name="edit", **streaming,
        ).then(self.end_reply, None, after_reply, api_name=False, show_progress="hidden")

    def rating_events(self) -> None:
        """The version arrows, the Chatbot's thumbs, rating by id (API) and a rating's comment."""
        page, rating = self.page, self.handlers.rating
        page.switch_version.click(
            rating.on_switch_version, [page.conversation_state, page.version_target], [page.chatbot, page.status],
            api_name="switch_version", js=PICKED_VERSION_JS, show_progress="hidden",
        ).then(**self.marks_after)
        page.chatbot.like(
            rating.on_like, [page.conversation_state],
            [page.chatbot, page.status, page.rating_row, page.rated_message, page.rating_comment],
            api_name=False, show_progress="hidden",
        )
        page.rate_button.click(
            rating.on_rate, [page.conversation_state, page.rated_message, page.rating_value, page.rating_comment],
            [page.chatbot, page.status], api_name="rate",
        ).then(**self.marks_after)
        page.save_comment.click(
            rating.on_comment, [page.conversation_state, page.rated_message, page.rating_comment],
            [page.chatbot, page.status], api_name="comment",
        ).then(**self.marks_after)

    def stop_and_undo(self) -> None:
        page, reply = self.page, self.handlers.reply
        page.stop_button.click(reply.on_stop, [page.conversation_state], [page.status, *page.buttons],
                               api_name="stop", show_progress="hidden")
        page.undo_button.click(
            reply.on_undo, [page.conversation_state, page.search],
            [page.chatbot, page.status, page.chat_list, page.conversation_state, page.chat_rows, *page.buttons],
            api_name="undo",
        ).then(**self.marks_after)

    def comment_row_closing(self) -> None:
        """A comment box left open belongs to the chat it was opened in."""
        for opened in (self.page.chat_rows.open_chat, self.page.new_chat_button.click):
            opened(lambda: gr.update(visible=False), None, self.page.rating_row, api_name=False, queue=False)

    def share_events(self) -> None:
        """A row's "Share": a read-only link to that chat, shown in the status line (last: no fn_index moves)."""
        page = self.page
        page.chat_rows.share_chat(self.picked_row, None, [page.row_id, page.row_title, page.row_pinned], **QUICK).then(
            self.handlers.share.on_share, [page.row_id], [page.status], api_name="share", show_progress="hidden",
        )
