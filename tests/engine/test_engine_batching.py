"""Continuous batching is exact: a request's greedy tokens do not depend on who else is served.

Every request's tokens in a mixed batch (different prompt lengths, joining while
others run, leaving at different times) must equal its tokens when run alone, and
those must equal transformers' own ``generate(do_sample=False)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from app.engine import Engine, GenerationResult, LoadedModel, SamplingParams, load_model
from tests.engine_support import (
    chat_prompt,
    decode,
    gate_on,
    generate,
    greedy,
    prompt_format,
    reference_generate,
    running_engine,
    wait_until,
    within,
)
from tests.models import CACHE_DIR, TINY_CONTEXT, build_tiny_llama

TEXTS = [
    "Hi",
    "What is the capital of France, and why is it famous?",
    "ok?",
    "Tell me a long story about a dragon, a knight and a very old library full of maps. " * 3,
    "Name three colours.",
]


async def run_alone(engine: Engine, prompts: Sequence[list[int]], params: Sequence[SamplingParams]):
    return [await generate(engine, prompt, p) for prompt, p in zip(prompts, params, strict=True)]


async def run_mixed(
    engine: Engine, loaded: LoadedModel, prompts: Sequence[list[int]], params: Sequence[SamplingParams], *,
    late: int = 1,
) -> list[GenerationResult]:
    """The first request starts alone; the next ones queue while its prefill runs, so they
    join it with one left-padded prefill; the last ``late`` ones join once decoding is under way."""
    early = len(prompts) - late
    with gate_on(loaded.model) as gate:
        gate.close()
        first = await engine.submit(prompts[0], params[0])
        await gate.parked()  # the worker is inside the first prefill
        joiners = [await engine.submit(prompts[i], params[i]) for i in range(1, early)]
        assert [s.queue_position for s in joiners] == list(range(len(joiners)))
    await wait_until(lambda: all(s.started for s in joiners), what="the joiners to start")
    await asyncio.sleep(0.01)
    latecomers = [await engine.submit(prompts[i], params[i]) for i in range(early, len(prompts))]
    return [await within(stream.final()) for stream in (first, *joiners, *latecomers)]


def decode_steps_needed(results: Sequence[GenerationResult]) -> int:
    """Decode steps the requests would need one after another (the first token comes from prefill)."""
    return sum(r.completion_tokens - 1 for r in results)


@pytest.fixture(params=["stock", "packed"])
def tiny_variant(request) -> LoadedModel:
    return request.getfixturevalue("tiny_llama" if request.param == "stock" else "tiny_llama_packed")


async def test_greedy_tokens_in_a_mixed_batch_equal_tokens_alone(tiny_variant, request):
    prompts = [chat_prompt(tiny_variant, text) for text in TEXTS]
    assert len({len(p) for p in prompts}) == len(prompts)  # all lengths differ: left padding is exercised
    params = [greedy(24)] * len(prompts)
    async with running_engine(tiny_variant, max_batch_size=8) as engine:
        alone = await run_alone(engine, prompts, params)
        steps_before = engine.stats().steps
        mixed = await run_mixed(engine, tiny_variant, prompts, params, late=2)
        steps = engine.stats().steps - steps_before
    assert steps < decode_steps_needed(mixed)  # they really shared decode steps
    for prompt, one, batched in zip(prompts, alone, mixed, strict=True):
        assert batched.token_ids == one.token_ids
        assert batched.text == one.text == decode(tiny_variant, one.token_ids)
        assert one.finish_reason in ("eos", "length") and one.prompt_tokens == len(prompt)
        # generate() on the same weights (stock kernels: as the brief demands; packed: same kernels)
        assert one.token_ids == reference_generate(tiny_variant, prompt, 24), request.node.callspec.id


async def test_rows_leaving_at_different_times_do_not_disturb_the_others(tiny_llama):
    """Rows retire at different steps (one right at admission), so the last row keeps moving slots."""
    prompts = [chat_prompt(tiny_llama, text) for text in TEXTS]
    lengths = [30, 3, 30, 1, 12]
    params = [greedy(n, min_new_tokens=n) for n in lengths]
    async with running_engine(tiny_llama, max_batch_size=8) as engine:
        mixed = await run_mixed(engine, tiny_llama, prompts, params, late=0)
    for prompt, n, result in zip(prompts, lengths, mixed, strict=True):
        assert result.finish_reason == "length" and result.completion_tokens == n
        assert result.token_ids == reference_generate(tiny_llama, prompt, n, min_new_tokens=n)


async def test_more_requests_than_slots_queue_and_stay_exact(tiny_llama):
    prompts = [chat_prompt(tiny_llama, f"Request number {i}: " + "word " * (3 * i)) for i in range(6)]
    params = greedy(10, min_new_tokens=10)
    async with running_engine(tiny_llama, max_batch_size=2, max_queue=8) as engine:
        streams = [await engine.submit(p, params) for p in prompts]
        assert engine.stats().running + engine.stats().waiting <= 6
        results = [await within(s.final()) for s in streams]
        assert engine.stats().running == engine.stats().waiting == 0
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == reference_generate(tiny_llama, prompt, 10, min_new_tokens=10)


async def test_chunked_prefill_with_padding_is_exact(tiny_llama):
    """Prompts longer than the prefill chunk are prefilled in pieces, padded to each other."""
    prompts = [chat_prompt(tiny_llama, text) for text in (TEXTS[3], TEXTS[1], TEXTS[3] + " And then?", "x")]
    assert max(len(p) for p in prompts) > 3 * 16
    params = [greedy(12)] * len(prompts)
    async with running_engine(tiny_llama, max_batch_size=4, prefill_chunk=16) as engine:
        alone = await run_alone(engine, prompts, params)
        mixed = await run_mixed(engine, tiny_llama, prompts, params, late=1)
    for prompt, one, batched in zip(prompts, alone, mixed, strict=True):
        assert one.token_ids == batched.token_ids == reference_generate(tiny_llama, prompt, 12)


async def test_slots_grow_past_their_first_allocation_mid_batch(tiny_llama):
    """A row crossing 256 columns grows every slot while another row keeps decoding."""
    long_prompt = chat_prompt(tiny_llama, "grow " * 200)
    assert 200 < len(long_prompt) < 256
    prompts = [chat_prompt(tiny_llama, "short one"), long_prompt]
    params = [greedy(90, min_new_tokens=90)] * 2
    async with running_engine(tiny_llama, max_batch_size=2) as engine:
        mixed = await run_mixed(engine, tiny_llama, prompts, params, late=0)
    assert len(long_prompt) + 90 > 256
    for prompt, result in zip(prompts, mixed, strict=True):
        assert result.token_ids == reference_generate(tiny_llama, prompt, 90, min_new_tokens=90)


async def test_a_request_filling_the_context_exactly_runs_to_the_end(tiny_llama):
    new_tokens = 12
    base = chat_prompt(tiny_llama, "fill")
    prompt = base[:-5] + [tiny_llama.tokenizer.encode(" a", add_special_tokens=False)[0]] * (
        TINY_CONTEXT - new_tokens - len(base)
    ) + base[-5:]
    assert len(prompt) + new_tokens == TINY_CONTEXT
    params = greedy(new_tokens, min_new_tokens=new_tokens)
    async with running_engine(tiny_llama, max_batch_size=2) as engine:
        results = await run_mixed(engine, tiny_llama, [prompt, chat_prompt(tiny_llama, "hi")], [params] * 2, late=0)
    assert results[0].finish_reason == "length" and results[0].completion_tokens == new_tokens
    assert results[0].token_ids == reference_generate(tiny_llama, prompt, new_tokens, min_new_tokens=new_tokens)


@pytest.fixture(scope="module")
def tiny_llama_2k(tmp_path_factory) -> LoadedModel:
    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-2k") / "tiny-llama-2k", max_positions=2048)
    return load_model(str(folder), CACHE_DIR)


async def test_big_slots_are_freed_when_idle_and_rebuilt_exactly(tiny_llama_2k):
    """Past the reserved 1024 columns the slots shrink back once the batch empties; the next request grows them."""
    long_prompt = chat_prompt(tiny_llama_2k, "long " * 1030)
    short_prompt = chat_prompt(tiny_llama_2k, "and now a short one")
    async with running_engine(tiny_llama_2k, max_batch_size=2, kv_reserve_tokens=1024) as engine:
        assert engine._cache.capacity == 1024  # reserved at warm-up
        first = await generate(engine, long_prompt, greedy(8, min_new_tokens=8))
        assert engine._cache.capacity == 1024  # white box: grown for the long one, then shrunk back
        second = await generate(engine, short_prompt, greedy(8, min_new_tokens=8))
        again = await generate(engine, long_prompt, greedy(8, min_new_tokens=8))
    assert first.token_ids == again.token_ids == reference_generate(tiny_llama_2k, long_prompt, 8, min_new_tokens=8)
    assert second.token_ids == reference_generate(tiny_llama_2k, short_prompt, 8, min_new_tokens=8)


async def test_a_gpt2_model_without_template_batches_exactly(tiny_gpt2):
    fmt = prompt_format(tiny_gpt2)
    prompts = [fmt.user_turn([], text) for text in ("hello there", "what is your name? do you like music?", "bye")]
    params = [greedy(16)] * 3
    async with running_engine(tiny_gpt2, max_batch_size=4) as engine:
        alone = await run_alone(engine, prompts, params)
        mixed = await run_mixed(engine, tiny_gpt2, prompts, params, late=1)
    for prompt, one, batched in zip(prompts, alone, mixed, strict=True):
        assert one.token_ids == batched.token_ids == reference_generate(tiny_gpt2, prompt, 16)


@pytest.mark.slow
async def test_smollm2_batches_exactly(smollm2):
    prompts = [chat_prompt(smollm2, text) for text in (
        "What is 2+2?", "Name a fruit that is yellow.", "Say hello in French.",
        "Write one sentence about the sea and the wind.",
    )]
    params = [greedy(16)] * len(prompts)
    async with running_engine(smollm2, max_batch_size=4) as engine:
        alone = await run_alone(engine, prompts, params)
        mixed = await run_mixed(engine, smollm2, prompts, params, late=1)
    for prompt, one, batched in zip(prompts, alone, mixed, strict=True):
        assert batched.token_ids == one.token_ids == reference_generate(smollm2, prompt, 16)
        assert one.text.strip() and "\ufffd" not in one.text
