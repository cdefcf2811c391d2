"""The pure rules of a chat: what a message may contain, what settings may be, what a chat shows.

No storage and no engine here: each rule is a function of its arguments, so the
service, the page and the tests apply exactly the same one.
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from dataclasses import dataclass
from typing import Any

from app.engine import InvalidParams, SamplingParams
from app.services.errors import ChatError
from storage.journal import PendingReply
from storage.repository import ConversationRecord

TITLE_LENGTH = 60
ALLOWED_CONTROL_CHARACTERS = {"\n", "\t", "\r"}


@dataclass(frozen=True)
class ChatOptions:
    """Per-message settings from the UI's settings panel (validated by SamplingParams)."""

    system_prompt: str = ""
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int | None = None
    # the model picked on the page: a new chat's model, or another one for a chat whose model is
    # gone (or to switch); "" keeps the chat's own model (the default for a new chat)
    model: str = ""
    # sent from the battle page: the one place a chat of a battle not voted on yet may be used
    battle: bool = False

    def sampling(self, max_allowed: int) -> SamplingParams:
        for name, value in (("Temperature", self.temperature), ("Top p", self.top_p),
                            ("Max new tokens", self.max_new_tokens)):
            # NaN, infinity, text or nothing from an API client: one sentence, not Python's words
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ChatError(f"{name} must be a finite number; got {str(value)[:20]!r}.")
        if not 1 <= int(self.max_new_tokens) <= max_allowed:
            raise ChatError(f"Max new tokens must be between 1 and {max_allowed}.")
        try:
            return SamplingParams(
                temperature=float(self.temperature),
                top_p=float(self.top_p),
                max_new_tokens=int(self.max_new_tokens),
                seed=self.seed,
            )
        except (InvalidParams, TypeError, ValueError) as error:
            raise ChatError(f"Invalid setting: {error}") from None


def check_message_text(text: Any, max_chars: int) -> str:
    """The tester's text, or the sentence saying what to fix (checked before anything is stored)."""
    if not isinstance(text, str):
        raise ChatError("The message must be text.")
    if not text.strip():
        raise ChatError("Type a message first: it is empty.")
    if len(text) > max_chars:
        raise ChatError(f"The message is {len(text):,} characters long; the limit is {max_chars:,}. Shorten it.")
    for char in text:
        if unicodedata.category(char) == "Cc" and char not in ALLOWED_CONTROL_CHARACTERS:
            raise ChatError(f"The message contains a control character (U+{ord(char):04X}); remove it.")
        if unicodedata.category(char) == "Cs":
            raise ChatError("The message contains invalid Unicode (an unpaired surrogate).")
    return text


def valid_text(text: str) -> str:
    """Model output as storable, sendable text: a lone surrogate (which UTF-8 cannot carry,
    so it would break the stream and the database write) becomes U+FFFD; pairs are joined."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def title_from(text: str) -> str:
    """A new chat's title: its first message on one line, cut at ``TITLE_LENGTH`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def options_of(conversation: ConversationRecord) -> ChatOptions:
    """The settings a chat was last used with: its system prompt and its last message's sampling.

    Every user message stores the sampling parameters it was sent with, so a chat's
    settings live with the chat without a column of their own.
    """
    system = next((m.content for m in conversation.messages if m.role == "system"), "")
    for message in reversed(conversation.messages):
        if message.role == "user" and message.params:
            params = message.params
            try:
                return ChatOptions(
                    system, float(params["temperature"]), float(params["top_p"]), int(params["max_new_tokens"])
                )
            except (KeyError, TypeError, ValueError):
                break
    return ChatOptions(system)


def interrupted(conversation: ConversationRecord) -> bool:
    """A chat whose last message is a user message never got its reply (crash, restart)."""
    return bool(conversation.messages) and conversation.messages[-1].role == "user"


def with_pending(conversation: ConversationRecord, pending: list[PendingReply]) -> ConversationRecord:
    """The chat as the tester saw it: stored messages plus replies still waiting in the journal.

    A waiting reply becomes the shown version below the message it answers, as it
    will once stored; one answering a message off the branch on screen is not shown.
    """
    messages = list(conversation.messages)
    next_seq = max((m.seq for m in conversation.all_messages()), default=-1) + 1
    for entry in pending:
        position = next((i for i, m in enumerate(messages) if m.seq == entry.after_seq), None)
        if position is None:
            continue
        messages = messages[: position + 1]
        messages.append(entry.as_record(next_seq))
        next_seq += 1
    return dataclasses.replace(conversation, messages=messages)
