"""The engine's life cycle and refusals: seeds, invalid input, busy, cancelling, faults, shutdown, the benchmark.

Exactness of batching, streaming, prompting and loading are in the other ``test_engine_*`` files.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading

import pytest

from app.engine import (
    Engine,
    EngineBusy,
    EngineStopped,
    InvalidParams,
    InvalidPrompt,
    PromptFormat,
    PromptTooLong,
    SamplingParams,
    load_model,
)
from tests.models import MODEL_CACHE, SERVER_CONTEXT, build_tiny_llama
from tests.support import PYTHON, ROOT

GREEDY = dict(temperature=0.0, repetition_penalty=1.0)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), max_positions=SERVER_CONTEXT)
    return load_model(str(folder), MODEL_CACHE)


async def started(loaded, **kwargs) -> Engine:
    engine = Engine(loaded, **kwargs)
    engine.start()
    assert await engine.wait_ready(120)
    return engine


def chat_prompt(loaded, text: str) -> list[int]:
    return PromptFormat(loaded.tokenizer, loaded.eos_token_ids, loaded.context_length).user_turn([], text)


# ---------------------------------------------------------------- sampling


async def test_seeds_and_lengths(tiny):
    engine = await started(tiny)
    try:
        prompt = chat_prompt(tiny, "seeded")

        async def sample(seed):
            params = SamplingParams(temperature=1.0, max_new_tokens=16, min_new_tokens=16, seed=seed)
            return await (await engine.submit(prompt, params)).final()

        first, again, other = await asyncio.gather(sample(1), sample(1), sample(2))
        assert first.token_ids == again.token_ids != other.token_ids
        assert first.completion_tokens == 16 and first.finish_reason == "length"
    finally:
        await engine.stop()


# ---------------------------------------------------------------- refusals, backpressure, cancelling


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1),
                                 dict(max_new_tokens=0), dict(repetition_penalty=0), dict(stop=("x",) * 9),
                                 dict(seed=-3), dict(temperature="hot")])
def test_invalid_params_name_the_field(bad):
    with pytest.raises(InvalidParams, match=next(iter(bad)).split("_")[0]):
        SamplingParams(**bad)


async def test_bad_prompts_are_refused_before_queueing(tiny):
    engine = await started(tiny)
    try:
        with pytest.raises(InvalidPrompt):
            await engine.submit([], SamplingParams())
        with pytest.raises(InvalidPrompt):
            await engine.submit([10**9], SamplingParams())
        with pytest.raises(PromptTooLong):
            await engine.submit([1] * 2000, SamplingParams(max_new_tokens=100))
        assert engine.stats().waiting == 0
    finally:
        await engine.stop()


async def test_full_queue_says_busy_and_cancelling_frees_slots(tiny):
    engine = await started(tiny, max_batch_size=1, max_queue=2)
    long = SamplingParams(max_new_tokens=1500, min_new_tokens=1500, **GREEDY)
    prompt = chat_prompt(tiny, "go")
    try:
        running = await engine.submit(prompt, long)
        await anext(running)  # it is generating
        waiting = [await engine.submit(prompt, long) for _ in range(2)]
        assert [w.queue_position for w in waiting] == [0, 1]
        with pytest.raises(EngineBusy, match="busy"):
            await engine.submit(prompt, long)
        waiting[0].cancel()
        assert (await waiting[0].final()).finish_reason == "cancelled"
        assert waiting[1].queue_position == 0
        running.cancel()
        result = await running.final()
        assert result.finish_reason == "cancelled" and 0 < result.completion_tokens < 1500
        async for _ in waiting[1]:  # now admitted; leaving the loop early cancels it
            break
        await waiting[1].aclose()
        assert (await waiting[1].final()).finish_reason == "cancelled"
        short = await (await engine.submit(prompt, SamplingParams(max_new_tokens=3, **GREEDY))).final()
        assert short.completion_tokens >= 1
        assert engine.stats().running == 0
    finally:
        await engine.stop()


MAGIC = 4242


async def test_a_failing_batch_fails_only_its_requests(tmp_path):
    loaded = load_model(str(build_tiny_llama(tmp_path / "faulty", seed=1, max_positions=SERVER_CONTEXT)), MODEL_CACHE)
    fail_decode = threading.Event()
    threads = set()

    def fault(_module, args, kwargs):
        threads.add(threading.current_thread().name)
        input_ids = kwargs.get("input_ids")
        if input_ids is not None and (MAGIC in input_ids.tolist()[0] or fail_decode.is_set()):
            raise RuntimeError("injected fault")

    loaded.model.register_forward_pre_hook(fault, with_kwargs=True)
    engine = await started(loaded, max_batch_size=4)
    try:
        healthy = await engine.submit(chat_prompt(loaded, "fine"), SamplingParams(max_new_tokens=30, **GREEDY))
        await anext(healthy)
        broken = await (await engine.submit([MAGIC, 5, 6], SamplingParams(max_new_tokens=5))).final()
        assert broken.finish_reason == "error" and "injected fault" in broken.error
        assert (await healthy.final()).finish_reason in ("eos", "length")

        victim = await engine.submit(chat_prompt(loaded, "decode"), SamplingParams(max_new_tokens=200, **GREEDY))
        await anext(victim)
        fail_decode.set()
        assert (await victim.final()).finish_reason == "error"
        fail_decode.clear()
        after = await (await engine.submit(chat_prompt(loaded, "again"), SamplingParams(max_new_tokens=4))).final()
        assert after.finish_reason in ("eos", "length") and after.error is None
    finally:
        await engine.stop()
    assert threads == {"generation-worker"}


async def test_shutdown_cancels_in_flight_work_and_refuses_new(tiny):
    engine = await started(tiny, max_batch_size=1)
    long = SamplingParams(max_new_tokens=1500, min_new_tokens=1500, **GREEDY)
    running = await engine.submit(chat_prompt(tiny, "a"), long)
    queued = await engine.submit(chat_prompt(tiny, "b"), long)
    await anext(running)
    await engine.stop(grace_seconds=0)
    assert (await running.final()).finish_reason == "cancelled"
    assert (await queued.final()).finish_reason == "cancelled"
    assert not engine.stats().alive
    with pytest.raises(EngineStopped):
        await engine.submit(chat_prompt(tiny, "c"), SamplingParams())


def test_benchmark_script_prints_its_ratio(tmp_path):
    model = build_tiny_llama(tmp_path / "bench-model", max_positions=SERVER_CONTEXT)
    result = subprocess.run(
        [PYTHON, "bench/throughput.py", "--model", str(model), "--requests", "4", "--new-tokens", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "CHAT_DATA_DIR": str(tmp_path), "CHAT_CACHE_DIR": str(MODEL_CACHE)},
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"throughput ratio: \d+\.\d\d", result.stdout.strip().splitlines()[-1])
