"""A KV cache with one fixed slot per request, for continuous batching and chunked prefill.

transformers' ``DynamicCache`` concatenates every layer's keys and values on every
step (14% of a batch-16 step here) and keeps all rows at one length, so a request
joining mid-way forces left-padding everything. Here each layer owns preallocated
buffers ``[max_rows, kv_heads, capacity, head_dim]``; row ``r`` holds its tokens in
columns ``0..length_r`` and each forward writes row ``r``'s new tokens right after
them, so rows of different lengths share one forward without padding the history.

A forward feeds ``chunk`` columns per row: 1 for a decode step, more for a prefill
chunk. A row with fewer new tokens than ``chunk`` is left-padded inside the chunk,
so its last real token is the chunk's last column (``logits_to_keep=1`` then gives
every row's next-token logits); the padding's keys and values go to a scratch
column past every row's end, never read. Attention reads columns up to the longest
row, and the caller's per-row mask hides the rest.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

CAPACITY_STEP = 256

RowKV = list[tuple[torch.Tensor, torch.Tensor]]
"""One row's keys and values per layer, each ``[kv_heads, length, head_dim]``."""


class SlotLayer(DynamicLayer):
    """One layer's slot buffers; ``update`` writes each row's tokens at its own columns."""

    def __init__(self, owner: SlotKVCache, heads: int, head_dim: int) -> None:
        super().__init__()
        self.owner = owner
        self.heads = heads
        self.head_dim = head_dim
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def allocate(self, rows: int, capacity: int, dtype: torch.dtype) -> None:
        shape = (rows, self.heads, capacity, self.head_dim)
        self.key_buffer = torch.zeros(shape, dtype=dtype)
        self.value_buffer = torch.zeros(shape, dtype=dtype)
        self.lazy_initialization(self.key_buffer, self.value_buffer)

    def grow(self, capacity: int) -> None:
        assert self.key_buffer is not None and self.value_buffer is not None
        old = self.key_buffer.shape[2]
        rows, heads, _, head_dim = self.key_buffer.shape
        for name in ("key_buffer", "value_buffer"):
            bigger = self.key_buffer.new_zeros((rows, heads, capacity, head_dim))
            bigger[:, :, :old] = getattr(self, name)
            setattr(self, name, bigger)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.key_buffer is not None and self.value_buffer is not None
        owner = self.owner
        first, rows = owner.step_first_row, key_states.shape[0]
        # one index_copy_ of whole head_dim vectors: advanced-index assignment on
        # dims 0 and 2 took 1.4 ms a call here, 14% of a batch-16 decode step
        flat = owner.flat_index(self.heads)
        self.key_buffer.view(-1, self.head_dim).index_copy_(0, flat, key_states.reshape(-1, self.head_dim))
        self.value_buffer.view(-1, self.head_dim).index_copy_(0, flat, value_states.reshape(-1, self.head_dim))
        if owner.step_tokens is not None:  # a mixed step: attention reads the buffers row by row
            return key_states, value_states
        self.keys = self.key_buffer[first : first + rows, :, : owner.step_kv_length]
        self.values = self.value_buffer[first : first + rows, :, : owner.step_kv_length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.owner.step_kv_length - self.owner.step_chunk

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.step_kv_length, 0


class SlotKVCache(Cache):
    """One buffer set for every admitted request; a forward runs over a contiguous range of slots.

    The batcher keeps decoding rows in slots ``0..d-1`` and rows still reading their
    prompt right after them, so a decode step and a prefill chunk each see a plain
    slice (no gather of history) and a prompt that is done joins the decoding rows
    without being copied. Only the batcher's worker thread touches it.
    """

    def __init__(self, layer_shapes: list[tuple[int, int]], dtype: torch.dtype, max_rows: int, max_length: int) -> None:
        """``layer_shapes``: each layer's ``(kv_heads, head_dim)``, as the model's own cache holds them."""
        self.dtype = dtype
        self.max_rows = max_rows
        self.max_length = max_length
        self.capacity = 0
        self.step_first_row = 0
        self.step_rows = torch.arange(max_rows)
        self.step_columns = torch.zeros((max_rows, 1), dtype=torch.long)
        self.step_chunk = 1
        self.step_kv_length = 1
        self.step_tokens: tuple[torch.Tensor, torch.Tensor] | None = None  # (slots, columns) of a mixed step
        self._flat_indexes: dict[int, torch.Tensor] = {}
        super().__init__(layers=[SlotLayer(self, heads, dim) for heads, dim in layer_shapes])

    @property
    def allocated(self) -> bool:
        return self.capacity > 0

    @property
    def nbytes(self) -> int:
        return sum(
            buffer.nbytes
            for layer in self.layers
            for buffer in (layer.key_buffer, layer.value_buffer)
            if buffer is not None
        )

    def ensure_capacity(self, needed: int) -> None:
        """Make room for ``needed`` columns, allocating on first use."""
        if needed <= self.capacity:
            return
        if needed > self.max_length + 1:  # +1: the padding's scratch column
            raise ValueError(f"sequence of {needed} tokens exceeds the cache limit {self.max_length}")
        # doubling keeps token-by-token growth cheap; the cap keeps one long prompt from doubling gigabytes
        capacity = min(self.max_length + 1, max(needed, min(self.capacity * 2, needed + 1024), CAPACITY_STEP))
        capacity = min(self.max_length + 1, -(-capacity // CAPACITY_STEP) * CAPACITY_STEP)
        if self.allocated:
            for layer in self.layers:
                layer.grow(capacity)
        else:
            for layer in self.layers:
                layer.allocate(self.max_rows, capacity, self.dtype)
        self.capacity = capacity

    def place(self, slot: int, row: RowKV) -> None:
        """Copy one row's keys/values (``[heads, length, dim]`` per layer) into ``slot``'s first columns."""
        length = row[0][0].shape[1]
        self.ensure_capacity(length + 1)
        for layer, (keys, values) in zip(self.layers, row, strict=True):
            layer.key_buffer[slot, :, :length] = keys
            layer.value_buffer[slot, :, :length] = values

    def row(self, slot: int, length: int) -> RowKV:
        """Views of ``slot``'s first ``length`` columns (valid until the next forward or move)."""
        return [(layer.key_buffer[slot, :, :length], layer.value_buffer[slot, :, :length]) for layer in self.layers]

    def move(self, source: int, target: int, length: int) -> None:
        """Move a row to another slot (used to keep rows packed at the front)."""
        for layer in self.layers:
            layer.key_buffer[target, :, :length] = layer.key_buffer[source, :, :length]
            layer.value_buffer[target, :, :length] = layer.value_buffer[source, :, :length]

    def swap(self, a: int, b: int, length: int) -> None:
        """Exchange two rows' first ``length`` columns."""
        for layer in self.layers:
            for buffer in (layer.key_buffer, layer.value_buffer):
                saved = buffer[a, :, :length].clone()
                buffer[a, :, :length] = buffer[b, :, :length]
                buffer[b, :, :length] = saved

    def prepare_chunk(self, starts: list[int], counts: list[int], chunk: int, first_row: int = 0) -> None:
        """Before a forward of ``chunk`` columns over slots ``first_row..``: slot ``first_row + i``
        writes ``counts[i]`` tokens from column ``starts[i]``.

        The row's tokens are the chunk's last ``counts[i]`` columns; the padding before
        them writes to the scratch column (the last one), past every row's end.
        """
        ends = [start + count for start, count in zip(starts, counts, strict=True)]
        longest = max(ends)
        self.ensure_capacity(longest + (1 if chunk > 1 else 0))
        scratch = self.capacity - 1
        offsets = torch.arange(chunk).unsqueeze(0)
        pads = torch.tensor([chunk - count for count in counts]).unsqueeze(1)
        columns = torch.tensor(starts).unsqueeze(1) + offsets - pads
        self.step_columns = columns.masked_fill_(offsets < pads, scratch)
        self.step_first_row = first_row
        self.step_rows = torch.arange(first_row, first_row + len(starts))
        self.step_chunk = chunk
        self._flat_indexes = {}
        self.step_kv_length = longest
        self.step_tokens = None

    def prepare_tokens(self, slots: list[int], columns: list[int]) -> None:
        """Before a mixed forward of one flat sequence: token ``t`` goes to slot ``slots[t]``, column ``columns[t]``."""
        self.ensure_capacity(max(columns) + 1)
        self.step_tokens = (torch.tensor(slots), torch.tensor(columns))
        self.step_first_row = 0
        self.step_chunk = len(slots)
        self.step_kv_length = max(columns) + 1
        self._flat_indexes = {}

    def flat_index(self, heads: int) -> torch.Tensor:
        """Where this step's ``[rows, heads, chunk]`` vectors go in a buffer viewed as ``[-1, head_dim]``."""
        index = self._flat_indexes.get(heads)
        if index is None and self.step_tokens is not None:  # keys arrive as [1, heads, tokens, dim]
            slots, columns = self.step_tokens
            row_heads = slots.view(1, -1) * heads + torch.arange(heads).view(-1, 1)
            index = (row_heads * self.capacity + columns.view(1, -1)).reshape(-1)
            self._flat_indexes[heads] = index
        elif index is None:
            row_heads = self.step_rows.view(-1, 1, 1) * heads + torch.arange(heads).view(1, -1, 1)
            index = (row_heads * self.capacity + self.step_columns.unsqueeze(1)).reshape(-1)
            self._flat_indexes[heads] = index
        return index

    def release(self) -> None:
        """Free the buffers (after a fault, or when the rows have been idle)."""
        for layer in self.layers:
            layer.key_buffer = layer.value_buffer = None
            layer.keys = layer.values = None
            layer.is_initialized = False
        self.capacity = 0
