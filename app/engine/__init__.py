"""The generation engine: model loading, prompt building and the continuous batcher.

It knows nothing of Gradio or the database; the chat service composes it with storage.
"""

from app.engine.batcher import (
    Engine,
    EngineBusy,
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

__all__ = [
    "Engine",
    "EngineBusy",
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
