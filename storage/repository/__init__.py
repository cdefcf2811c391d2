"""Every query the app needs: one function, one transaction, always scoped by owner.

Functions return frozen records, never ORM objects, so nothing lazy-loads after
its session is gone and nothing the UI holds can write to the database by accident.
Conversation functions take the owner's user id and filter on it in the same
query that finds the row: another user's conversation is simply "not found".

One module per table or seam: records.py (what goes in and out), checks.py (what is
refused, and why), convert.py (rows <-> records), base.py (the shared state and
owner-scoped lookups), then users, login_sessions, conversations, search, messages,
ratings, transfer (import and export) and shares. The search limits ``SEARCH_TIMEOUT_SECONDS``
and ``SCAN_UP_TO_MESSAGES`` are read from ``storage.repository.search`` and are
deliberately not re-exported here: patching a copy here would change nothing.
"""

from __future__ import annotations

from storage.repository.audit import AuditRecord, AuditStore
from storage.repository.battles import BattleRecord, BattleStore
from storage.repository.checks import (
    INT32_MAX,
    RATING_NAMES,
    RATING_VALUES,
    ROLES,
    SEARCH_MAX_CHARS,
    check_rating,
    check_search,
    check_text,
    check_title,
    check_username,
    username_key,
)
from storage.repository.conversations import ConversationStore
from storage.repository.login_sessions import LoginSessionStore
from storage.repository.messages import MessageStore
from storage.repository.ratings import RatingStore
from storage.repository.records import (
    LEAF,
    ConversationRecord,
    ConversationSummary,
    ImportedConversation,
    ImportedNode,
    MessageRecord,
    NewMessage,
    RatingRecord,
    UserRecord,
)
from storage.repository.search import SearchStore
from storage.repository.shares import SharedChat, SharedMessage, ShareLinkRecord, ShareStore
from storage.repository.transfer import EXPORT_BATCH, TransferStore
from storage.repository.usage import AccountRow, RatingsRow, UsageRow, UsageStore
from storage.repository.users import UserStore

__all__ = [
    "EXPORT_BATCH",
    "INT32_MAX",
    "LEAF",
    "RATING_NAMES",
    "RATING_VALUES",
    "ROLES",
    "SEARCH_MAX_CHARS",
    "AccountRow",
    "AuditRecord",
    "BattleRecord",
    "ConversationRecord",
    "ConversationSummary",
    "ImportedConversation",
    "ImportedNode",
    "MessageRecord",
    "NewMessage",
    "RatingRecord",
    "RatingsRow",
    "Repository",
    "ShareLinkRecord",
    "SharedChat",
    "SharedMessage",
    "UsageRow",
    "UserRecord",
    "check_rating",
    "check_search",
    "check_text",
    "check_title",
    "check_username",
    "username_key",
]


class Repository(
    UserStore, LoginSessionStore, ConversationStore, SearchStore, MessageStore, RatingStore, TransferStore,
    AuditStore, UsageStore,
    ShareStore,
    BattleStore,
):
    """The storage API. Construct once per process over a :class:`Database`.

    One object for the services to hold, assembled from one store per table or seam: they
    share a single database and the owner-scoped lookups of ``RepositoryBase`` (a chat
    found for one user is found the same way by messages, ratings and exports), so they
    are mixins over that state rather than separate objects passing a session around.
    """
