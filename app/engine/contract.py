"""What every generation engine promises its callers: ``ChatEngine`` and the types it speaks.

``ChatService`` and the web server talk to "an engine" and must not care whether
the tokens come from the continuous batcher in this process (``app.engine.batcher``)
or from an inference server (``app.engine.remote``). So the contract, its errors and
its outputs live here, in a module that imports neither: the remote engine (and the
prompt builder, which raises ``PromptTooLong``) no longer pull in the batcher, and
with it torch, just to name an error.

``ChatEngine`` is an abstract class rather than a ``typing.Protocol``: both engines
are ours and say so in their class line, a missing method fails when the engine is
built (not at the first ``/healthz`` or the first reply), and no caller needs a
structural fake (the tests run the real engines). It is the single surface the web
and service layers see; anything else an engine has is its own business.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.engine.params import SamplingParams
from app.engine.streams import GenerationResult, GenerationStream

__all__ = [
    "ChatEngine",
    "EngineBusy",
    "EngineHealth",
    "EngineStats",
    "EngineStopped",
    "GenerationResult",
    "GenerationStream",
    "InvalidPrompt",
    "PrefixCacheStats",
    "PromptTooLong",
    "checked_prompt",
]


# ------------------------------------------------------------ refusals


class EngineBusy(RuntimeError):
    """The waiting queue is full; the caller should say "busy, try again"."""


class EngineStopped(RuntimeError):
    """The engine is shutting down and takes no new requests."""


class PromptTooLong(ValueError):
    """Prompt plus requested new tokens do not fit the model's context."""


class InvalidPrompt(ValueError):
    """The prompt ids are empty or not ids of this model's vocabulary."""


def checked_prompt(
    prompt_ids: Sequence[int], params: SamplingParams, vocab_size: int, context_length: int
) -> list[int]:
    """The prompt as a list, refused before it can reach a model it does not fit.

    Every engine applies the same rule so that a tester gets the same sentence
    whether the reply would come from this process or from an inference server.
    """
    prompt = list(prompt_ids)
    if not prompt:
        raise InvalidPrompt("the prompt is empty")
    if any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size for t in prompt):
        raise InvalidPrompt(f"prompt holds ids outside this model's vocabulary (0..{vocab_size - 1})")
    if len(prompt) + params.max_new_tokens > context_length:
        raise PromptTooLong(
            f"{len(prompt)} prompt tokens + {params.max_new_tokens} new tokens exceed the "
            f"model's context of {context_length} tokens"
        )
    return prompt


# ------------------------------------------------------------ what an engine reports


@dataclass(frozen=True)
class PrefixCacheStats:
    """The prefix cache's counters (all zero for an engine without one)."""

    entries: int
    bytes_used: int
    budget_bytes: int
    lookups: int
    hits: int
    reused_tokens: int
    evictions: int


NO_PREFIX_CACHE = PrefixCacheStats(0, 0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class EngineStats:
    running: int  # admitted: prefilling or decoding
    prefilling: int
    waiting: int
    max_batch_size: int
    max_queue: int
    steps: int
    generated_tokens: int
    alive: bool
    accepting: bool
    prefix_cache: PrefixCacheStats


@dataclass(frozen=True)
class EngineHealth:
    """An engine's part of ``/healthz``: the JSON it shows there, and whether it can serve a reply.

    Each engine builds its own: what is worth showing about a worker thread and
    about an inference server differs, and the server should not have to know which
    one it runs to say so.
    """

    healthy: bool
    report: dict[str, Any]


def embedded_engine_report(stats: EngineStats, ready: bool) -> dict[str, Any]:
    """What ``/healthz`` shows of an engine that runs the model on this machine (in a thread or a child)."""
    cache = stats.prefix_cache
    return {
        "alive": stats.alive,
        "ready": ready,
        "running": stats.running,
        "waiting": stats.waiting,
        "max_batch_size": stats.max_batch_size,
        "max_queue": stats.max_queue,
        "generated_tokens": stats.generated_tokens,
        "prefilling": stats.prefilling,
        "prefix_cache": {
            "entries": cache.entries,
            "mb_used": round(cache.bytes_used / 2**20, 1),
            "mb_budget": round(cache.budget_bytes / 2**20, 1),
            "hits": cache.hits,
            "lookups": cache.lookups,
            "reused_tokens": cache.reused_tokens,
        },
    }


# ------------------------------------------------------------ the contract


class ChatEngine(ABC):
    """A source of generated replies: started once, fed token ids, stopped at shutdown."""

    @abstractmethod
    def start(self) -> None:
        """Begin serving (start the worker, open the connection pool); calling it twice is harmless."""

    @abstractmethod
    async def wait_ready(self, max_seconds: float | None = None) -> bool:
        """Wait until a reply could start at once (True), or ``max_seconds`` pass (False)."""

    @abstractmethod
    async def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> GenerationStream:
        """Queue a generation and return its stream.

        Raises at once, before anything is shown, when it can never run
        (``InvalidPrompt``, ``PromptTooLong``, ``InvalidParams``), when the queue is
        full (``EngineBusy``) or when the engine is not running (``EngineStopped``).
        """

    @abstractmethod
    def stats(self) -> EngineStats:
        """Counters for the page's "N replies running" and for the benchmarks."""

    @abstractmethod
    async def health_report(self) -> EngineHealth:
        """This engine's part of ``/healthz``, found out now."""

    @abstractmethod
    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop taking requests; let running ones finish for ``grace_seconds``, cancel the rest."""
