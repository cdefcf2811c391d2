"""The engine in a process of its own (``ProcessEngine``) behaves as the in-process ``Engine``.

Same greedy tokens and text, alone and batched; cancelling frees the row; a full
queue says busy; ``stop`` ends running replies; a killed generation process ends
its replies with a sentence and is replaced by a new one that serves again; a
model that cannot be loaded gives ``ModelLoadError``; the generation process dies
with the web process. Each generation process imports torch and loads the tiny
model (seconds), so the tests share one, which the last of them stops.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine import EngineBusy, EngineStopped, InvalidPrompt, LoadedModel, ModelLoadError, PromptTooLong
from app.engine.process_engine import ProcessEngine
from app.engine.process_wire import PROCESS_DIED, EngineProcessConfig
from tests.engine_support import WAIT, chat_prompt, collect, generate, greedy, running_engine, wait_until, within
from tests.models import CACHE_DIR
from tests.support import ROOT

ENGINE_KWARGS = {"max_batch_size": 4, "max_queue": 4, "kv_reserve_tokens": 128}
TEXTS = ["Hi", "What is the capital of France, and why is it famous?", "Name three colours."]
LONG = greedy(400)  # outlives any test step on the tiny model's 512-token context


def process_engine_for(folder: Path) -> ProcessEngine:
    config = EngineProcessConfig(str(folder), CACHE_DIR, fast_kernels=False, engine_kwargs=ENGINE_KWARGS)
    return ProcessEngine(config, first_restart_delay=0.1)


@pytest.fixture(scope="module")
def process_engine(tiny_llama_dir: Path) -> Iterator[ProcessEngine]:
    engine = process_engine_for(tiny_llama_dir)
    engine.start()
    try:
        assert engine.wait_ready_blocking(WAIT), "the generation process did not warm up"
        yield engine
    finally:
        asyncio.run(engine.stop())


@pytest.fixture(scope="module")
def reference_replies(tiny_llama: LoadedModel) -> list[list[int]]:
    """Each prompt's greedy tokens from the in-process engine, alone."""

    async def run() -> list[list[int]]:
        async with running_engine(tiny_llama, **ENGINE_KWARGS) as engine:
            return [(await generate(engine, chat_prompt(tiny_llama, t), greedy(24))).token_ids for t in TEXTS]

    return asyncio.run(run())


async def test_greedy_replies_match_the_in_process_engine(process_engine, tiny_llama, reference_replies):
    prompts = [chat_prompt(tiny_llama, text) for text in TEXTS]
    alone = [await collect(await process_engine.submit(p, greedy(24))) for p in prompts]
    streams = [await process_engine.submit(p, greedy(24)) for p in prompts]
    together = await asyncio.gather(*(collect(s) for s in streams))
    for (deltas, result), expected in zip([*alone, *together], [*reference_replies, *reference_replies], strict=True):
        assert result.token_ids == expected
        assert result.text == tiny_llama.tokenizer.decode(expected, skip_special_tokens=True)
        assert "".join(deltas) == result.text
        assert result.finish_reason in ("length", "eos") and result.error is None
    stats = process_engine.stats()
    assert stats.alive and stats.accepting and stats.generated_tokens >= 6 * 24 - 6
    health = await process_engine.health_report()
    report = health.report
    assert health.healthy and report["ready"] and report["max_batch_size"] == 4 and "prefix_cache" in report


async def test_refusals_are_immediate(process_engine):
    with pytest.raises(InvalidPrompt):
        await process_engine.submit([], greedy(4))
    with pytest.raises(InvalidPrompt):
        await process_engine.submit([1, 10**6], greedy(4))
    with pytest.raises(PromptTooLong):
        await process_engine.submit([1] * 500, greedy(100))
    with pytest.raises(TypeError):
        await process_engine.submit([1, 2], {"max_new_tokens": 4})


async def test_cancel_mid_reply_frees_the_row(process_engine, tiny_llama):
    stream = await process_engine.submit(chat_prompt(tiny_llama, "cancel me"), LONG)
    first = await within(stream.__anext__())
    stream.cancel()
    deltas, result = await collect(stream)
    assert result.finish_reason == "cancelled"
    assert 0 < result.completion_tokens < LONG.max_new_tokens
    assert result.text.startswith(first + "".join(deltas))
    await wait_until(lambda: process_engine.stats().running == 0, what="the row to be freed")


