"""Attention for a mixed step: decode rows and prompt chunks as one flat batch of tokens.

One forward per step reads the weights once (Sarathi-Serve's mixed batch). HF's
Llama runs the flat batch as a single sequence ``[1, tokens]`` with each token's
own position; the projections, norms and MLP never mix tokens, so the only part
that must know which row a token belongs to is attention. This module registers
an attention function with transformers' ``AttentionInterface``: when the call
carries a ``MixedStep``, each token's keys and values have already been written
into its row's KV slot (``SlotKVCache`` in token mode) and attention runs per row
over that row's keys: all decode rows together (one query each, masked to their
own lengths, as a decode step always ran), then each prompt chunk with its causal
offset. Without a ``MixedStep`` (``model.generate``, anyone else calling the same
model) it is plain ``sdpa``, so registering it changes nothing for them.

Both parts call transformers' own ``sdpa_attention_forward`` with the shapes the
separate decode and chunk forwards used, so each row sees the same arithmetic as
before, whatever else shares its step. Other architectures keep the separate
forwards (see ``supports_mixed_batches``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

MIXED_ATTENTION = "slot_mixed"
# Model types whose decoder layers only mix tokens in attention and take per-token positions.
MIXED_MODEL_TYPES = frozenset({"llama"})


@dataclass
class PromptChunk:
    """One row's prompt tokens in a mixed step: ``count`` tokens at flat offset ``offset``,
    written to ``slot`` from column ``start`` on."""

    slot: int
    offset: int
    start: int
    count: int
    mask: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        positions = torch.arange(self.start, self.start + self.count).unsqueeze(1)
        allowed = torch.arange(self.start + self.count).unsqueeze(0) <= positions
        self.mask = _additive(allowed).view(1, 1, self.count, -1)


@dataclass
class DecodeGroup:
    """Consecutive decode rows ``first..first + rows - 1`` attending together over ``kv_length`` columns."""

    first: int
    lengths: list[int]
    mask: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        kv_length = max(self.lengths) + 1
        allowed = torch.arange(kv_length).view(1, -1) <= torch.tensor(self.lengths).view(-1, 1)
        self.mask = _additive(allowed).view(len(self.lengths), 1, 1, kv_length)


@dataclass
class MixedStep:
    """Who owns which tokens of one flat forward; passed to the attention function per call."""

    layers: list[Any]  # the SlotKVCache's layers, holding key_buffer / value_buffer
    decode_lengths: list[int]  # decode row i (slot i, flat token i) attends to columns 0..lengths[i]
    chunks: list[PromptChunk]
    decode_groups: list[DecodeGroup] = field(init=False)

    def __post_init__(self) -> None:
        self.decode_groups = [DecodeGroup(first, lengths) for first, lengths in _groups(self.decode_lengths)]


def _groups(lengths: list[int]) -> list[tuple[int, list[int]]]:
    """Consecutive rows of similar length share one attention call; a row far longer or shorter starts a
    new one, so nobody reads (masked) keys of a long row for nothing. Masked columns add exact zeros, so
    the grouping never changes a row's result."""
    groups: list[tuple[int, list[int]]] = []
    for row, length in enumerate(lengths):
        if groups:
            current = groups[-1][1]
            low, high = min(*current, length), max(*current, length)
            if high <= 2 * low + 64:
                current.append(length)
                continue
        groups.append((row, [length]))
    return groups


def _additive(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)


def mixed_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    mixed_step: MixedStep | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Per-row attention over the slots for a ``MixedStep``; plain sdpa otherwise."""
    if mixed_step is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    layer = mixed_step.layers[module.layer_idx]
    parts = []
    for group in mixed_step.decode_groups:
        rows, kv_length = len(group.lengths), group.mask.shape[-1]
        first, end = group.first, group.first + rows
        rows_query = query[0, :, first:end].transpose(0, 1).unsqueeze(2)  # [rows, heads, 1, dim]
        out, _ = sdpa_attention_forward(
            module,
            rows_query,
            layer.key_buffer[first:end, :, :kv_length],
            layer.value_buffer[first:end, :, :kv_length],
            group.mask.to(query.dtype),
            is_causal=False,
            **kwargs,
        )
        parts.append(out.reshape(rows, *out.shape[2:]))  # [rows, heads, dim]
    for chunk in mixed_step.chunks:
        end = chunk.start + chunk.count
        out, _ = sdpa_attention_forward(
            module,
            query[:, :, chunk.offset : chunk.offset + chunk.count],
            layer.key_buffer[chunk.slot : chunk.slot + 1, :, :end],
            layer.value_buffer[chunk.slot : chunk.slot + 1, :, :end],
            chunk.mask.to(query.dtype),
            is_causal=False,
            **kwargs,
        )
        parts.append(out[0])  # [count, heads, dim]
    return torch.cat(parts).unsqueeze(0), None


_registered = False


def register_mixed_attention() -> None:
    """Make ``MIXED_ATTENTION`` a name transformers knows (its masks are sdpa's: only ``generate`` uses them)."""
    global _registered
    if not _registered:
        AttentionInterface.register(MIXED_ATTENTION, mixed_attention)
        AttentionMaskInterface.register(MIXED_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
        _registered = True


def supports_mixed_batches(model: Any) -> bool:
    """Llama-family models on sdpa attention (the default) can run mixed steps; others keep two forwards."""
    config = getattr(model, "config", None)
    return (
        getattr(config, "model_type", None) in MIXED_MODEL_TYPES
        and getattr(config, "_attn_implementation", None) in ("sdpa", MIXED_ATTENTION)
    )


def enable_mixed_attention(model: Any) -> None:
    register_mixed_attention()
    if model.config._attn_implementation != MIXED_ATTENTION:
        model.set_attn_implementation(MIXED_ATTENTION)
