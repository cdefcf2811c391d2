"""Mixed steps (Llama family): decode rows and prompt chunks in one forward stay exact.

Every reply must equal transformers' own greedy ``generate`` for its prompt alone,
whoever shares its steps: many rows at once (more than oneDNN's 16-row packing
hint, so the flat batch crosses its blocking), prompts read in chunks of any size
while others stream, with and without a prefix-cache hit.
"""

from __future__ import annotations

import asyncio

import pytest

from app.engine.prefill_pacer import PrefillPacer
from tests.engine_support import chat_prompt, generate, greedy, reference_generate, running_engine, wait_until, within

WORDS = ["alpha", "river", "lamp", "seven", "quiet", "storm", "bread", "violet", "north", "copper"]


def prompts_for(loaded, count: int) -> list[list[int]]:
    """``count`` first prompts of different lengths (the longest about 60 tokens)."""
    return [chat_prompt(loaded, " ".join(WORDS[i % 10 :] + WORDS[: i % 7]) * (1 + i % 3)) for i in range(count)]


@pytest.fixture(params=["stock", "packed"])
def llama(request):
    return request.getfixturevalue("tiny_llama" if request.param == "stock" else "tiny_llama_packed")


async def test_many_rows_at_once_and_joining_late_equal_generate(llama):
    """18 rows in one step (past the 16-row packing hint), then 2 more joining while they decode."""
    prompts = prompts_for(llama, 20)
    params = greedy(6, min_new_tokens=6)
    async with running_engine(llama, max_batch_size=20) as engine:
        assert engine._mixed  # white box: this model runs the mixed path
        first = [await engine.submit(prompt, params) for prompt in prompts[:18]]
        await wait_until(lambda: all(stream.started for stream in first), what="the first rows to start")
        late = [await engine.submit(prompt, params) for prompt in prompts[18:]]
        results = await asyncio.gather(*(within(stream.final()) for stream in (*first, *late)))
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == reference_generate(llama, prompt, 6, min_new_tokens=6)


@pytest.mark.parametrize("chunk", [3, 40])
async def test_a_prompt_read_in_chunks_of_any_size_while_others_stream(tiny_llama, chunk):
    streams_prompts = prompts_for(tiny_llama, 3)
    long_prompt = chat_prompt(tiny_llama, "a pasted page of notes, " * 25)
    async with running_engine(tiny_llama, max_batch_size=4, prefill_chunk=chunk) as engine:
        streams = [await engine.submit(p, greedy(24, min_new_tokens=24)) for p in streams_prompts]
        await wait_until(lambda: all(s.started for s in streams), what="the streams to start")
        long_result = await generate(engine, long_prompt, greedy(6, min_new_tokens=6))
        again = await generate(engine, [*long_prompt, long_result.token_ids[0]], greedy(6, min_new_tokens=6))
        streamed = [await within(s.final()) for s in streams]
    assert long_result.token_ids == reference_generate(tiny_llama, long_prompt, 6, min_new_tokens=6)
    assert again.cached_tokens >= len(long_prompt)  # the second read is a prefix-cache hit
    assert again.token_ids == long_result.token_ids[1:] + again.token_ids[5:]  # the same continuation
    for prompt, result in zip(streams_prompts, streamed, strict=True):
        assert result.token_ids == reference_generate(tiny_llama, prompt, 24, min_new_tokens=24)


async def test_the_shared_system_turn_is_cached_before_the_first_request(tiny_llama):
    prompt = chat_prompt(tiny_llama, "Name a colour.")
    async with running_engine(tiny_llama, max_batch_size=2) as engine:
        assert engine.stats().prefix_cache.entries == 1  # seeded at warm-up
        result = await generate(engine, prompt, greedy(8))
    assert result.cached_tokens >= 16
    assert result.token_ids == reference_generate(tiny_llama, prompt, 8)


def test_the_prompt_share_turns_step_times_into_token_counts():
    pacer = PrefillPacer(0.5, 16, 512, attention_depth=1000.0)
    assert pacer.tokens(4, 0) == 512  # nothing measured yet: the cap
    pacer.decode_seconds = {4: 0.08, 8: 0.1}
    pacer.token_seconds = 0.002
    assert pacer.tokens(4, 0) == 40  # as long again as a decode step: 0.08 s of prompt tokens
    assert pacer.tokens(8, 1000) == 25  # deeper tokens cost twice as much
    assert PrefillPacer(0.75, 16, 512, 1000.0).share == 0.75
    pacer.observe_mixed(4, 40, 0, 0.24)  # the step took 0.16 s more than decode: tokens cost more now
    assert pacer.token_seconds > 0.002 and pacer.tokens(4, 0) < 40
    pacer.observe_decode(4, 0.16)  # the machine got busier: every batch size slows alike
    assert pacer.decode_seconds[8] > 0.1
    with pytest.raises(ValueError, match="between 0 and 1"):
        PrefillPacer(1.0, 16, 512, 1000.0)
