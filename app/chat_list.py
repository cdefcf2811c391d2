"""How a chat is named in the sidebar: its title and when it was last active, in the tester's time zone.

Two chats with the same title are told apart by their times; the day is said the
way people say it (today's chats by time only, then "Yesterday", the weekday within
a week, the date beyond).
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from storage.repository import ConversationSummary

PAGE_SIZE = 50


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


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


def label(summary: ConversationSummary, now: datetime, timezone: str | None) -> str:
    return f"{summary.title} · {when(summary.updated_at, now, timezone)}"


def choices(summaries: list[ConversationSummary], timezone: str | None) -> list[tuple[str, str]]:
    now = datetime.now(UTC)
    return [(label(s, now, timezone), s.id) for s in summaries]
