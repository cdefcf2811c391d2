"""The continuous batcher's tuning knobs, each with the measurement or trade-off behind it.

Shared by the engine's parts (``batcher``, ``batch_rows``, ``batch_worker``) and
by the benchmarks that picked them, so each number lives in one place.
"""

# Tokens per prefill chunk while replies stream: the longest pause a new prompt can
# put between two tokens of someone else's reply (picked with bench/multiturn.py).
PREFILL_CHUNK = 64
# Tokens per prefill forward when nothing streams: only throughput matters then.
IDLE_PREFILL_TOKENS = 2048
# Fewest columns per row in a prefill chunk, so many short prompts share one forward.
MIN_CHUNK_COLUMNS = 16
DEFAULT_PREFIX_CACHE_MB = 2048
# Bounds and fallback for the measured depth at which attention doubles a chunk's cost.
MIN_ATTENTION_DEPTH, DEFAULT_ATTENTION_DEPTH, MAX_ATTENTION_DEPTH = 256, 2048, 65536
# KV slot buffers are allocated for this many tokens per row at warm-up and kept:
# growing them later means allocating and copying gigabytes in one go (0.5-2 s here,
# every stream frozen meanwhile). A longer chat grows them; they shrink back to this
# size when the batch empties, so one long chat does not pin memory for good.
# SmolLM2 at 16 rows: 16 x 4096 x 46 KB = 3 GB.
DEFAULT_KV_RESERVE_TOKENS = 4096
