"""Keys and values of finished requests, kept so the next turn of a chat prefills only what is new.

Our prompts are the stored token ids of a conversation, so turn ``n + 1`` starts with
exactly the ids of turn ``n``'s prompt and reply: when a request leaves the batch its
KV is kept here under those ids, and a newcomer whose prompt shares a prefix with
any entry copies that prefix's KV instead of recomputing it (a system prompt shared
by every user hits too). Matching is by longest common prefix, as in a radix tree;
entries are whole sequences rather than tree nodes because a chat's next turn
*extends* its previous entry, and an entry that is a prefix of a newer one is
dropped on insert, so each chat holds one entry and nothing is stored twice in
the common case. Lookups copy the KV out at once (on the worker thread that owns
the slots), so an entry in use can be evicted without harm: no reference counts.

Least recently used entries are evicted to stay within the byte budget. Windowed
prompts (oldest exchanges dropped) share only their system turn with the cached
sequence, so they match that much and prefill the rest: slower, never wrong.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.engine.contract import PrefixCacheStats
from app.engine.kv_cache import RowKV

MIN_TOKENS_TO_KEEP = 16


@dataclass
class _Entry:
    token_ids: torch.Tensor  # int64 [length]
    kv: RowKV
    nbytes: int


class PrefixCache:
    """An LRU map from token sequences to their per-layer keys and values."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = max(0, budget_bytes)
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next_key = 0
        self.bytes_used = 0
        self.lookups = 0
        self.hits = 0
        self.reused_tokens = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(
            entries=len(self._entries),
            bytes_used=self.bytes_used,
            budget_bytes=self.budget_bytes,
            lookups=self.lookups,
            hits=self.hits,
            reused_tokens=self.reused_tokens,
            evictions=self.evictions,
        )

    def longest_prefix(self, prompt: Sequence[int], limit: int) -> tuple[int, RowKV | None]:
        """The longest cached prefix of ``prompt`` (at most ``limit`` tokens) and its KV views.

        The views belong to the cache: copy them before anything else touches it.
        """
        if not self.enabled or limit <= 0:
            return 0, None
        self.lookups += 1
        query = torch.tensor(list(prompt[:limit]), dtype=torch.long)
        best_key, best_length = None, 0
        for key, entry in self._entries.items():
            length = _common_prefix_length(query, entry.token_ids)
            if length > best_length:
                best_key, best_length = key, length
        if best_key is None or best_length < MIN_TOKENS_TO_KEEP:
            return 0, None
        entry = self._entries[best_key]
        self._entries.move_to_end(best_key)
        self.hits += 1
        self.reused_tokens += best_length
        return best_length, [(keys[:, :best_length], values[:, :best_length]) for keys, values in entry.kv]

    def insert(self, token_ids: Sequence[int], kv: RowKV) -> None:
        """Keep a copy of ``kv`` (``[heads, len(token_ids), dim]`` per layer) under ``token_ids``."""
        length = len(token_ids)
        if not self.enabled or length < MIN_TOKENS_TO_KEEP:
            return
        nbytes = sum(keys.nbytes + values.nbytes for keys, values in kv)
        if nbytes > self.budget_bytes:
            return
        ids = torch.tensor(list(token_ids), dtype=torch.long)
        for key, entry in list(self._entries.items()):
            common = _common_prefix_length(ids, entry.token_ids)
            if common == len(entry.token_ids):  # the old entry is a prefix of the new one
                self._drop(key)
            elif common == length:  # the new sequence is already covered
                self._entries.move_to_end(key)
                return
        while self._entries and self.bytes_used + nbytes > self.budget_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        copied = [(keys.clone(), values.clone()) for keys, values in kv]
        self._entries[self._next_key] = _Entry(ids, copied, nbytes)
        self._next_key += 1
        self.bytes_used += nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.bytes_used = 0

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.bytes_used -= entry.nbytes


def _common_prefix_length(a: torch.Tensor, b: torch.Tensor) -> int:
    length = min(a.numel(), b.numel())
    if length == 0:
        return 0
    differs = torch.nonzero(a[:length] != b[:length])
    return int(differs[0]) if differs.numel() else length
