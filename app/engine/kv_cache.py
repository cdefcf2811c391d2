"""A KV cache with one fixed slot per running request, for continuous batching.

transformers' ``DynamicCache`` concatenates every layer's keys and values on every
step (14% of a batch-16 step here) and keeps all rows at one length, so a request
joining mid-way forces left-padding everything. Here each layer owns preallocated
buffers ``[max_batch, kv_heads, capacity, head_dim]``; row ``r`` holds its tokens in
columns ``0..length_r`` and writes its next token at column ``length_r``. Rows join
by copying their prefill into a free slot and leave by moving the last row into
theirs, so neither touches the other rows. Attention reads columns up to the
longest row, and the per-row mask hides the unused tail of shorter rows.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

CAPACITY_STEP = 256


class SlotLayer(DynamicLayer):
    """One layer's slot buffers; ``update`` writes each row's token at its own column."""

    def __init__(self, owner: SlotKVCache) -> None:
        super().__init__()
        self.owner = owner
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def allocate(self, like: torch.Tensor, batch: int, capacity: int) -> None:
        _, heads, _, head_dim = like.shape
        shape = (batch, heads, capacity, head_dim)
        self.key_buffer = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.value_buffer = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.lazy_initialization(like, like)

    def grow(self, capacity: int) -> None:
        assert self.key_buffer is not None and self.value_buffer is not None
        old = self.key_buffer.shape[2]
        batch, heads, _, head_dim = self.key_buffer.shape
        for name in ("key_buffer", "value_buffer"):
            bigger = self.key_buffer.new_zeros((batch, heads, capacity, head_dim))
            bigger[:, :, :old] = getattr(self, name)
            setattr(self, name, bigger)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.key_buffer is not None and self.value_buffer is not None
        rows, columns, kv_length = self.owner.step_rows, self.owner.step_columns, self.owner.step_kv_length
        self.key_buffer[rows, :, columns] = key_states[:, :, 0]
        self.value_buffer[rows, :, columns] = value_states[:, :, 0]
        batch = key_states.shape[0]
        self.keys = self.key_buffer[:batch, :, :kv_length]
        self.values = self.value_buffer[:batch, :, :kv_length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.owner.step_kv_length - 1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.step_kv_length, 0


class SlotKVCache(Cache):
    """The running batch's cache. Only the batcher's worker thread touches it."""

    def __init__(self, num_layers: int, max_batch: int, max_length: int) -> None:
        self.max_batch = max_batch
        self.max_length = max_length
        self.capacity = 0
        self.step_rows = torch.arange(max_batch)
        self.step_columns = torch.zeros(max_batch, dtype=torch.long)
        self.step_kv_length = 1
        super().__init__(layers=[SlotLayer(self) for _ in range(num_layers)])

    @property
    def allocated(self) -> bool:
        return self.capacity > 0

    def ensure_capacity(self, needed: int, like: list[torch.Tensor]) -> None:
        """Make room for ``needed`` columns, allocating on first use."""
        if needed <= self.capacity:
            return
        if needed > self.max_length:
            raise ValueError(f"sequence of {needed} tokens exceeds the cache limit {self.max_length}")
        capacity = min(self.max_length, max(needed, self.capacity * 2, CAPACITY_STEP))
        capacity = min(self.max_length, -(-capacity // CAPACITY_STEP) * CAPACITY_STEP)
        if self.allocated:
            for layer in self.layers:
                layer.grow(capacity)
        else:
            for layer, sample in zip(self.layers, like, strict=True):
                layer.allocate(sample, self.max_batch, capacity)
        self.capacity = capacity

    def place(self, slot: int, prefill_layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy one request's prefill keys/values (``[heads, length, dim]``) into ``slot``."""
        length = prefill_layers[0][0].shape[1]
        self.ensure_capacity(length + 1, [keys.unsqueeze(0) for keys, _ in prefill_layers])
        for layer, (keys, values) in zip(self.layers, prefill_layers, strict=True):
            layer.key_buffer[slot, :, :length] = keys
            layer.value_buffer[slot, :, :length] = values

    def move(self, source: int, target: int, length: int) -> None:
        """Move a row to another slot (used to keep running rows packed at the front)."""
        for layer in self.layers:
            layer.key_buffer[target, :, :length] = layer.key_buffer[source, :, :length]
            layer.value_buffer[target, :, :length] = layer.value_buffer[source, :, :length]

    def prepare_step(self, lengths: list[int]) -> None:
        """Before a decode step: row ``i`` writes its new token at column ``lengths[i]``."""
        batch = len(lengths)
        longest = max(lengths)
        self.ensure_capacity(longest + 1, [])
        self.step_rows = torch.arange(batch)
        self.step_columns = torch.tensor(lengths, dtype=torch.long)
        self.step_kv_length = longest + 1

    def release(self) -> None:
        """Free the buffers (after a fault, or when the batch has been idle)."""
        for layer in self.layers:
            layer.key_buffer = layer.value_buffer = None
            layer.keys = layer.values = None
            layer.is_initialized = False
        self.capacity = 0
