"""The generation engine: model loading, prompt building, the engine contract and its two engines.

It knows nothing of Gradio or the database; the chat service composes it with storage.
Callers program against ``ChatEngine`` (``contract``); ``Engine`` (the in-process
continuous batcher) and ``remote.RemoteEngine`` (an inference server) implement it.

``Engine`` is imported on first use rather than here: it needs torch, and a server
that only talks to an inference server (``app.engine.remote``) should not load
torch just because it imported this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.engine.contract import (
    ChatEngine,
    EngineBusy,
    EngineHealth,
    EngineStats,
    EngineStopped,
    GenerationResult,
    GenerationStream,
    InvalidPrompt,
    PromptTooLong,
)
from app.engine.loading import LoadedModel, ModelLoadError, load_model
from app.engine.params import InvalidParams, SamplingParams
from app.engine.prompting import PromptFormat, PromptWindow, Turn

if TYPE_CHECKING:
    from app.engine.batcher import Engine

__all__ = [
    "ChatEngine",
    "Engine",
    "EngineBusy",
    "EngineHealth",
    "EngineStats",
    "EngineStopped",
    "GenerationResult",
    "GenerationStream",
    "InvalidParams",
    "InvalidPrompt",
    "LoadedModel",
    "ModelLoadError",
    "PromptFormat",
    "PromptTooLong",
    "PromptWindow",
    "SamplingParams",
    "Turn",
    "load_model",
]


def __getattr__(name: str) -> Any:
    """``from app.engine import Engine`` imports the batcher (and torch) only then (PEP 562)."""
    if name == "Engine":
        from app.engine.batcher import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
