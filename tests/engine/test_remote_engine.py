"""Generation on a real llama.cpp server: the app and the RemoteEngine against ``llama-server``.

No mock anywhere: llama-server (built from the source in llama-cpp-python's sdist)
serves the default model's GGUF, and the app talks to it as it would in production.
llama.cpp runs the Q4_1 weights, so its replies differ from our float32 engine's:
the tests compare the app with the server, not with our engine.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from app.engine import EngineBusy, InvalidPrompt, PromptTooLong, SamplingParams
from app.engine.remote import RemoteEngine
from app.engine.remote_model import load_tokenizer_only
from tests.llama_support import LlamaServer, llama_server_binary
from tests.models import MODEL_CACHE, build_tiny_gpt2
from tests.page_client import bubble_texts, client_for, send, stored
from tests.support import PYTHON, ROOT, add_user, free_port, running_server

LONG_REPLY = "Write a long story about a dragon who learns to cook."  # greedy: 400 tokens, no EOS


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    server = LlamaServer(llama_server_binary(), tmp_path_factory.mktemp("llama")).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, llama):
    data = tmp_path_factory.mktemp("remote-app")
    with running_server(data, "smollm2", CHAT_ENGINE_URL=llama.url, CHAT_MAX_NEW_TOKENS="400",
                        CHAT_ENGINE_TIMEOUT="20") as process:
        for index in range(8):
            add_user(data, f"user{index}", "password-123")
        yield process


@pytest.fixture(scope="module")
def tokenizer_only():
    return load_tokenizer_only("smollm2", MODEL_CACHE)


def slots_busy(llama: LlamaServer) -> int:
    return sum(1 for slot in httpx.get(llama.url + "/slots", timeout=5).json() if slot.get("is_processing"))


def test_eight_users_get_greedy_replies_whose_stored_ids_are_what_the_server_generated(app_server, llama):
    health = httpx.get(app_server.url + "healthz", timeout=5).json()
    assert health["status"] == "ok"
    assert health["engine"]["protocol"] == "llamacpp" and health["engine"]["status"] == "ok"

    def chat(index: int) -> tuple[str, str]:
        client = client_for(app_server, f"user{index}")
        updates, final = send(client, f"Name {index + 2} fruits.", max_new_tokens=32, temperature=0.0)
        assert len(updates) > 2  # it streamed
        return f"user{index}", final[2]

    with ThreadPoolExecutor(8) as pool:
        chats = list(pool.map(chat, range(8)))
    tokenizer = load_tokenizer_only("smollm2", MODEL_CACHE).tokenizer
    for username, conversation_id in chats:
        user, reply = stored(app_server, username, conversation_id).messages
        assert reply.finish_reason in ("eos", "length") and reply.content
        # asked again directly, one request alone, greedy: the same ids, and the stored ids begin with them
        direct = llama.complete(list(user.token_ids), 32)
        assert list(reply.token_ids[: len(direct)]) == direct
        assert reply.completion_tokens == len(direct)
        assert tokenizer.decode(direct, skip_special_tokens=True) == reply.content
        assert reply.prompt_tokens == len(user.token_ids)


def test_stop_closes_the_http_stream_and_the_server_frees_the_slot(app_server, llama):
    client = client_for(app_server, "user0")
    job = client.submit(LONG_REPLY, "", "", 0.0, 0.9, 400, "", api_name="/send")
    conversation_id = None
    for update in job:
        conversation_id = update[2] or conversation_id
        if conversation_id and len(bubble_texts(update[0])[-1][1]) > 10:
            break
    assert slots_busy(llama) == 1
    job.cancel()  # the Stop button
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and slots_busy(llama):
        time.sleep(0.1)
    assert slots_busy(llama) == 0
    while time.monotonic() < deadline and stored(app_server, "user0", conversation_id).messages[-1].role != "assistant":
        time.sleep(0.2)
    reply = stored(app_server, "user0", conversation_id).messages[-1]
    assert reply.finish_reason in ("stopped", "disconnected") and 0 < reply.completion_tokens < 400


async def test_remote_engine_streams_applies_stop_strings_queues_and_refuses_like_the_local_one(llama, tokenizer_only):
    engine = RemoteEngine(tokenizer_only, llama.url, max_concurrency=1, max_queue=1)
    engine.start()
    try:
        assert await engine.wait_ready(10)
        prompt = tokenizer_only.tokenizer.encode("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,")
        greedy = SamplingParams(temperature=0.0, max_new_tokens=60, stop=(", 20",))
        first = await engine.submit(prompt, greedy)
        second = await engine.submit(prompt, SamplingParams(temperature=0.0, max_new_tokens=5))
        assert second.queue_position == 0  # one at a time: it waits here, not on the server
        with pytest.raises(EngineBusy):
            await engine.submit(prompt, greedy)
        deltas = [delta async for delta in first]
        result = first.result
        assert result is not None and result.finish_reason == "stop"
        assert "".join(deltas) == result.text and ", 20" not in result.text and result.text.endswith("19")
        assert tokenizer_only.tokenizer.decode(result.token_ids).startswith(result.text)
        later = await second.final()
        assert later.finish_reason == "length" and later.completion_tokens == 5
        with pytest.raises(InvalidPrompt):
            await engine.submit([], greedy)
        with pytest.raises(PromptTooLong):  # the server's per-request context is what counts
            await engine.submit(prompt, SamplingParams(max_new_tokens=engine.context_length))
    finally:
        await engine.stop()


def run_app_expecting_refusal(tmp_path, model: str, engine_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHAT_DATA_DIR": str(tmp_path), "CHAT_CACHE_DIR": str(MODEL_CACHE),
           "CHAT_ENGINE_WAIT_SECONDS": "1", "CHAT_ADMIN_PASSWORD": "admin-password"}
    env.pop("CHAT_DATABASE_URL", None)
    return subprocess.run(
        [PYTHON, "-m", "app", "serve", "--port", str(free_port()), "--model", model, "--engine-url", engine_url],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )


def test_server_down_or_another_model_at_start_is_refused_with_one_clear_line(tmp_path, llama):
    down = f"http://127.0.0.1:{free_port()}"
    refused = run_app_expecting_refusal(tmp_path / "down", "smollm2", down)
    assert refused.returncode == 2
    assert f"the inference server at {down} is not ready" in refused.stderr
    assert "Traceback" not in refused.stderr

    other = build_tiny_gpt2(tmp_path / "gpt2")  # a tokenizer unlike SmolLM2's
    mismatch = run_app_expecting_refusal(tmp_path / "other", str(other), llama.url)
    assert mismatch.returncode == 2
    assert "tokenizer differs from ours" in mismatch.stderr and "Traceback" not in mismatch.stderr


async def test_a_dead_server_at_submit_is_engine_stopped_not_a_hang(tokenizer_only):
    engine = RemoteEngine(tokenizer_only, f"http://127.0.0.1:{free_port()}", connect_timeout=2)
    engine.start()
    try:
        from app.engine import EngineStopped

        with pytest.raises(EngineStopped, match=r"cannot reach the inference server"):
            await asyncio.wait_for(engine.submit([1, 2, 3], SamplingParams(max_new_tokens=4)), 10)
        assert engine.stats().running == 0
    finally:
        await engine.stop()


def test_server_killed_mid_reply_stores_an_error_reply_that_retry_completes(app_server, llama):
    client = client_for(app_server, "user1")
    job = client.submit(LONG_REPLY, "", "", 0.0, 0.9, 400, "", api_name="/send")
    conversation_id = None
    for update in job:
        conversation_id = update[2] or conversation_id
        if conversation_id and len(bubble_texts(update[0])[-1][1]) > 10:
            llama.kill()
            break
    list(job)
    shown = bubble_texts(job.outputs()[-1][0])[-1][1]
    reply = stored(app_server, "user1", conversation_id).messages[-1]
    assert reply.role == "assistant" and reply.finish_reason == "error"
    assert reply.content and 0 < reply.completion_tokens < 400  # the partial reply is kept
    assert "inference server" in reply.params["error"]
    assert reply.content in shown
    assert httpx.get(app_server.url + "healthz", timeout=5).status_code == 503

    llama.start()  # same port: the operator restarts it
    retried = client.predict(conversation_id, 0.0, 0.9, 16, "", api_name="/retry")
    messages = stored(app_server, "user1", conversation_id).messages
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[-1].finish_reason in ("eos", "length") and messages[-1].content
    assert messages[-1].content in bubble_texts(retried[0])[-1][1]
