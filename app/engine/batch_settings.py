"""The continuous batcher's tuning knobs, each with the measurement or trade-off behind it.

Shared by the engine's parts (``batcher``, ``batch_rows``, ``batch_worker``) and
by the benchmarks that picked them, so each number lives in one place.
"""

# Tokens per prefill chunk while replies stream. Separate chunk forwards (GPT-2 and other
# non-Llama models): the longest pause a new prompt can put between two tokens of someone
# else's reply (picked with bench/multiturn.py). Mixed steps (Llama family): only a cap,
# the count comes from PREFILL_SHARE and the measured step times.
PREFILL_CHUNK = 64
# Mixed steps: the part of a step's time a prompt being read may take while replies
# stream. 0.5: streams at most ~2x slower, the prompt ~2x its solo time (r = s / (s - 1)).
DEFAULT_PREFILL_SHARE = 0.5
# Mixed steps: the most prompt tokens one step may carry while replies stream (a cap, the
# time budget above decides; a setting of 0 for the chunk picks this or PREFILL_CHUNK).
MIXED_PREFILL_CAP = 512
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
