"""What the web layer hears while a reply is produced: the one type a handler streams to the page."""

from __future__ import annotations

from dataclasses import dataclass

from storage.repository import MessageRecord


@dataclass(frozen=True)
class ChatEvent:
    """One update for the UI while a reply is produced.

    kind: ``conversation`` (the chat id, first for a new chat), ``waiting`` (requests
    ahead in ``position``, replies being generated in ``running``), ``text`` (the reply
    so far), ``stopped`` (Stop was pressed: ``text`` is what was on screen), ``done``
    (``message`` holds the stored reply).
    """

    kind: str
    conversation_id: str
    text: str = ""
    position: int | None = None
    message: MessageRecord | None = None
    running: int = 0
