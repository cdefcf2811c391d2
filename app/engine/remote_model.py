"""The tokenizer side of a model, without its weights, for a remote inference server.

When generation runs on an inference server the app still builds every prompt
from stored token ids, so it needs the tokenizer, the end-of-sequence ids and the
context length, but not 500 MB (or 14 GB) of weights in every app replica.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from app.engine.loading import (
    LoadedModel,
    ModelLoadError,
    context_length_of,
    eos_token_ids_of,
    resolve_model_source,
)

log = logging.getLogger(__name__)


def load_tokenizer_only(spec: str, cache_dir: Path) -> LoadedModel:
    """Like ``load_model`` but ``model`` is None: tokenizer, config and generation config only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    name, source = resolve_model_source(spec, cache_dir)
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"cannot load the tokenizer of {spec!r}: {str(error).splitlines()[0]} -- pass --model with the "
            "local Hugging Face folder of the model the inference server runs, or 'smollm2' for the default"
        ) from error
    try:
        generation: Any = GenerationConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        generation = None
    log.warning("tokenizer of %s loaded in %.1f s (the weights stay with the engine, not in this process)",
                name, time.perf_counter() - started)
    return LoadedModel(
        name=name,
        model=None,
        tokenizer=tokenizer,
        context_length=context_length_of(config),
        eos_token_ids=eos_token_ids_of(generation, config, tokenizer),
    )
