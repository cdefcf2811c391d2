"""When a reply ends and how much of its text may be shown: one rule for every engine.

The in-process batcher and the remote engine both receive a reply token by token and
must agree on it exactly (a reply's stored ids and text must not depend on where it
was generated): an end-of-sequence id ends it, a stop string ends it and is cut off,
the token limit ends it, and the last ``len(longest stop) - 1`` characters are held
back while streaming, because they may turn out to be the start of a stop string the
tester must never see.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Protocol

from app.engine.detokenize import IncrementalDecoder
from app.engine.params import SamplingParams


class ReplyInProgress(Protocol):
    """What the rule reads and updates on an engine's request (both engines' requests have it)."""

    params: SamplingParams
    generated: list[int]
    text: str
    sent_chars: int
    first_token_at: float | None
    finish_reason: str | None


def accept_token(
    request: ReplyInProgress,
    decoder: IncrementalDecoder,
    token: int,
    eos_token_ids: Collection[int],
    *,
    context_full: bool = False,
) -> str:
    """Record ``token``; returns the text that became safe to show ('' for none).

    Sets ``request.finish_reason`` ("eos", "stop" or "length") when this token ends the
    reply; ``context_full`` ends it as "length" too (the model's window has no room left).
    """
    if request.first_token_at is None:
        request.first_token_at = time.perf_counter()
    request.generated.append(token)
    if token in eos_token_ids:
        request.finish_reason = "eos"
        return ""
    request.text += decoder.push(token)
    stops = request.params.stop
    if stops:
        cut = find_stop(request.text, stops)
        if cut is not None:
            request.text = request.text[:cut]
            request.finish_reason = "stop"
            return ""
    if len(request.generated) >= request.params.max_new_tokens or context_full:
        request.finish_reason = "length"
        return ""
    holdback = max((len(stop) for stop in stops), default=1) - 1
    safe_end = len(request.text) - holdback
    if safe_end <= request.sent_chars:
        return ""
    delta = request.text[request.sent_chars : safe_end]
    request.sent_chars = safe_end
    return delta


def find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string starts in ``text``, if any does."""
    positions = [index for stop in stops if (index := text.find(stop)) >= 0]
    return min(positions) if positions else None
