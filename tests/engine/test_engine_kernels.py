"""``CHAT_KERNELS``: the opt-in bf16 linears load and serve, a reply does not depend on its batch, and a
value that cannot run is refused at start with a sentence; the default stays the exact fp32 path.

The fp32 path itself (bitwise equal to ``generate``, alone or batched) is what
``test_engine_batching.py`` and ``test_engine_mixed.py`` check with ``tiny_llama_packed``.
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from torch import nn

import app.config
import app.engine.fast_linear
from app.config import Settings
from app.engine.cpu_features import has_native_bf16
from app.engine.engine_process import load_for_engine
from app.engine.fast_linear import (
    KernelsUnavailable,
    PackedBf16Linear,
    PackedLinear,
    check_kernels,
    pack_linear_layers,
)
from app.engine.process_engine import engine_process_config
from app.engine.process_wire import EngineProcessConfig
from tests.engine_support import chat_prompt, generate, greedy, running_engine, wait_until, within
from tests.models import CACHE_DIR

needs_native_bf16 = pytest.mark.skipif(not has_native_bf16(), reason="this CPU has no AVX512_BF16 or AMX")
WORDS = ["alpha", "river", "lamp", "seven", "quiet", "storm", "bread", "violet", "north", "copper"]


def prompts_for(loaded, count: int) -> list[list[int]]:
    """``count`` first prompts of different lengths."""
    return [chat_prompt(loaded, " ".join(WORDS[i % 10 :] + WORDS[: i % 7]) * (1 + i % 3)) for i in range(count)]


# ---------------------------------------------------------------- the setting


def test_the_default_is_the_exact_fp32_path(tiny_llama):
    settings = Settings.from_env({})
    assert settings.kernels == "fp32"
    assert engine_process_config(settings).kernels == "fp32"
    assert EngineProcessConfig("m", CACHE_DIR).kernels == "fp32"
    model = torch.nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    assert pack_linear_layers(model) == 2
    assert {type(layer) for layer in model} == {PackedLinear}


@pytest.mark.parametrize(("value", "sentence"), [
    ("fp16", "CHAT_KERNELS must be 'fp32' or 'bf16', not 'fp16'"),
    ("int8", "CHAT_KERNELS must be 'fp32' or 'bf16', not 'int8'"),
    ("yes", "CHAT_KERNELS must be 'fp32' or 'bf16', not 'yes'"),
])
def test_a_bad_value_is_refused_with_a_sentence(value, sentence):
    with pytest.raises(SystemExit) as refused:
        Settings.from_env({"CHAT_KERNELS": value})
    assert str(refused.value) == sentence


def test_case_and_blanks_do_not_matter():
    assert Settings.from_env({"CHAT_KERNELS": "  FP32 "}).kernels == "fp32"
    assert Settings.from_env({"CHAT_KERNELS": ""}).kernels == "fp32"


def test_bf16_is_refused_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(app.config, "has_native_bf16", lambda: False)
    monkeypatch.setattr(app.engine.fast_linear, "has_native_bf16", lambda: False)
    refusal = r"CHAT_KERNELS=bf16 needs a CPU with AVX512_BF16 or AMX .*use CHAT_KERNELS=fp32"
    with pytest.raises(SystemExit, match=refusal):
        Settings.from_env({"CHAT_KERNELS": "bf16"})
    with pytest.raises(KernelsUnavailable, match="bf16 kernels need a CPU with AVX512_BF16 or AMX"):
        pack_linear_layers(torch.nn.Sequential(nn.Linear(8, 4)), "bf16")


def test_bf16_without_the_packed_kernels_is_refused():
    with pytest.raises(SystemExit, match="it needs CHAT_FAST_KERNELS on"):
        Settings.from_env({"CHAT_KERNELS": "bf16", "CHAT_FAST_KERNELS": "0"})


def test_an_unknown_kernel_name_is_refused_by_the_packer_too():
    with pytest.raises(KernelsUnavailable, match="kernels must be one of fp32, bf16, not 'fp16'"):
        check_kernels("fp16")


# ---------------------------------------------------------------- bf16 kernels


@needs_native_bf16
def test_the_bf16_setting_loads_and_serves(tiny_llama_dir, tiny_llama):
    settings = Settings.from_env({"CHAT_KERNELS": "bf16", "CHAT_MODEL": str(tiny_llama_dir)})
    config = engine_process_config(settings)
    assert config.kernels == "bf16"
    loaded = load_for_engine(config)  # what the generation process does on start
    linears = [m for m in tiny_llama.model.modules() if type(m) is nn.Linear]
    lossy = [m for m in loaded.model.modules() if isinstance(m, PackedBf16Linear)]
    assert len(lossy) == len(linears) > 0
    assert not any(type(m) is nn.Linear for m in loaded.model.modules())
    # really bf16 (not fp32 under another name), yet close: the norms and attention stay fp32
    prompt = torch.tensor([chat_prompt(tiny_llama, "Name three colours.")])
    with torch.inference_mode():
        exact, rounded = tiny_llama.model(prompt).logits, loaded.model(prompt).logits
    assert rounded.dtype == torch.float32
    assert not torch.equal(exact, rounded)
    assert (exact - rounded).abs().max() < 0.05 * exact.abs().max()

    async def serve() -> list[int]:
        async with running_engine(loaded, max_batch_size=2) as engine:
            return (await generate(engine, prompt[0].tolist(), greedy(12, min_new_tokens=12))).token_ids

    assert len(asyncio.run(serve())) == 12


@needs_native_bf16
def test_a_row_of_a_bf16_linear_is_the_same_in_any_batch():
    """SmolLM2's down projection (1536 inputs): oneDNN sums a lone row in another order, hence the pad."""
    torch.manual_seed(0)
    layer = PackedBf16Linear(nn.Linear(1536, 576, bias=False))
    rows = torch.randn(40, 1536)
    with torch.inference_mode():
        together = layer(rows)
        for count in (1, 2, 3, 15, 16, 17, 31, 32, 33, 40):
            assert torch.equal(layer(rows[:count]), together[:count]), f"{count} rows"
        alone = torch.cat([layer(rows[i : i + 1]) for i in range(40)])
    assert torch.equal(alone, together)


@needs_native_bf16
async def test_bf16_replies_in_a_batch_equal_the_same_replies_alone(tiny_llama_bf16):
    """18 rows at once (past the 16-row packing hint), then 2 joining while they decode."""
    prompts = prompts_for(tiny_llama_bf16, 20)
    params = greedy(8, min_new_tokens=8)
    async with running_engine(tiny_llama_bf16, max_batch_size=20) as engine:
        alone = [(await generate(engine, prompt, params)).token_ids for prompt in prompts]
        first = [await engine.submit(prompt, params) for prompt in prompts[:18]]
        await wait_until(lambda: all(stream.started for stream in first), what="the first rows to start")
        late = [await engine.submit(prompt, params) for prompt in prompts[18:]]
        batched = await asyncio.gather(*(within(stream.final()) for stream in (*first, *late)))
    assert [result.token_ids for result in batched] == alone
