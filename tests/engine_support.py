"""Helpers for the engine tests (``tests/test_engine_*.py``); the fixtures are in ``engine_fixtures``.

Models (built by the functions here, provided by ``tests/engine_fixtures.py``):
- ``tiny_llama``: a random 2-layer Llama with SmolLM2's tokenizer and chat template,
  built here, saved to a temporary folder and loaded through ``load_model``;
- ``tiny_gpt2``: a random 2-layer GPT-2 with its own small byte-level BPE and no chat
  template (the DialoGPT / Gradio-tutorial family);
- ``smollm2``: the real default model from the model cache (converted from GGUF once
  per machine; loaded once per session).

Nothing here downloads anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import torch

from app.engine import Engine, GenerationResult, GenerationStream, LoadedModel, PromptFormat, SamplingParams

# an upper bound for anything a test awaits; a hang fails the test instead of the run
WAIT = 120.0


# ---------------------------------------------------------------- running the engine


def greedy(max_new_tokens: int, **overrides: Any) -> SamplingParams:
    """Deterministic decoding, comparable with ``generate(do_sample=False)``."""
    return SamplingParams(**{"temperature": 0.0, "repetition_penalty": 1.0, "max_new_tokens": max_new_tokens,
                             **overrides})


def prompt_format(loaded: LoadedModel) -> PromptFormat:
    return PromptFormat(loaded.tokenizer, loaded.eos_token_ids, loaded.context_length)


def chat_prompt(loaded: LoadedModel, text: str) -> list[int]:
    """The prompt for a first user message, as the chat service builds it."""
    return prompt_format(loaded).user_turn([], text)


@contextlib.asynccontextmanager
async def running_engine(loaded: LoadedModel, **kwargs: Any) -> AsyncIterator[Engine]:
    """A started, warmed-up engine that is always stopped afterwards."""
    engine = Engine(loaded, **kwargs)
    engine.start()
    try:
        assert await engine.wait_ready(WAIT), "engine did not warm up"
        yield engine
    finally:
        await engine.stop()


async def within(awaitable: Any, seconds: float = WAIT) -> Any:
    return await asyncio.wait_for(awaitable, seconds)


async def collect(stream: GenerationStream) -> tuple[list[str], GenerationResult]:
    """All deltas of a stream and its result."""

    async def drain() -> list[str]:
        return [delta async for delta in stream]

    deltas = await within(drain())
    assert stream.result is not None
    return deltas, stream.result


async def generate(engine: Engine, prompt: Sequence[int], params: SamplingParams) -> GenerationResult:
    return await within((await engine.submit(prompt, params)).final())


async def wait_until(predicate: Callable[[], bool], seconds: float = WAIT, what: str = "condition") -> None:
    """Poll ``predicate`` on the event loop (the engine reports through thread-safe state)."""
    for _ in range(int(seconds / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def reference_generate(loaded: LoadedModel, prompt: Sequence[int], max_new_tokens: int, **kwargs: Any) -> list[int]:
    """transformers' own greedy ``generate`` for one prompt: the tokens our engine must match."""
    pad = min(loaded.eos_token_ids)
    with torch.inference_mode():
        output = loaded.model.generate(
            torch.tensor([list(prompt)]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            **kwargs,
        )
    return output[0, len(prompt):].tolist()


def decode(loaded: LoadedModel, ids: Sequence[int]) -> str:
    return loaded.tokenizer.decode(list(ids), skip_special_tokens=True)


# ---------------------------------------------------------------- hooks on test-built models


@contextlib.contextmanager
def forward_pre_hook(model: Any, hook: Callable[..., Any]) -> Iterator[None]:
    """Register ``hook(module, args, kwargs)`` on the model's forward; always removed afterwards."""
    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


class Gate:
    """Parks the worker thread inside the model's next forward call while closed.

    Lets a test put the engine in an exact state (a request mid-prefill, a decode
    step in flight) without depending on how fast the machine is.
    """

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self._parked = threading.Event()

    def hook(self, _module: Any, _args: Any, _kwargs: Any) -> None:
        if not self._open.is_set():
            self._parked.set()
            if not self._open.wait(WAIT):
                raise RuntimeError("test gate was never opened")

    def close(self) -> None:
        self._parked.clear()
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def parked(self) -> None:
        """Wait until the worker is blocked in a forward call."""
        assert await asyncio.to_thread(self._parked.wait, WAIT), "the worker never reached the model"


@contextlib.contextmanager
def gate_on(model: Any) -> Iterator[Gate]:
    gate = Gate()
    with forward_pre_hook(model, gate.hook):
        try:
            yield gate
        finally:
            gate.open()
