"""What the web process and its generation process say to each other, defined once for both sides.

A message is a tuple whose first item is one of the tags below and whose other items
are ints, strings, floats and lists of them (pickled by ``multiprocessing``'s
``Connection``): never tensors or engine objects, so the web process's work per
message is unpickling a short tuple. Output is coalesced per engine step: one
``OUTPUT`` message carries every reply's new text of that step.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

from app.engine.streams import GenerationResult

# web process -> generation process
SUBMIT = "submit"  # (SUBMIT, request_id, prompt_ids, params_dict)
CANCEL = "cancel"  # (CANCEL, request_id)
STOP = "stop"  # (STOP, grace_seconds): finish or cancel every reply, then exit
# generation process -> web process
LOADED = "loaded"  # (LOADED, vocab_size, context_length): submits are taken from now on
READY = "ready"  # (READY,): warmed up
FAILED = "failed"  # (FAILED, sentence): the model cannot be loaded; the process exits
OUTPUT = "output"  # (OUTPUT, [(request_id, new_token_ids, text_delta)], [(request_id, result_fields)])
STATS = "stats"  # (STATS, engine_stats_fields, last_seen_request_id, [(request_id, queue_position)])
STOPPED = "stopped"  # (STOPPED,): every reply ended after STOP; the process exits

# What a reply ends with when its process dies under it (stored with the reply, shown on the page).
PROCESS_DIED = "the generation process stopped unexpectedly"


@dataclass(frozen=True)
class EngineProcessConfig:
    """Everything the generation process needs: ``load_model``'s arguments and ``Engine``'s keyword arguments."""

    model: str
    cache_dir: Path
    threads: int = 0
    fast_kernels: bool = True
    kernels: str = "fp32"  # the packed linears' arithmetic: "fp32" (exact) or "bf16" (opt-in, lossy)
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


def result_fields(result: GenerationResult) -> tuple[Any, ...]:
    return astuple(result)


def result_from_fields(fields: tuple[Any, ...]) -> GenerationResult:
    return GenerationResult(*fields)
