"""Which messages of a chat an action starts from: pure functions of the branch on screen.

Retry, Undo and Edit each act on one place of the branch on screen (the last
message of the tester's, or the parent of the message being edited). The page
draws what is kept while the reply streams, and the service builds the prompt
from the same messages, so both must find that place the same way: here, with
no Gradio and no storage access, only the ``ConversationRecord`` already opened.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.services.errors import ChatError
from storage.repository import ConversationRecord, MessageRecord
from storage.tree import path_to

NOTHING_TO_RETRY = "There is no message to retry yet."


def has_exchange(conversation: ConversationRecord | None) -> bool:
    """Retry and Undo only make sense once the chat has a message of the tester's."""
    return conversation is not None and any(m.role == "user" for m in conversation.messages)


def last_user_index(messages: Sequence[MessageRecord]) -> int | None:
    """The position of the last message of the tester's on screen (what Retry answers again), or None."""
    return max((i for i, m in enumerate(messages) if m.role == "user"), default=None)


def retried_branch(conversation: ConversationRecord) -> list[MessageRecord]:
    """What stays on screen while a retry streams: the branch down to the last user message."""
    last_user = last_user_index(conversation.messages)
    if last_user is None:
        raise ChatError(NOTHING_TO_RETRY)
    return conversation.messages[: last_user + 1]


def edit_base(conversation: ConversationRecord, edited: MessageRecord) -> list[MessageRecord]:
    """What an edit continues from: the path to the edited message's parent ([] for a first message).

    The new version is a sibling of the edited one, so everything from the edited
    message down stays on the other branch.
    """
    return [] if edited.parent_id is None else path_to(conversation.all_messages(), edited.parent_id)


def message_id_at(conversation: ConversationRecord, position: int) -> int | None:
    """The id of the message at ``position`` of the branch on screen; None outside it."""
    if 0 <= position < len(conversation.messages):
        return conversation.messages[position].id
    return None
