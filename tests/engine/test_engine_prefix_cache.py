"""The prefix cache and chunked prefill never change a reply, and they do what they are for.

A chat's next turn reuses the KV of its previous turn; a system prompt is shared
across chats; a windowed prompt (oldest exchanges dropped) misses and stays right;
a long prompt is prefilled in chunks with decode steps for the others in between.
Every reply must equal the same request run without the cache and equal
transformers' own ``generate``.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from app.engine import GenerationResult, LoadedModel, Turn
from app.engine.prefix_cache import MIN_TOKENS_TO_KEEP, PrefixCache
from tests.engine_support import (
    gate_on,
    generate,
    greedy,
    prompt_format,
    reference_generate,
    running_engine,
    wait_until,
    within,
)
from tests.models import TINY_CONTEXT

SYSTEM = "You are a careful assistant for a team of testers. Answer briefly and say when you are unsure. " * 2


class Chat:
    """Turns kept as token ids, the prompt their concatenation: what ChatService does."""

    def __init__(self, loaded: LoadedModel, system: str | None = None) -> None:
        self.form = prompt_format(loaded)
        self.turns: list[Turn] = []
        self.texts: list[tuple[str, str]] = []
        if system is not None:
            self.turns.append(Turn("system", self.form.system_turn(system)))
            self.texts.append(("system", system))
        self._pending: tuple[str, list[int]] | None = None

    def prompt(self, text: str, max_new_tokens: int) -> list[int]:
        new_turn = self.form.user_turn(self.texts, text)
        self._pending = (text, new_turn)
        return self.form.build_prompt(self.turns, new_turn, max_new_tokens).token_ids

    def record(self, result: GenerationResult) -> None:
        assert self._pending is not None
        text, new_turn = self._pending
        self.turns += [Turn("user", new_turn), Turn("assistant", self.form.assistant_turn(result.token_ids))]
        self.texts += [("user", text), ("assistant", result.text)]


@pytest.fixture(params=["llama", "llama-packed", "gpt2"])
def model(request) -> LoadedModel:
    name = {"llama": "tiny_llama", "llama-packed": "tiny_llama_packed", "gpt2": "tiny_gpt2"}[request.param]
    return request.getfixturevalue(name)


async def test_later_turns_reuse_the_chat_so_far_and_reply_exactly(model):
    questions = ["Hello, who are you?", "Tell me more about that, please.", "And one more thing?"]
    with_cache, without = Chat(model), Chat(model)
    async with running_engine(model, max_batch_size=2) as cached, running_engine(
        model, max_batch_size=2, prefix_cache_mb=0
    ) as uncached:
        for turn, question in enumerate(questions):
            prompt = with_cache.prompt(question, 12)
            assert prompt == without.prompt(question, 12)
            hit = await generate(cached, prompt, greedy(12, min_new_tokens=12))
            miss = await generate(uncached, prompt, greedy(12, min_new_tokens=12))
            with_cache.record(hit)
            without.record(miss)
            assert hit.token_ids == miss.token_ids == reference_generate(model, prompt, 12, min_new_tokens=12)
            assert miss.cached_tokens == 0
            if turn > 0:  # everything but the new turn (and the previous turn's closing) came from the cache
                assert hit.cached_tokens >= len(prompt) - len(with_cache.turns[-2].token_ids) - 3
        assert cached.stats().prefix_cache.hits >= len(questions) - 1


async def test_a_system_prompt_is_shared_across_chats(tiny_llama):
    async with running_engine(tiny_llama, max_batch_size=2) as engine:
        first, second = Chat(tiny_llama, SYSTEM), Chat(tiny_llama, SYSTEM)
        await generate(engine, first.prompt("What is two plus two?", 8), greedy(8))
        prompt = second.prompt("Name a colour.", 8)
        result = await generate(engine, prompt, greedy(8))
    system_length = len(second.turns[0].token_ids)
    assert result.cached_tokens >= system_length
    assert result.token_ids == reference_generate(tiny_llama, prompt, 8)


async def test_the_same_prompt_again_recomputes_only_its_last_token(tiny_llama):
    prompt = Chat(tiny_llama, SYSTEM).prompt("Retry me.", 10)
    async with running_engine(tiny_llama) as engine:
        first = await generate(engine, prompt, greedy(10, min_new_tokens=10))
        again = await generate(engine, prompt, greedy(10, min_new_tokens=10))
    assert again.cached_tokens == len(prompt) - 1
    assert first.token_ids == again.token_ids == reference_generate(tiny_llama, prompt, 10, min_new_tokens=10)


async def test_a_windowed_chat_misses_the_dropped_turns_and_stays_exact(tiny_llama):
    chat = Chat(tiny_llama, "Be brief.")
    async with running_engine(tiny_llama, max_batch_size=2) as engine:
        dropped = 0
        while dropped == 0:
            text = "Here is a long message about maps, rivers and old libraries. " * 6
            new_turn = chat.form.user_turn(chat.texts, text)
            window = chat.form.build_prompt(chat.turns, new_turn, 32)
            dropped = window.dropped_turns
            prompt = chat.prompt(text, 32)
            result = await generate(engine, prompt, greedy(32, min_new_tokens=32))
            assert result.token_ids == reference_generate(tiny_llama, prompt, 32, min_new_tokens=32)
            chat.record(result)
    assert len(prompt) + 32 <= TINY_CONTEXT
    # the window starts right after the system turn, where the cached sequence had the dropped exchange
    assert result.cached_tokens < len(prompt) // 2


async def test_a_long_prompt_is_prefilled_in_chunks_while_others_keep_streaming(tiny_llama):
    stream_prompt = Chat(tiny_llama).prompt("Keep talking.", 200)
    long_prompt = Chat(tiny_llama).prompt("a long pasted document " * 60, 4)
    chunk = 16
    async with running_engine(tiny_llama, max_batch_size=4, prefill_chunk=chunk, prefix_cache_mb=0) as engine:
        streaming = await engine.submit(stream_prompt, greedy(200, min_new_tokens=200))
        await wait_until(lambda: streaming.started, what="the stream to start")
        steps_before = engine.stats().steps
        long_result = await generate(engine, long_prompt, greedy(4, min_new_tokens=4))
        steps_during = engine.stats().steps - steps_before
        streamed = await within(streaming.final())
    chunks = -(-len(long_prompt) // chunk)
    assert steps_during >= chunks - 1  # a decode step for the stream between every two chunks
    assert long_result.token_ids == reference_generate(tiny_llama, long_prompt, 4, min_new_tokens=4)
    assert streamed.token_ids == reference_generate(tiny_llama, stream_prompt, 200, min_new_tokens=200)


async def test_prompts_finishing_prefill_out_of_order_stay_exact(tiny_llama):
    """A short prompt admitted after a long one finishes its prefill first and overtakes it."""
    form = Chat(tiny_llama)
    running_prompt = form.prompt("Keep talking.", 60)
    long_prompt = Chat(tiny_llama).prompt("a long pasted document " * 30, 8)
    short_prompt = Chat(tiny_llama).prompt("Hi", 8)
    async with running_engine(tiny_llama, max_batch_size=4, prefill_chunk=64, prefix_cache_mb=0) as engine:
        running = await engine.submit(running_prompt, greedy(60, min_new_tokens=60))
        await wait_until(lambda: running.started, what="the first stream to start")
        with gate_on(tiny_llama.model) as gate:
            gate.close()
            await gate.parked()  # the worker waits inside a decode step: both newcomers arrive together
            long_stream = await engine.submit(long_prompt, greedy(8, min_new_tokens=8))
            short_stream = await engine.submit(short_prompt, greedy(8, min_new_tokens=8))
        results = await asyncio.gather(*(within(s.final()) for s in (running, long_stream, short_stream)))
    expected = [
        reference_generate(tiny_llama, running_prompt, 60, min_new_tokens=60),
        reference_generate(tiny_llama, long_prompt, 8, min_new_tokens=8),
        reference_generate(tiny_llama, short_prompt, 8, min_new_tokens=8),
    ]
    assert [r.token_ids for r in results] == expected


async def test_cancelling_mid_prefill_keeps_what_was_computed(tiny_llama):
    # long enough to be mid-prefill when cancelled: one mixed forward per 16-token chunk is quick
    long_prompt = Chat(tiny_llama).prompt("a long pasted document " * 80, 8)
    async with running_engine(tiny_llama, max_batch_size=2, prefill_chunk=16) as engine:
        keep_busy = await engine.submit(Chat(tiny_llama).prompt("Busy.", 300), greedy(300, min_new_tokens=300))
        await wait_until(lambda: keep_busy.started, what="the stream to start")
        stream = await engine.submit(long_prompt, greedy(8))
        await wait_until(lambda: engine.stats().steps > 4 and engine.stats().prefilling == 1, what="prefill")
        await asyncio.sleep(0.05)
        stream.cancel()
        assert (await within(stream.final())).finish_reason == "cancelled"
        keep_busy.cancel()
        retried = await generate(engine, long_prompt, greedy(8, min_new_tokens=8))
    assert retried.cached_tokens > 0
    assert retried.token_ids == reference_generate(tiny_llama, long_prompt, 8, min_new_tokens=8)


def kv(length: int, fill: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two layers of ``[heads=1, length, dim=4]`` keys and values: 32 bytes per token per layer."""
    return [(torch.full((1, length, 4), fill), torch.full((1, length, 4), fill)) for _ in range(2)]


