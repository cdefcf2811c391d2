"""The refusals a tester can meet, each one sentence that says what happened and what to do.

Database faults become :class:`Unavailable` here, so the driver's text (which may quote
SQL and the tester's own message) stays in the server log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from storage.errors import StorageUnavailable


class ChatError(Exception):
    """A refusal to show the tester as is: says what happened and what to do."""


class ConversationNotFound(ChatError):
    def __init__(self) -> None:
        super().__init__("Conversation not found. It may have been deleted; pick another from the list.")


class MessageNotFound(ChatError):
    def __init__(self) -> None:
        super().__init__("Message not found. It may have been deleted; reopen the chat.")


class Busy(ChatError):
    """The engine's queue is full; the typed text must be kept for a retry."""


class RateLimited(ChatError):
    pass


CANNOT_SAVE = "The server cannot save right now; your message was kept. Try again in a moment."
CANNOT_READ = "The server cannot reach its database right now; try again in a moment."


class Unavailable(ChatError):
    """The database is down, full or read-only: one sentence for the tester, details in the log."""


@contextlib.contextmanager
def database_faults(sentence: str) -> Iterator[None]:
    """Turn a storage fault into the tester's sentence (the cause is logged by storage)."""
    try:
        yield
    except StorageUnavailable:
        raise Unavailable(sentence) from None
