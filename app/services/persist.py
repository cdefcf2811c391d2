"""Storing a reply however it ended, with the local journal as the fallback.

What a tester saw is what gets stored: the reply is committed when it ends for any
reason (done, stopped, disconnected, failed, server stopping) with that reason, and
one the database does not accept goes to the journal (storage/journal.py) to be
written later, never overtaking an earlier reply of the same chat still waiting there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from app.engine import GenerationResult, GenerationStream, PromptFormat, SamplingParams
from app.engine.detokenize import shown_prefix
from app.services.observer import NO_OBSERVER, ReplyObserver
from app.services.rules import valid_text
from app.services.served_models import ServedModel
from storage.errors import InvalidInput, NotFound, StorageUnavailable
from storage.journal import Journal, PendingReply
from storage.models import utcnow
from storage.repository import MessageRecord, NewMessage, Repository

log = logging.getLogger(__name__)

WAIT_FOR_RESULT_SECONDS = 10.0


@dataclass
class LiveReply:
    """What a reply has produced so far and where it goes, so any ending can persist it; and its Stop switch."""

    stream: GenerationStream
    user_id: int
    conversation_id: str
    after_seq: int  # the user message it answers
    replace: bool = False  # Retry: supersedes what follows ``after_seq``
    text: str = ""
    started: float = field(default_factory=time.perf_counter)
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    # the model writing it: its prompt format, its engine, its name (None: the default model, unnamed)
    served: ServedModel | None = None


def finish_reason(result: GenerationResult | None, ending: str) -> str:
    """The stored reason a reply ended: how the stream ended here, or what the engine said."""
    if ending in ("stopped", "disconnected"):
        return ending
    if result is None:
        return "error"
    if result.finish_reason == "cancelled":
        # nobody pressed Stop or left: the engine itself cut it, which it does only when shutting down
        return "shutdown" if ending == "done" else "stopped"
    return result.finish_reason


class ReplyStore:
    """Turns an ended reply into a stored message, or a journaled one when the database refuses."""

    def __init__(
        self, repository: Repository, journal: Journal, prompt_format: PromptFormat,
        observer: ReplyObserver = NO_OBSERVER,
    ) -> None:
        self.repository = repository
        self.journal = journal
        self.prompt_format = prompt_format
        self.observer = observer

    async def persist(
        self, reply: LiveReply, params: SamplingParams, dropped_turns: int, ending: str
    ) -> MessageRecord | None:
        """Store the reply as it ended; if the database refuses, keep it in the journal.

        Returns the stored message, or the journaled one marked ``pending``.
        """
        result = reply.stream.result
        if result is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT_FOR_RESULT_SECONDS):
                    result = await reply.stream.final()
        message = self._message(reply, result, params, dropped_turns, ending)
        self.observer.reply_finished(message.finish_reason or "error", result)
        return await self._store(reply, message)

    def _message(
        self,
        reply: LiveReply,
        result: GenerationResult | None,
        params: SamplingParams,
        dropped_turns: int,
        ending: str,
    ) -> NewMessage:
        prompt_format = reply.served.prompt_format if reply.served else self.prompt_format
        generated = result.token_ids if result is not None else []
        text = valid_text(result.text) if result is not None else reply.text
        if ending == "stopped" and generated:
            # what was on screen at the click is what is stored, not tokens made after it
            shown = shown_prefix(prompt_format.tokenizer, list(generated), reply.text)
            if shown is not None:
                generated, text = shown
        details: dict[str, Any] = params.to_dict()
        if result is not None:
            if result.time_to_first_token is not None:
                details["time_to_first_token_ms"] = round(result.time_to_first_token * 1000)
            if result.error:
                details["error"] = result.error
        if dropped_turns:
            details["dropped_turns"] = dropped_turns
        return NewMessage(
            role="assistant",
            content=text,
            token_ids=prompt_format.assistant_turn(generated),
            params=details,
            finish_reason=finish_reason(result, ending),
            prompt_tokens=None if result is None else result.prompt_tokens,
            completion_tokens=len(generated),
            latency_ms=round((time.perf_counter() - reply.started) * 1000),
            created_at=utcnow(),  # with role and text, what makes a replay recognisable
            **(reply.served.stamp() if reply.served else {}),
        )

    async def _store(self, reply: LiveReply, message: NewMessage) -> MessageRecord | None:
        try:
            if self.journal.pending_for(reply.conversation_id):
                # earlier replies of this chat wait: this one may not overtake them
                await self.journal.replay(self.repository, reply.conversation_id)
            return await self.repository.put_reply(
                reply.user_id, reply.conversation_id, message, after_seq=reply.after_seq, replace=reply.replace
            )
        except NotFound:
            log.info("conversation %s was deleted while its reply streamed", reply.conversation_id)
            return None
        except InvalidInput:
            log.exception("the reply in %s cannot be stored", reply.conversation_id)
            return None
        except Exception as error:  # StorageUnavailable, or anything else: keep it and try again
            if not isinstance(error, StorageUnavailable):
                log.exception("could not store the reply in %s; it goes to the journal", reply.conversation_id)
            entry = PendingReply(reply.user_id, reply.conversation_id, reply.after_seq, message, reply.replace)
            await self.journal.add(entry)
            log.warning("reply in %s kept in the journal (%d waiting)", reply.conversation_id, self.journal.backlog)
            return entry.as_record(reply.after_seq + 1)