def test_the_budget_evicts_the_least_recently_used_sequence():
    per_token = 2 * 2 * 4 * 4  # layers x (keys, values) x dim x float32
    cache = PrefixCache(budget_bytes=per_token * 100)
    a, b, c = list(range(40)), list(range(100, 140)), list(range(200, 240))
    cache.insert(a, kv(40, 1.0))
    cache.insert(b, kv(40, 2.0))
    length, found = cache.longest_prefix([*a, 999], limit=41)
    assert length == 40 and found is not None and float(found[0][0][0, 0, 0]) == 1.0
    cache.insert(c, kv(40, 3.0))  # over budget: b was used least recently
    assert cache.longest_prefix(b, limit=40)[0] == 0
    assert cache.longest_prefix(a, limit=40)[0] == 40 and cache.longest_prefix(c, limit=40)[0] == 40
    assert cache.stats().evictions == 1 and cache.bytes_used <= cache.budget_bytes


def test_a_longer_turn_replaces_its_prefix_and_a_covered_one_is_not_stored():
    cache = PrefixCache(budget_bytes=10**6)
    turn_one = list(range(50))
    turn_two = [*turn_one, *range(1000, 1030)]
    cache.insert(turn_one, kv(50))
    cache.insert(turn_two, kv(80))
    assert cache.stats().entries == 1  # the chat holds one entry, not one per turn
    cache.insert(turn_one[:30], kv(30))
    assert cache.stats().entries == 1
    assert cache.longest_prefix([*turn_one, 7], limit=51)[0] == 50
    assert cache.longest_prefix([*range(MIN_TOKENS_TO_KEEP - 1), 9999], limit=100)[0] == 0  # too short
    assert PrefixCache(budget_bytes=0).longest_prefix(turn_one, limit=50) == (0, None)


@pytest.mark.slow
async def test_smollm2_second_turn_is_the_same_with_and_without_the_cache(smollm2):
    """The real default model: a cache hit must not change a single token of the reply."""
    with_cache, without = Chat(smollm2, "You are a helpful assistant."), Chat(smollm2, "You are a helpful assistant.")
    async with running_engine(smollm2, max_batch_size=2, kv_reserve_tokens=512) as cached, running_engine(
        smollm2, max_batch_size=2, prefix_cache_mb=0, kv_reserve_tokens=512
    ) as uncached:
        for question in ("What is the capital of France?", "And what river runs through it?"):
            prompt = with_cache.prompt(question, 24)
            hit = await generate(cached, prompt, greedy(24))
            miss = await generate(uncached, without.prompt(question, 24), greedy(24))
            with_cache.record(hit)
            without.record(miss)
            assert hit.token_ids == miss.token_ids
    assert hit.cached_tokens > len(prompt) // 2
