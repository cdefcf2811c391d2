"""Which token ids a stored chat's prompt is built from: its own, or re-encoded text.

Storing each turn's ids keeps the prompt exactly what the model saw (and lets the
engine's prefix cache match it); this module decides when those ids can be trusted.
"""

from __future__ import annotations

import logging

from app.engine import PromptFormat, Turn
from storage.repository import ConversationRecord

log = logging.getLogger(__name__)


def history_turns(conversation: ConversationRecord, model_name: str, prompt_format: PromptFormat) -> list[Turn]:
    """The stored token history; re-encoded from text only when it cannot be trusted.

    Ids made by another model (or imported without ids) mean nothing to this
    tokenizer, so then, and only then, the text is re-encoded.
    """
    messages = conversation.messages
    trusted = conversation.model == model_name and all(
        m.token_ids or (not m.content and m.role != "user") for m in messages
    )
    if trusted:
        return [Turn(m.role, m.token_ids) for m in messages]
    log.info("conversation %s re-encoded from text for %s", conversation.id, model_name)
    ids = prompt_format.reencode([(m.role, m.content) for m in messages])
    return [Turn(m.role, turn_ids) for m, turn_ids in zip(messages, ids, strict=True)]
