"""Replies the database did not accept yet: kept in memory and in a local append-only file.

A tester who watched a reply finish must find it stored, even if the database was
down, full or read-only at that moment. Such a reply is appended here as one JSON
line and fsynced before the tester is told "saved locally"; a background task
writes the backlog to the database, oldest first, as soon as it accepts writes, and
the server replays the file at start before serving, so a crash during the outage
loses nothing either.

Exactly once: the database write is :meth:`Repository.put_reply`, which recognises
a reply it already holds (same role, text and creation time after the same user
message). A crash between that commit and the "done" line here only makes the
next replay find the row and move on.

File format, one JSON object per line: ``{"add": {...entry...}}`` or
``{"done": key}``. When nothing is pending the file is emptied. A torn last line
(a crash mid-append) is skipped with a warning; the file is rewritten at load.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from storage.errors import InvalidInput, NotFound, StorageUnavailable
from storage.repository import MessageRecord, NewMessage, Repository
from storage.repository.convert import message_json

log = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0


@dataclass(frozen=True)
class PendingReply:
    """A reply to store after the message at ``after_seq`` (``replace``: it supersedes what follows)."""

    user_id: int
    conversation_id: str
    after_seq: int
    message: NewMessage
    replace: bool = False
    key: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "user_id": self.user_id,
            "conversation_id": self.conversation_id,
            "after_seq": self.after_seq,
            "replace": self.replace,
            "message": message_json(self.message),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PendingReply:
        fields = dict(data["message"])
        created = fields.pop("created_at")
        return cls(
            user_id=int(data["user_id"]),
            conversation_id=str(data["conversation_id"]),
            after_seq=int(data["after_seq"]),
            replace=bool(data["replace"]),
            key=str(data["key"]),
            message=NewMessage(**fields, created_at=datetime.fromisoformat(created) if created else None),
        )

    def as_record(self, seq: int) -> MessageRecord:
        """How the reply reads while it waits: like a stored message, marked pending."""
        message = self.message
        assert message.created_at is not None
        return MessageRecord(
            id=0,
            seq=seq,
            role=message.role,
            content=message.content,
            token_ids=list(message.token_ids),
            params=message.params,
            finish_reason=message.finish_reason,
            prompt_tokens=message.prompt_tokens,
            completion_tokens=message.completion_tokens,
            latency_ms=message.latency_ms,
            created_at=message.created_at,
            pending=True,
            model=message.model,
            variant=message.variant,
        )


class Journal:
    """The backlog of replies waiting for the database, in the order they ended."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._pending: list[PendingReply] = []
        self._lock = asyncio.Lock()  # one replay at a time, so order holds
        self._wakeup = asyncio.Event()
        self._file_lock = threading.Lock()  # appends and rewrites run in worker threads
        self.last_error: str | None = None

    # ------------------------------------------------------------ reading

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def pending_for(self, conversation_id: str) -> list[PendingReply]:
        return [entry for entry in self._pending if entry.conversation_id == conversation_id]

    def load(self) -> int:
        """Read what a previous run left pending; returns how many. Call once, at start."""
        if self.path is None or not self.path.exists():
            return 0
        entries: dict[str, PendingReply] = {}
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if "done" in record:
                    entries.pop(record["done"], None)
                else:
                    entry = PendingReply.from_json(record["add"])
                    entries[entry.key] = entry
            except (ValueError, KeyError, TypeError):
                log.warning("journal %s line %d is unreadable (a torn write?); skipped", self.path, number)
        self._pending = list(entries.values())
        self._rewrite()
        if self._pending:
            self._wakeup.set()
        return len(self._pending)

    # ------------------------------------------------------------ writing

    async def add(self, entry: PendingReply) -> bool:
        """Keep ``entry`` (memory first, then the file, fsynced); True when it is on disk."""
        self._pending.append(entry)
        self._wakeup.set()
        try:
            await asyncio.to_thread(self._append, [{"add": entry.to_json()}])
        except OSError as error:
            log.error("journal %s cannot take a reply (%s); it is kept in memory only", self.path, error)
            return False
        return True

    def _append(self, records: Iterable[dict[str, Any]]) -> None:
        if self.path is None:
            raise OSError("no journal file configured")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        with self._file_lock, self.path.open("a", encoding="utf-8") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())

    def _rewrite(self) -> None:
        """Replace the file by what is pending now (atomically: temp file, fsync, rename).

        The snapshot is taken under the file lock, so an entry added meanwhile is
        either in it or appended after it: never lost from the file.
        """
        if self.path is None:
            return
        try:
            with self._file_lock:
                self._rewrite_locked(list(self._pending))
        except OSError as error:
            log.warning("journal %s could not be compacted (%s); replays stay idempotent", self.path, error)

    def _rewrite_locked(self, entries: list[PendingReply]) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(self.path.suffix + ".tmp")
        with temporary.open("w", encoding="utf-8") as out:
            out.writelines(json.dumps({"add": entry.to_json()}, ensure_ascii=False) + "\n" for entry in entries)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    # ------------------------------------------------------------ replaying

    async def replay(self, repository: Repository, conversation_id: str | None = None) -> int:
        """Store the backlog (or one chat's part of it) in order; returns how many remain.

        Raises StorageUnavailable when the database still refuses, leaving the
        rest pending. A reply whose chat was deleted meanwhile is dropped; one the
        database can never take (it cannot happen for replies we produced) is set
        aside in a ``.rejected`` file next to the journal, never silently lost.
        """
        async with self._lock:
            for entry in [e for e in self._pending if conversation_id in (None, e.conversation_id)]:
                try:
                    await repository.put_reply(
                        entry.user_id, entry.conversation_id, entry.message,
                        after_seq=entry.after_seq, replace=entry.replace,
                    )
                except StorageUnavailable as error:
                    self.last_error = error.reason
                    raise
                except NotFound:
                    log.info("chat %s was deleted; its pending reply is dropped", entry.conversation_id)
                except InvalidInput as error:
                    log.error("the database refuses a pending reply (%s); it is set aside", error)
                    await asyncio.to_thread(self._set_aside, entry)
                self._pending.remove(entry)
                await self._mark_done(entry)
            self.last_error = None
            return len(self._pending) if conversation_id is None else len(self.pending_for(conversation_id))

    async def _mark_done(self, entry: PendingReply) -> None:
        try:
            if self._pending:
                await asyncio.to_thread(self._append, [{"done": entry.key}])
            else:
                await asyncio.to_thread(self._rewrite)
        except OSError as error:
            # harmless: the next replay finds the reply stored and moves on
            log.warning("journal %s: could not mark a reply done (%s)", self.path, error)

    def _set_aside(self, entry: PendingReply) -> None:
        if self.path is None:
            log.error("rejected reply: %s", json.dumps(entry.to_json(), ensure_ascii=False))
            return
        with self.path.with_suffix(".rejected").open("a", encoding="utf-8") as out:
            out.write(json.dumps(entry.to_json(), ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())

    async def keep_replaying(self, repository: Repository) -> None:
        """Background task: store the backlog whenever there is one, backing off while the database refuses."""
        delay = RETRY_FIRST_SECONDS
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            try:
                await self.replay(repository)
                delay = RETRY_FIRST_SECONDS
            except StorageUnavailable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            except Exception:
                log.exception("replaying the journal failed; trying again in %.0f s", RETRY_MAX_SECONDS)
                await asyncio.sleep(RETRY_MAX_SECONDS)
