"""Long chats open in pages: the last ``PAGE_MESSAGES`` messages, earlier ones on request.

Opening a 2,000-message chat used to send every message (16 MB) to the page at once.
The page now gets the newest ``PAGE_MESSAGES``; its "Show earlier messages" control
asks for another page each time. How many a page shows is kept per page session (in
``app.web.page.page_views.PageView.shown_messages``) and starts over when another chat is opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

PAGE_MESSAGES = 100

Item = TypeVar("Item")


def newest(messages: Sequence[Item], shown: int = PAGE_MESSAGES) -> tuple[list[Item], int]:
    """The last ``shown`` messages (at least one page) and how many earlier ones are left out."""
    shown = max(PAGE_MESSAGES, shown)
    hidden = max(0, len(messages) - shown)
    return list(messages[hidden:]), hidden


def more(shown: int) -> int:
    """How many to show after one more click on "Show earlier messages"."""
    return max(PAGE_MESSAGES, shown) + PAGE_MESSAGES


def earlier_label(hidden: int) -> str:
    return f"Show earlier messages ({hidden:,} more)"
