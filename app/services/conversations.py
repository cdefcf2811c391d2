"""A tester's chats as a whole: listing, opening, renaming, pinning, deleting, undoing.

Every id goes through the repository's owner-scoped queries, so someone else's chat
is indistinguishable from a missing one ("Conversation not found").
"""

from __future__ import annotations

from app.services.errors import CANNOT_READ, CANNOT_SAVE, ChatError, ConversationNotFound, database_faults
from app.services.rules import ChatOptions, options_of, with_pending
from app.services.state import ServiceState
from storage.errors import InvalidInput, NotFound, SearchTooSlow
from storage.repository import ConversationRecord, ConversationSummary

BLIND_CHAT = (
    "This chat is one side of a blind battle you have not voted on yet: go on or vote on the battle "
    "page (the models stay hidden until your vote)."
)


class ConversationsMixin(ServiceState):
    """Reading and changing whole chats; a chat read here includes its replies still in the journal."""

    # ------------------------------------------------------------ reading

    async def list_conversations(
        self, username: str | None, search: str = "", limit: int = 100, offset: int = 0
    ) -> list[ConversationSummary]:
        user_id = await self.user_id(username)
        try:
            with database_faults(CANNOT_READ):
                if not (search and search.strip()):
                    return await self.repository.list_conversations(user_id, limit=limit, offset=offset)
                async with self._searches.turn(username or ""):
                    return await self.repository.list_conversations(user_id, limit=limit, offset=offset, search=search)
        except InvalidInput as error:
            raise ChatError(f"Cannot search: {error}.") from None
        except SearchTooSlow as error:
            raise ChatError(str(error)) from None

    async def last_options(self, username: str | None) -> ChatOptions | None:
        """The settings of the user's most recently active chat: the defaults for a new one."""
        user_id = await self.user_id(username)
        latest = await self.repository.list_conversations(user_id, limit=1, pinned_first=False)
        if not latest:
            return None
        try:
            conversation = await self.repository.get_conversation(user_id, latest[0].id)
        except NotFound:
            return None
        return options_of(conversation)

    async def open(self, username: str | None, conversation_id: str, *, in_battle: bool = False) -> ConversationRecord:
        """One's own chat; a side of a blind battle not voted on yet only for the battle page
        (its model would show, and Retry or an edit would change what is being judged)."""
        user_id = await self.user_id(username)
        if not isinstance(conversation_id, str) or not conversation_id:
            raise ConversationNotFound()
        try:
            with database_faults(CANNOT_READ):
                conversation = await self.repository.get_conversation(user_id, conversation_id)
                blind = not in_battle and await self.repository.in_open_battle(user_id, conversation_id)
        except NotFound:
            raise ConversationNotFound() from None
        if blind:
            raise ChatError(BLIND_CHAT)
        return with_pending(conversation, self.journal.pending_for(conversation.id))

    async def _settle(self, conversation_id: str) -> None:
        """Before a chat changes, its replies waiting in the journal must be stored (order matters)."""
        if self.journal.pending_for(conversation_id):
            with database_faults(CANNOT_SAVE):
                await self.journal.replay(self.repository, conversation_id)

    # ------------------------------------------------------------ changing

    async def rename(self, username: str | None, conversation_id: str, title: str) -> None:
        user_id = await self.user_id(username)
        try:
            with database_faults(CANNOT_SAVE):
                await self.repository.rename_conversation(user_id, conversation_id, title)
        except NotFound:
            raise ConversationNotFound() from None
        except InvalidInput as error:
            raise ChatError(f"Cannot rename: {error}.") from None

    async def pin(self, username: str | None, conversation_id: str, pinned: bool) -> None:
        """Keep a chat at the top of the list (or let it go back to its place by time)."""
        user_id = await self.user_id(username)
        try:
            with database_faults(CANNOT_SAVE):
                await self.repository.set_pinned(user_id, conversation_id, pinned)
        except NotFound:
            raise ConversationNotFound() from None

    async def delete(self, username: str | None, conversation_id: str) -> None:
        """Delete a chat; a reply still being written in it is stopped first."""
        user_id = await self.user_id(username)
        self._live.stop(user_id, conversation_id)
        try:
            with database_faults(CANNOT_SAVE):
                await self.repository.delete_conversation(user_id, conversation_id)
        except NotFound:
            raise ConversationNotFound() from None

    async def undo(self, username: str | None, conversation_id: str) -> ConversationRecord | None:
        """Remove the last exchange on screen (the last user message and everything below it).

        Other versions of that message stay; the newest of them is shown instead.

        Undoing a chat's only exchange deletes the chat (None is returned): an empty
        chat titled after a message that no longer exists would only mislead.
        """
        conversation = await self.open(username, conversation_id)
        self._live.refuse_if_replying(conversation.id)
        user_messages = [m for m in conversation.messages if m.role == "user"]
        if not user_messages:
            raise ChatError("Nothing to undo.")
        await self._settle(conversation.id)
        try:
            with database_faults(CANNOT_SAVE):
                if len(user_messages) == 1 and user_messages[0].version_count == 1:
                    await self.repository.delete_conversation(conversation.user_id, conversation.id)
                    return None
                await self.repository.delete_messages_from(conversation.user_id, conversation.id, user_messages[-1].seq)
        except NotFound:
            raise ConversationNotFound() from None
        return await self.open(username, conversation_id)
