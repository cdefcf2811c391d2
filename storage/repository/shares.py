"""Share links and the frozen copies they show.

A share copies the branch on screen of one chat (text, token ids, settings, the version
shown and the owner's rating of each message) into ``share_snapshots`` in the same
transaction that finds the chat by its owner, so a link can only ever be made of one's
own chat and shows exactly what was on screen then: later edits, retries and deletions
of the chat change nothing in it. Reading a link is not scoped by owner (the random id
is what grants access); revoking is, except for an admin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from storage.errors import Conflict, NotFound
from storage.models import SHARE_ID_MAX, ShareLink, ShareSnapshot, User, utcnow
from storage.repository.base import RepositoryBase
from storage.repository.checks import storable
from storage.repository.convert import message_json
from storage.repository.records import MessageRecord

LINKS_LISTED = 200


@dataclass(frozen=True)
class ShareLinkRecord:
    id: str
    user_id: int
    username: str
    conversation_id: str | None  # None once the source chat was deleted
    title: str
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class SharedMessage:
    """One message of a shared chat as it was on screen (the fields the share page and a copy need)."""

    role: str
    content: str
    token_ids: list[int]
    params: dict[str, Any] | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int | None
    created_at: datetime
    model: str
    version: int = 1
    version_count: int = 1
    rating: str | None = None  # the owner's "up" / "down"
    comment: str | None = None


@dataclass(frozen=True)
class SharedChat:
    link: ShareLinkRecord
    model: str
    messages: list[SharedMessage]


def frozen_message(message: MessageRecord, model: str) -> dict[str, Any]:
    """A message as JSON for the snapshot: what the share page shows and what a copy continues from."""
    return {
        **message_json(message),
        "model": str(message.model or (message.params or {}).get("model") or model),
        "version": message.version,
        "version_count": message.version_count,
        "rating": message.rating.value if message.rating else None,
        "comment": message.rating.comment if message.rating else None,
    }


def thawed_message(data: dict[str, Any]) -> SharedMessage:
    return SharedMessage(
        role=data["role"],
        content=data["content"],
        token_ids=[int(token) for token in data.get("token_ids") or []],
        params=data.get("params"),
        finish_reason=data.get("finish_reason"),
        prompt_tokens=data.get("prompt_tokens"),
        completion_tokens=data.get("completion_tokens"),
        latency_ms=data.get("latency_ms"),
        created_at=datetime.fromisoformat(data["created_at"]),
        model=data.get("model") or "",
        version=int(data.get("version") or 1),
        version_count=int(data.get("version_count") or 1),
        rating=data.get("rating"),
        comment=data.get("comment"),
    )


def link_record(link: ShareLink, username: str) -> ShareLinkRecord:
    return ShareLinkRecord(
        link.id, link.user_id, username, link.conversation_id, link.title, link.created_at, link.revoked_at,
        link.expires_at,
    )


def lookable(link_id: Any) -> bool:
    """Only an id that could have been issued is sent to the database."""
    return isinstance(link_id, str) and 0 < len(link_id) <= SHARE_ID_MAX and storable(link_id)


class ShareStore(RepositoryBase):
    """Creating, listing, reading and revoking share links."""

    async def create_share(
        self, user_id: int, conversation_id: str, link_id: str, *, expires_at: datetime | None = None
    ) -> ShareLinkRecord:
        """Freeze the branch on screen of the user's own chat under ``link_id`` (NotFound: not theirs)."""
        if not lookable(link_id):
            raise NotFound("share link id is not usable")
        async with self.database.writer() as session, session.begin():
            # locked (PostgreSQL): a delete of the chat waits, so the link never names a chat already gone
            conversation = await self._owned(session, user_id, conversation_id, lock=True)
            chat = await self._load_full(session, conversation)
            if await session.get(ShareLink, link_id) is not None:
                raise Conflict("that share link id is taken")
            link = ShareLink(
                id=link_id, user_id=user_id, conversation_id=chat.id, title=chat.title, created_at=utcnow(),
                expires_at=expires_at,
            )
            session.add(link)
            await session.flush()
            session.add(ShareSnapshot(
                link_id=link_id, model=chat.model, messages=[frozen_message(m, chat.model) for m in chat.messages],
            ))
            return link_record(link, chat.username)

    async def list_shares(self, user_id: int) -> list[ShareLinkRecord]:
        """The user's links, newest first (revoked ones too, so the list says what became of them)."""
        async with self.database.reader() as session:
            rows = await session.execute(
                select(ShareLink, User.username).join(User, User.id == ShareLink.user_id)
                .where(ShareLink.user_id == user_id)
                .order_by(ShareLink.created_at.desc(), ShareLink.id).limit(LINKS_LISTED)
            )
            return [link_record(link, username) for link, username in rows]

    async def get_share_link(self, link_id: Any) -> ShareLinkRecord:
        if not lookable(link_id):
            raise NotFound("share link not found")
        async with self.database.reader() as session:
            found = (await session.execute(
                select(ShareLink, User.username).join(User, User.id == ShareLink.user_id).where(ShareLink.id == link_id)
            )).first()
            if found is None:
                raise NotFound("share link not found")
            return link_record(*found)

    async def get_shared_chat(self, link_id: Any) -> SharedChat:
        """The link and its frozen copy; NotFound when there is no such link or it has no copy (revoked)."""
        link = await self.get_share_link(link_id)
        async with self.database.reader() as session:
            snapshot = await session.get(ShareSnapshot, link.id)
            if snapshot is None:
                raise NotFound("share link has no snapshot")
            return SharedChat(link, snapshot.model, [thawed_message(m) for m in snapshot.messages])

    async def revoke_share(self, link_id: Any, user_id: int | None) -> ShareLinkRecord:
        """Revoke a link and delete its copy. ``user_id`` None: any link (an admin); else only the user's own.

        Someone else's link is NotFound, exactly like an unknown id. Revoking twice keeps the first time.
        """
        if not lookable(link_id):
            raise NotFound("share link not found")
        async with self.database.writer() as session, session.begin():
            query = select(ShareLink).where(ShareLink.id == link_id)
            if user_id is not None:
                query = query.where(ShareLink.user_id == user_id)
            link = await session.scalar(query)
            if link is None:
                raise NotFound("share link not found")
            if link.revoked_at is None:
                link.revoked_at = utcnow()
            snapshot = await session.get(ShareSnapshot, link.id)
            if snapshot is not None:
                await session.delete(snapshot)
            username = await session.scalar(select(User.username).where(User.id == link.user_id))
            return link_record(link, username or "")
