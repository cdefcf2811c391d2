"""The sidebar's chat list: grouped by day, pinned chats on top, each row with its time and a menu.

As in ChatGPT and Open WebUI, chats are grouped Today / Yesterday / Previous 7 days /
Older (in the tester's own time zone), newest first, with pinned chats in a group of
their own above them. Each row shows its title and when it was last active, so two
chats with the same title are told apart, and has a menu (rename in place, pin,
export, delete) that acts on that row's chat, not on "the open chat".

The rows are rendered here, on the server, as HTML with every title escaped; the
page's script (``page_assets.CHAT_LIST_JS``) turns clicks into events that carry the
row's chat id, which :func:`read_row_event` checks before any handler uses it. For API
clients the same list is kept as plain ``(label, id)`` choices (:func:`choices`).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from storage.repository import ConversationSummary
from storage.search_index import titles_only

PAGE_SIZE = 50
PINNED, TODAY, YESTERDAY, WEEK, OLDER = "Pinned", "Today", "Yesterday", "Previous 7 days", "Older"
GROUPS = (PINNED, TODAY, YESTERDAY, WEEK, OLDER)
NO_MATCH = "No chats match your search."
SHORT_SEARCH_NOTE = "Searching titles only: type 3 or more characters to search inside messages."
NO_CHATS = "No chats yet: your first message starts one."
MAX_ID_CHARS = 64
MAX_TITLE_CHARS = 1000  # longer is refused by storage with a clear message; this only bounds the event


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def days_ago(moment: datetime, now: datetime, timezone: str | None) -> int:
    """Calendar days between ``moment`` and ``now`` in the tester's time zone (0 = today)."""
    tz = zone(timezone)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (now.astimezone(tz).date() - moment.astimezone(tz).date()).days


def when(moment: datetime, now: datetime, timezone: str | None) -> str:
    """``14:32``, ``Yesterday 14:32``, ``Mon 14:32``, ``12 Nov`` or ``12 Nov 2025``."""
    tz = zone(timezone)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    local, today = moment.astimezone(tz), now.astimezone(tz).date()
    days = (today - local.date()).days
    clock = local.strftime("%H:%M")
    if days <= 0:
        return clock
    if days == 1:
        return f"Yesterday {clock}"
    if days < 7:
        return f"{local.strftime('%a')} {clock}"
    if local.year == today.year:
        return f"{local.day} {local.strftime('%b')}"
    return f"{local.day} {local.strftime('%b %Y')}"


def group_of(summary: ConversationSummary, now: datetime, timezone: str | None) -> str:
    if summary.pinned:
        return PINNED
    days = days_ago(summary.updated_at, now, timezone)
    if days <= 0:
        return TODAY
    if days == 1:
        return YESTERDAY
    if days <= 7:
        return WEEK
    return OLDER


def row_time(summary: ConversationSummary, group: str, now: datetime, timezone: str | None) -> str:
    """The row's time; under "Yesterday" the heading already says the day."""
    label = when(summary.updated_at, now, timezone)
    return label.removeprefix("Yesterday ") if group == YESTERDAY else label


def label(summary: ConversationSummary, now: datetime, timezone: str | None) -> str:
    return f"{summary.title} · {when(summary.updated_at, now, timezone)}"


def choices(summaries: list[ConversationSummary], timezone: str | None) -> list[tuple[str, str]]:
    """The list for API clients: ``("title · when", id)`` in the sidebar's order."""
    now = datetime.now(UTC)
    return [(label(s, now, timezone), s.id) for s in summaries]


def grouped(
    summaries: Iterable[ConversationSummary], now: datetime, timezone: str | None
) -> list[tuple[str, list[ConversationSummary]]]:
    """Non-empty groups in the order of ``GROUPS``; within a group the given (newest first) order."""
    groups: dict[str, list[ConversationSummary]] = {name: [] for name in GROUPS}
    for summary in summaries:
        groups[group_of(summary, now, timezone)].append(summary)
    return [(name, rows) for name, rows in groups.items() if rows]


def export_url(conversation_id: str, fmt: str) -> str:
    """Relative to the page, so the links also work when the server sits under a path prefix."""
    return f"export/{quote(conversation_id, safe='')}?format={fmt}"


def render_row(
    summary: ConversationSummary, group: str, current: str | None, now: datetime, timezone: str | None
) -> str:
    title = html.escape(summary.title)
    chat_id = html.escape(summary.id)
    classes = "chat-row" + (" active" if summary.id == current else "") + (" pinned" if summary.pinned else "")
    moment = html.escape(row_time(summary, group, now, timezone))
    current_mark = ' aria-current="page"' if summary.id == current else ""
    return (
        f'<li class="{classes}" data-id="{chat_id}" data-title="{title}" data-pinned="{str(summary.pinned).lower()}">'
        f'<a class="chat-open" href="?c={html.escape(quote(summary.id, safe=""))}" title="{title}"'
        f"{current_mark}>"
        f'<span class="chat-title">{title}</span><time class="chat-when" '
        f'datetime="{html.escape(summary.updated_at.isoformat())}">{moment}</time></a>'
        f'<button type="button" class="chat-menu-button" aria-haspopup="menu" '
        f'aria-label="Menu of the chat {title}" title="Rename, pin, export, delete">⋯</button></li>'
    )


def render(
    summaries: list[ConversationSummary],
    timezone: str | None,
    current: str | None,
    *,
    searching: bool = False,
    now: datetime | None = None,
) -> str:
    """The whole list as HTML (titles escaped), or the line saying why it is empty."""
    now = now or datetime.now(UTC)
    if not summaries:
        text = NO_MATCH if searching else NO_CHATS
        return f'<p class="chat-list-empty">{html.escape(text)}</p>'
    parts = ['<nav class="chat-groups" aria-label="Your chats">']
    for name, rows in grouped(summaries, now, timezone):
        slug = name.lower().replace(" ", "-")
        parts.append(f'<section class="chat-group" data-group="{slug}"><h3 class="chat-group-title">{name}</h3><ul>')
        parts.extend(render_row(summary, name, current, now, timezone) for summary in rows)
        parts.append("</ul></section>")
    parts.append("</nav>")
    return "".join(parts)


@dataclass(frozen=True)
class RowEvent:
    """What a click in the list asked for: which chat, and a title or a pin state if any."""

    conversation_id: str
    title: str = ""
    pinned: bool = False


def read_row_event(data: Any) -> RowEvent:
    """The event's data as the browser sent it, reduced to what the handlers may use.

    Anything else (a missing or odd id, a huge title) becomes an empty id, which
    every handler answers with "not found": the id is checked against the user's
    own chats in storage anyway.
    """
    if not isinstance(data, dict):
        return RowEvent("")
    chat_id = data.get("id")
    title = data.get("title")
    pinned = data.get("pinned")
    return RowEvent(
        chat_id if isinstance(chat_id, str) and 0 < len(chat_id) <= MAX_ID_CHARS else "",
        title[:MAX_TITLE_CHARS] if isinstance(title, str) else "",
        pinned is True,
    )


def search_note(search: str | None) -> str:
    """The line under the search box: why a short search finds only titles (see ``Repository``)."""
    return SHORT_SEARCH_NOTE if titles_only(search or "") else ""