async def test_a_full_queue_is_busy_and_positions_are_reported(process_engine, tiny_llama):
    prompt = chat_prompt(tiny_llama, "busy")
    running = [await process_engine.submit(prompt, LONG) for _ in range(4)]
    await wait_until(lambda: all(s.started for s in running), what="the batch to fill")
    waiting = [await process_engine.submit(prompt, LONG) for _ in range(4)]
    await wait_until(lambda: [s.queue_position for s in waiting] == [0, 1, 2, 3], what="the queue positions")
    with pytest.raises(EngineBusy, match="busy"):
        await process_engine.submit(prompt, greedy(4))
    assert process_engine.stats().waiting == 4
    for stream in [*running, *waiting]:
        stream.cancel()
    results = [(await collect(s))[1] for s in [*running, *waiting]]
    assert {r.finish_reason for r in results} == {"cancelled"}
    await wait_until(lambda: process_engine.stats().running == 0, what="the rows to be freed")


async def test_ctrl_c_is_left_to_the_web_process(process_engine, tiny_llama, reference_replies):
    """A terminal's Ctrl-C reaches both processes; only the web process may decide to stop."""
    assert process_engine.pid is not None
    os.kill(process_engine.pid, signal.SIGINT)
    again = await generate(process_engine, chat_prompt(tiny_llama, TEXTS[0]), greedy(24))
    assert again.token_ids == reference_replies[0] and process_engine.restarts == 0


async def test_a_killed_process_ends_its_replies_in_words_and_comes_back(process_engine, tiny_llama, reference_replies):
    engine = process_engine
    stream = await engine.submit(chat_prompt(tiny_llama, "crash"), LONG)
    first = await within(stream.__anext__())
    assert engine.pid is not None
    os.kill(engine.pid, signal.SIGKILL)
    deltas, result = await collect(stream)
    assert result.finish_reason == "error" and result.error == PROCESS_DIED
    assert result.text == first + "".join(deltas) and result.token_ids
    assert not engine.stats().alive
    health = await engine.health_report()
    assert not health.healthy and not health.report["alive"]
    with pytest.raises(EngineStopped, match="restarting"):
        await engine.submit(chat_prompt(tiny_llama, TEXTS[0]), greedy(24))

    assert await engine.wait_ready(WAIT)
    assert engine.stats().alive and engine.restarts == 1
    again = await generate(engine, chat_prompt(tiny_llama, TEXTS[0]), greedy(24))
    assert again.token_ids == reference_replies[0]


async def test_stop_ends_running_replies_then_refuses(process_engine, tiny_llama):
    """Stops the module's engine: keep this the module's last test that uses it."""
    running = await process_engine.submit(chat_prompt(tiny_llama, "stop"), LONG)
    await within(running.__anext__())
    await within(process_engine.stop(grace_seconds=0.1))
    _, stopped = await collect(running)
    assert stopped.finish_reason == "cancelled"
    stats = process_engine.stats()
    assert not stats.alive and not stats.accepting and process_engine.pid is None
    with pytest.raises(EngineStopped, match="not running"):
        await process_engine.submit(chat_prompt(tiny_llama, TEXTS[0]), greedy(4))


async def test_a_model_that_cannot_load_gives_model_load_error(tmp_path):
    engine = process_engine_for(tmp_path)  # a folder, but not a model's
    engine.start()
    try:
        with pytest.raises(ModelLoadError, match=r"has no config\.json"):
            await engine.wait_ready(WAIT)
        assert not engine.stats().alive and engine.restarts == 0
    finally:
        await engine.stop()


PARENT_SCRIPT = """
import sys, time
from pathlib import Path
from app.engine.process_engine import ProcessEngine
from app.engine.process_wire import EngineProcessConfig

if __name__ == "__main__":
    engine = ProcessEngine(EngineProcessConfig(sys.argv[1], Path(sys.argv[2]), fast_kernels=False))
    engine.start()
    print(engine.pid, flush=True)
    time.sleep(600)
"""


def test_the_generation_process_dies_with_the_web_process(tiny_llama_dir, tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    parent = subprocess.Popen(
        [sys.executable, str(script), str(tiny_llama_dir), str(CACHE_DIR)], cwd=ROOT, stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while _running(child):
            assert time.monotonic() < deadline, "the generation process outlived the web process"
            time.sleep(0.05)
    finally:
        parent.kill()


def _running(pid: int) -> bool:
    """True while ``pid`` runs (an exited orphan may linger as a zombie until its new parent reaps it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status
