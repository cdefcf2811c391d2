"""Sharing a chat: a frozen copy under a random link, which others read and can continue as their own.

Every rule of sharing lives here, so the page's "Share" entry, the HTTP routes and an
API client meet the same ones:

- only the owner can share a chat; someone else's chat is "Conversation not found",
  the same sentence as an unknown id, and nothing is written;
- the link id comes from ``secrets.token_urlsafe`` (144 random bits), never from the chat;
- anyone logged in can read a link (the web layer decides about anonymous readers);
  an unknown, malformed or oversized id is "not found" before any database query,
  a revoked or expired one says so;
- only the owner revokes a link, or an admin; someone else's link is "not found" too;
- "Continue in my chats" copies the shared messages, token ids included, into a new chat
  of the reader's, so the next prompt is the shared ids plus the new turn, exactly.

What is shared is what is stored: a reply still being written, or waiting in the journal
for the database, is not in the copy (share again once it is stored).
"""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from app.services.errors import CANNOT_READ, CANNOT_SAVE, ChatError, ConversationNotFound, database_faults
from storage.errors import Conflict, InvalidInput, NotFound
from storage.repository import NewMessage, Repository, SharedChat, ShareLinkRecord, UserRecord

LINK_BYTES = 18  # 24 URL-safe characters
LINK_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_EXPIRY_DAYS = 365


class ShareNotFound(ChatError):
    def __init__(self) -> None:
        super().__init__("This share link does not exist. Check the address, or ask for a new link.")


class ShareGone(ChatError):
    """A link that existed and no longer shows anything: revoked or expired (HTTP 410)."""


REVOKED = "This share link was revoked by its owner; ask them for a new one."
EXPIRED = "This share link has expired; ask its owner for a new one."


def valid_link_id(link_id: Any) -> str:
    """The id if it could be one we issued; anything else is "not found" without asking the database."""
    if not isinstance(link_id, str) or not LINK_ID.fullmatch(link_id):
        raise ShareNotFound()
    return link_id


def link_state(link: ShareLinkRecord, now: datetime | None = None) -> str:
    """``active``, ``revoked`` or ``expired``: what the account page and the link itself say."""
    if link.revoked_at is not None:
        return "revoked"
    if link.expired(now or datetime.now(UTC)):
        return "expired"
    return "active"


class ShareService:
    """Share links over the repository; holds no state of its own, so the web layer makes one per use."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    async def _user(self, username: str | None) -> UserRecord:
        if not username:
            raise ChatError("Please log in.")
        try:
            with database_faults(CANNOT_READ):
                return await self.repository.get_user(username)
        except NotFound:
            raise ChatError("Your account no longer exists; ask an admin.") from None

    async def share(
        self, username: str | None, conversation_id: Any, *, expires_in_days: int | None = None
    ) -> ShareLinkRecord:
        """Freeze the branch on screen of one's own chat under a new random link."""
        user = await self._user(username)
        if not isinstance(conversation_id, str) or not conversation_id:
            raise ConversationNotFound()
        expires_at = None
        if expires_in_days is not None:
            if isinstance(expires_in_days, bool) or not isinstance(expires_in_days, int) or not (
                1 <= expires_in_days <= MAX_EXPIRY_DAYS
            ):
                raise ChatError(f"A link expires after 1 to {MAX_EXPIRY_DAYS} days, or never.")
            expires_at = datetime.now(UTC) + timedelta(days=expires_in_days)
        for _attempt in range(3):  # a clash of 144 random bits will not happen; still, never a 500
            try:
                with database_faults(CANNOT_SAVE):
                    return await self.repository.create_share(
                        user.id, conversation_id, secrets.token_urlsafe(LINK_BYTES), expires_at=expires_at
                    )
            except NotFound:
                raise ConversationNotFound() from None
            except Conflict:
                continue
        raise ChatError("Could not make a link; try again.")

    async def links(self, username: str | None) -> list[ShareLinkRecord]:
        user = await self._user(username)
        with database_faults(CANNOT_READ):
            return await self.repository.list_shares(user.id)

    async def revoke(self, username: str | None, link_id: Any) -> ShareLinkRecord:
        """Revoke one's own link (an admin: any link); someone else's is "not found", and stays as it was."""
        user = await self._user(username)
        link_id = valid_link_id(link_id)
        try:
            with database_faults(CANNOT_SAVE):
                return await self.repository.revoke_share(link_id, None if user.is_admin else user.id)
        except NotFound:
            raise ShareNotFound() from None

    async def view(self, link_id: Any) -> SharedChat:
        """What a link shows; ShareNotFound or ShareGone (revoked, expired) with the sentence to show."""
        link_id = valid_link_id(link_id)
        try:
            with database_faults(CANNOT_READ):
                link = await self.repository.get_share_link(link_id)
        except NotFound:
            raise ShareNotFound() from None
        state = link_state(link)
        if state != "active":
            raise ShareGone(REVOKED if state == "revoked" else EXPIRED)
        try:
            with database_faults(CANNOT_READ):
                return await self.repository.get_shared_chat(link_id)
        except NotFound:  # revoked between the two reads: its copy is gone
            raise ShareGone(REVOKED) from None

    async def continue_in_my_chats(self, username: str | None, link_id: Any) -> str:
        """Copy a shared chat into the reader's own chats, token ids and settings included; the new chat's id.

        The copy is one branch (the versions that were shown), without the owner's ratings,
        and carries the shared chat's model, so its stored ids are trusted for the next prompt.
        """
        user = await self._user(username)
        shared = await self.view(link_id)
        now = datetime.now(UTC)
        messages = [
            NewMessage(
                m.role, m.content, m.token_ids, params=m.params, finish_reason=m.finish_reason,
                prompt_tokens=m.prompt_tokens, completion_tokens=m.completion_tokens, latency_ms=m.latency_ms,
                created_at=m.created_at,
            )
            for m in shared.messages
        ]
        conversation_id = str(uuid.uuid4())
        try:
            with database_faults(CANNOT_SAVE):
                await self.repository.import_conversation(
                    user.id, conversation_id=conversation_id, title=shared.link.title, model=shared.model,
                    created_at=now, updated_at=now, messages=messages,
                )
        except (InvalidInput, Conflict, NotFound) as error:
            raise ChatError(f"Could not copy this chat: {error}.") from None
        return conversation_id
