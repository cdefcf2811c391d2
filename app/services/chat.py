"""ChatService: what a tester can do, with every rule enforced in one place.

It composes storage and the engine and knows nothing of Gradio, so the UI only
wires buttons to these methods and the same rules hold for the browser and for
anyone calling the API directly. Every method takes the username from the login
(never from the client) and resolves conversation ids through the repository's
owner-scoped queries: someone else's chat is indistinguishable from a missing one.

Durability: a user's message is committed before its reply is queued (a new chat
and its first message in one transaction), and the reply is committed when it
ends for any reason (done, stopped, disconnected, failed, server stopping) with
that reason. A reply the database does not accept goes to the local journal
(storage/journal.py) and is written later: what a tester saw is what gets stored.
Retry replaces the old reply only when the new one is stored. A reply lost to a
crash leaves the user message alone at the end of the chat; ``open`` reports it as
interrupted and ``retry`` redoes it.

Database faults reach testers as one sentence (:class:`Unavailable`); the driver's
text, which may quote SQL and the tester's own message, stays in the server log.

Where each part lives (this module only assembles them and re-exports the names
the web layer imports from here):

- ``state.py``: the shared state and the user lookup; ``throttle.py``: the message rate;
- ``conversations.py``: list, open, rename, pin, delete, undo;
- ``judgments.py``: versions on screen, ratings and comments;
- ``replies.py``: send, retry, edit, stop; ``history.py``: whether stored ids are trusted;
- ``reply_stream.py``: streaming a reply and the shutdown drain; ``persist.py``: storing it, journal as fallback;
- ``exports.py``: export files; ``rules.py``: the pure rules; ``events.py``: what a reply streams.
"""

from __future__ import annotations

from app.services.conversations import ConversationsMixin
from app.services.errors import Busy, ChatError, ConversationNotFound, MessageNotFound, RateLimited, Unavailable
from app.services.events import ChatEvent
from app.services.exports import ExportsMixin
from app.services.judgments import JudgmentsMixin
from app.services.replies import RepliesMixin
from app.services.rules import (
    ChatOptions,
    check_message_text,
    interrupted,
    options_of,
    title_from,
    valid_text,
    with_pending,
)

__all__ = [
    "Busy",
    "ChatError",
    "ChatEvent",
    "ChatOptions",
    "ChatService",
    "ConversationNotFound",
    "MessageNotFound",
    "RateLimited",
    "Unavailable",
    "check_message_text",
    "interrupted",
    "options_of",
    "title_from",
    "valid_text",
    "with_pending",
]


class ChatService(RepliesMixin, JudgmentsMixin, ExportsMixin, ConversationsMixin):
    """The one object the web layer holds: every tester action, each part in its own module.

    The parts are mixins over one shared state (:class:`~app.services.state.ServiceState`,
    whose constructor this is) rather than separate objects, because they share that
    state (the repository, the journal, the replies under way) and the page and the
    export route call one service; each part subclasses only what it uses (judgments
    and exports read chats through ``open``, replies build on judgments), so the dependency
    between parts is visible in its class line.
    """
