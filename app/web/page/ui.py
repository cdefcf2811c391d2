"""The Gradio Blocks page: its components, their handlers and the events between them; every rule lives in ChatService.

- app/web/page/layout.py declares the components (``PageComponents``);
- app/web/page/handlers/ holds the handlers, one module per concern, each calling ChatService;
- app/web/page/wiring.py connects them: which event calls which handler, with which API name.

Handlers read the user from ``request.username`` (our login, app/accounts/sessions.py) and nothing the
browser sends can name another user. Text is shown as text: HTML in messages and
titles is made inert outside code (app/web/page/rendering.py), so a ``<script>`` is displayed,
never run, and code shows ``<`` literally.

One chat, one stream: a reply streams through the event that sent its message, and
every update it makes first checks (app/web/page/page_views.py) that its chat is still the one on
that page, so opening another chat mid-reply shows that chat and nothing else
(app/web/page/handlers/stream.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import gradio as gr

from app.config import Settings
from app.web.page.handlers.chat_list import ChatListHandlers
from app.web.page.handlers.context import PageContext
from app.web.page.handlers.rating import RatingHandlers
from app.web.page.handlers.reply import ReplyHandlers
from app.web.page.handlers.share import ShareHandlers
from app.web.page.handlers.view import ViewHandlers
from app.web.page.layout import build_layout
from app.web.page.lean_blocks import LeanBlocks, skip_absent_matplotlib
from app.web.page.service_holder import ServiceHolder
from app.web.page.transcript import PENDING_NOTE, message_bubble
from app.web.page.wiring import REPLY_EVENTS, PageHandlers, wire

# PENDING_NOTE and message_bubble: what tests/test_faults.py reads from here
__all__ = ["PENDING_NOTE", "REPLY_EVENTS", "ServiceHolder", "build_ui", "message_bubble"]


def build_ui(holder: ServiceHolder, settings: Settings, models: Sequence[tuple[str, str]] = ()) -> gr.Blocks:
    """The chat page. Wiring only: each handler calls one ChatService method. ``models``: the offered
    models as (label, name), the default first (the model control shows when there are two or more)."""
    skip_absent_matplotlib()
    with LeanBlocks(title="Team Chat", delete_cache=(600, 3600)) as demo:
        page = build_layout(settings, models)
        context = PageContext.create(holder, page, settings)
        lists = ChatListHandlers(context)
        handlers = PageHandlers(
            view=ViewHandlers(context, lists), lists=lists, reply=ReplyHandlers(context, lists),
            rating=RatingHandlers(context), share=ShareHandlers(context),
        )
        wire(demo, page, handlers)
    return demo
