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
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from app.engine import Engine, GenerationResult, GenerationStream, LoadedModel, PromptFormat, SamplingParams
from app.engine.loading import DEFAULT_MODEL_NAME, resolve_model_source

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("CHAT_TEST_CACHE_DIR") or ROOT / "data" / "model-cache")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
TINY_CONTEXT = 512
# an upper bound for anything a test awaits; a hang fails the test instead of the run
WAIT = 120.0

DIALOG_TEXT = """\
hello there, how are you today? i am fine, thank you, and you?
what is your name? my name is bot. nice to meet you! the weather is nice today.
do you like music? yes, i like music a lot. what about you? i like books and films.
good morning. good night. see you later. bye for now, have a nice day!
can you tell me a story? once upon a time there was a little robot who wanted to sing.
"""


# ---------------------------------------------------------------- building tiny models


def smollm2_folder() -> Path:
    """The converted SmolLM2 folder in the cache (converting the GGUF once if it is missing)."""
    _, folder = resolve_model_source("smollm2", CACHE_DIR)
    assert Path(folder) == CACHE_DIR / DEFAULT_MODEL_NAME
    return Path(folder)


def build_tiny_llama(target: Path, *, max_positions: int = TINY_CONTEXT, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 64) using SmolLM2's tokenizer files and chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    source = smollm2_folder()
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=0.2,  # peaked logits: greedy argmax has clear winners
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(target)
    return target


def build_tiny_gpt2(target: Path, *, seed: int = 0) -> Path:
    """A random 2-layer GPT-2 with a ~400-token byte-level BPE trained here and no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(DIALOG_TEXT.splitlines(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    assert not getattr(tokenizer, "chat_template", None)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=256,
        bos_token_id=eos, eos_token_id=eos, initializer_range=0.2,
    )
    target.mkdir(parents=True, exist_ok=True)
    GPT2LMHeadModel(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


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
