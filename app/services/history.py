"""Which token ids a stored chat's prompt is built from: its own, or re-encoded text.

Storing each turn's ids keeps the prompt exactly what the model saw (and lets the
engine's prefix cache match it); this module decides when those ids can be trusted.
"""

from __future__ import annotations

import logging

from app.engine import Turn
from app.services.served_models import ServedModel, ServedModels
from storage.repository import ConversationRecord, MessageRecord

log = logging.getLogger(__name__)


def history_turns(conversation: ConversationRecord, model: ServedModel, models: ServedModels) -> list[Turn]:
    """The stored token history; re-encoded from text only when it cannot be trusted.

    Ids made by other weights (or imported without ids) mean nothing to this
    tokenizer, so then, and only then, the text is re-encoded; a variant of the same
    model (same weights) reads the ids as they are.
    """
    messages = conversation.messages
    prompt_format = model.prompt_format
    trusted = all(
        (m.token_ids or (not m.content and m.role != "user")) and ids_are_for(model, models, m, conversation.model)
        for m in messages
    )
    if trusted:
        return [Turn(m.role, m.token_ids) for m in messages]
    log.info("conversation %s re-encoded from text for %s", conversation.id, model.name)
    ids = prompt_format.reencode([(m.role, m.content) for m in messages])
    return [Turn(m.role, turn_ids) for m, turn_ids in zip(messages, ids, strict=True)]


def ids_are_for(model: ServedModel, models: ServedModels, message: MessageRecord, chat_model: str) -> bool:
    """Whether a stored message's ids were made by ``model``'s weights: its own record says which
    model wrote it (migration 0009); one without (imported) goes by the chat's model."""
    if message.model:
        return message.model == model.weights_name
    return models.same_weights(chat_model, model)


def reencoded_for(conversation: ConversationRecord, model: ServedModel, models: ServedModels) -> bool:
    """Whether continuing this chat with ``model`` re-encodes earlier messages from their text."""
    return any(not ids_are_for(model, models, m, conversation.model) for m in conversation.messages)
