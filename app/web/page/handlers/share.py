"""The "Share" entry of a chat row's menu: make a read-only link to the chat and show it in the status line.

The rules (only one's own chat, a random id, a frozen copy) live in app/services/shares.py;
this only turns the result into a line the tester can copy. The link is written whole,
with the origin the browser sent (the security middleware refused any foreign one), so
it can be pasted to a colleague as it is.
"""

from __future__ import annotations

import gradio as gr

from app.services.errors import ChatError
from app.services.shares import ShareService
from app.web.page.handlers.context import PageContext, Updates
from app.web.page.handlers.refusals import problem, require_chat


def page_origin(request: gr.Request) -> str:
    origin = (request.headers or {}).get("origin") or ""
    return origin.rstrip("/") if origin.startswith(("http://", "https://")) and len(origin) <= 200 else ""


class ShareHandlers:
    def __init__(self, context: PageContext) -> None:
        self.context = context
        self.page = context.page

    async def on_share(self, conversation_id: str | None, request: gr.Request) -> Updates:
        try:
            chat = require_chat(conversation_id)
            link = await ShareService(self.context.service.repository).share(request.username, chat)
        except ChatError as error:
            return {self.page.status: problem(error)}
        url = f"{page_origin(request)}/share/{link.id}"
        return {self.page.status: (
            f"🔗 Read-only link to this chat: [{url}]({url}) (anyone logged in here can open it; "
            "later changes to the chat do not show there; revoke it under Account → Your share links)."
        )}
