"""What a tester says about replies: which version is shown, and ratings with their comments.

A message id from the client is trusted only after it is found in the tester's own
(opened) chat: any other id, including another user's, is "Message not found".
"""

from __future__ import annotations

from typing import Any

from app.services.conversations import ConversationsMixin
from app.services.errors import CANNOT_SAVE, ChatError, MessageNotFound, database_faults
from storage.errors import InvalidInput, NotFound
from storage.repository import ConversationRecord, MessageRecord, RatingRecord


def stored_message(conversation: ConversationRecord, message_id: Any) -> MessageRecord:
    """A message of this (owned) chat by id; anything else is "not found", like a missing one."""
    if isinstance(message_id, str) and message_id.strip().isdigit():
        message_id = int(message_id)
    if isinstance(message_id, float) and message_id.is_integer():
        message_id = int(message_id)
    found = next(
        (m for m in conversation.all_messages() if m.id == message_id and not m.pending and m.id > 0), None
    )
    if found is None or isinstance(message_id, bool):
        raise MessageNotFound()
    return found


class JudgmentsMixin(ConversationsMixin):
    """Versions on screen, ratings and comments of one's own chats' replies."""

    stored_message = staticmethod(stored_message)

    async def show_version(self, username: str | None, conversation_id: str, message_id: Any) -> ConversationRecord:
        """Put another version of a turn on screen; the chat continues from it. Returns the chat as shown now."""
        conversation = await self.open(username, conversation_id)
        message = stored_message(conversation, message_id)
        self._live.refuse_if_replying(conversation.id)
        try:
            with database_faults(CANNOT_SAVE):
                await self.repository.show_version(conversation.user_id, conversation.id, message.id)
        except NotFound:
            raise MessageNotFound() from None
        return await self.open(username, conversation_id)

    def shown_message(self, conversation: ConversationRecord, position: int) -> MessageRecord:
        """The message at ``position`` of the branch on screen, refusing what cannot be rated yet."""
        if not isinstance(position, int) or position < 0:
            raise MessageNotFound()
        if position < len(conversation.messages):
            message = conversation.messages[position]
            if message.pending:
                raise ChatError("This reply is still being saved; rate it once it is stored.")
            return message
        if position == len(conversation.messages) and self._live.text_of(conversation) is not None:
            raise ChatError("This reply is still being written; rate it when it is done.")
        raise MessageNotFound()

    async def rate(
        self,
        username: str | None,
        conversation_id: str,
        message_id: Any,
        value: str | None,
        comment: str | None = None,
    ) -> RatingRecord | None:
        """Rate a reply "up" or "down" (a second call changes it); ``value`` None or "" clears it.

        Returns the rating as stored (None once cleared). Only the chat's owner can
        rate its replies: another user's message id is "not found".
        """
        conversation = await self.open(username, conversation_id)
        message = stored_message(conversation, message_id)
        if message.role != "assistant" or (message.finish_reason == "interrupted" and not message.content):
            raise ChatError("Only the model's replies can be rated.")
        if comment is not None and not isinstance(comment, str):
            raise ChatError("The comment must be text.")
        try:
            with database_faults(CANNOT_SAVE):
                if not value:
                    await self.repository.clear_rating(conversation.user_id, conversation.id, message.id)
                    return None
                return await self.repository.set_rating(
                    conversation.user_id, conversation.id, message.id, value, comment
                )
        except NotFound:
            raise MessageNotFound() from None
        except InvalidInput as error:
            raise ChatError(f"Cannot rate: {error}.") from None

    async def comment(
        self, username: str | None, conversation_id: str, message_id: Any, comment: str
    ) -> RatingRecord:
        """Add or change the short comment of one's rating of a reply (rate first)."""
        conversation = await self.open(username, conversation_id)
        message = stored_message(conversation, message_id)
        if message.rating is None:
            raise ChatError("Rate the reply first (👍 or 👎), then add a comment.")
        rating = await self.rate(username, conversation_id, message.id, message.rating.value, comment)
        assert rating is not None
        return rating
