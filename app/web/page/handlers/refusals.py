"""Refusals as the page shows them: one sentence in the status line, HTML made inert."""

from __future__ import annotations

import html

from app.services.errors import ChatError

OPEN_A_CHAT_FIRST = "Open a chat first."


def require_chat(conversation_id: str | None) -> str:
    """The chat an action needs; an empty id (no chat open) is refused in the words every action uses."""
    if not conversation_id:
        raise ChatError(OPEN_A_CHAT_FIRST)
    return conversation_id


def problem(error: Exception) -> str:
    return f"⚠ {html.escape(str(error), quote=False)}"
