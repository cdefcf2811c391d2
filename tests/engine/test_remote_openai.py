"""The ``openai`` protocol (vLLM, SGLang) against vLLM's completions dialect with a real model behind it.

vLLM cannot run without a GPU; ``tests/vllm_dialect.py`` speaks its request and
stream format field for field (from the vLLM 0.19.1 wheel) in front of a real
llama.cpp server, so what the app stores are ids a real model generated and a closed
stream frees a real slot. The shared streaming logic is tested on llama.cpp's own
protocol in ``test_remote_engine.py``; this covers what is the adapter's own.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.engine import SamplingParams
from app.engine.remote import RemoteEngine, probe_server
from app.engine.remote_model import load_tokenizer_only
from tests.browser import wait_for
from tests.engine.test_remote_engine import LONG_REPLY, slots_busy
from tests.llama_support import LlamaServer, llama_server_binary
from tests.models import MODEL_CACHE
from tests.page_client import client_for, send, stored
from tests.support import add_user, running_server
from tests.vllm_dialect import VllmDialectFront

GREEDY_AS_THE_PAGE = SamplingParams(temperature=0.0, top_p=0.9, top_k=50, repetition_penalty=1.1, max_new_tokens=32)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    server = LlamaServer(llama_server_binary(), tmp_path_factory.mktemp("llama-openai"), parallel=4,
                         context=4096).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def front(llama):
    server = VllmDialectFront(llama.url).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tokenizer_only():
    return load_tokenizer_only("smollm2", MODEL_CACHE)


def chat_prompt(tokenizer, text: str) -> list[int]:
    return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                              tokenize=True, return_dict=False))


async def started_engine(front: VllmDialectFront, tokenizer_only, **options) -> RemoteEngine:
    info = await asyncio.to_thread(probe_server, front.url, "openai", tokenizer_only.tokenizer, 10)
    engine = RemoteEngine(tokenizer_only, front.url, "openai", served_model=info.model, **options)
    if info.context_length:
        engine.context_length = info.context_length
    engine.start()
    assert await engine.wait_ready(10)
    return engine


async def test_greedy_ids_are_the_models_and_the_request_is_vllms(front, llama, tokenizer_only):
    info = await asyncio.to_thread(probe_server, front.url, "openai", tokenizer_only.tokenizer, 10)
    assert info.model == front.served_name and info.context_length == 4096 // 4  # per request, as served
    engine = await started_engine(front, tokenizer_only)
    try:
        prompt = chat_prompt(tokenizer_only.tokenizer, "Name 3 fruits.")
        stream = await engine.submit(prompt, GREEDY_AS_THE_PAGE)
        deltas = [delta async for delta in stream]
        result = stream.result
        assert result is not None and result.finish_reason in ("eos", "length") and result.text
        direct = llama.complete(prompt, 32)  # the same model asked directly, greedy
        assert result.token_ids[: len(direct)] == direct and result.completion_tokens == len(direct)
        assert "".join(deltas) == result.text == tokenizer_only.tokenizer.decode(direct, skip_special_tokens=True)
        assert result.prompt_tokens == len(prompt)  # from the closing usage chunk

        body = front.bodies[-1]  # the front refused any field vLLM's CompletionRequest lacks
        assert body["prompt"] == prompt and body["model"] == front.served_name
        assert body["return_token_ids"] is True and body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert (body["temperature"], body["top_p"], body["top_k"], body["repetition_penalty"]) == (0.0, 0.9, 50, 1.1)
        assert body["max_tokens"] == 32 and body["skip_special_tokens"] is True

        # stop strings are ours (none are sent, so the ids stay exact), applied as with the local engine
        counting = tokenizer_only.tokenizer.encode("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,")
        stream = await engine.submit(counting, SamplingParams(temperature=0.0, max_new_tokens=60, stop=(", 20",)))
        stopped = await stream.final()
        assert stopped.finish_reason == "stop" and stopped.text.endswith("19") and ", 20" not in stopped.text
        assert "stop" not in front.bodies[-1]
    finally:
        await engine.stop()


async def test_closing_the_stream_frees_the_servers_slot(front, llama, tokenizer_only):
    engine = await started_engine(front, tokenizer_only)
    try:
        prompt = chat_prompt(tokenizer_only.tokenizer, LONG_REPLY)
        stream = await engine.submit(prompt, SamplingParams(temperature=0.0, max_new_tokens=400))
        seen = ""
        async for delta in stream:
            seen += delta
            if len(seen) > 20:
                break
        assert slots_busy(llama) == 1
        stream.cancel()
        result = await stream.final()
        assert result.finish_reason == "cancelled" and 0 < result.completion_tokens < 400
        await asyncio.to_thread(wait_for, lambda: slots_busy(llama) == 0 and front.open_streams == 0, 10)
    finally:
        await engine.stop()


async def test_a_vllm_without_token_ids_ends_the_reply_with_a_clear_error(llama, tokenizer_only):
    old = VllmDialectFront(llama.url, token_ids=False).start()  # a vLLM before 0.10.2
    try:
        engine = await started_engine(old, tokenizer_only)
        try:
            stream = await engine.submit(chat_prompt(tokenizer_only.tokenizer, "Hello!"), GREEDY_AS_THE_PAGE)
            result = await stream.final()
            assert result.finish_reason == "error" and "0.10.2" in (result.error or "")
        finally:
            await engine.stop()
    finally:
        old.stop()


def test_the_app_chats_through_the_openai_protocol(tmp_path, front, llama):
    with running_server(tmp_path, "smollm2", CHAT_ENGINE_URL=front.url, CHAT_ENGINE_PROTOCOL="openai",
                        CHAT_ENGINE_TIMEOUT="20") as app:
        health = httpx.get(app.url + "healthz", timeout=5).json()
        assert health["engine"]["protocol"] == "openai" and health["engine"]["status"] == "ok"
        add_user(tmp_path, "viewer", "password-123")
        updates, final = send(client_for(app, "viewer"), "Name 4 fruits.", max_new_tokens=24, temperature=0.0)
        assert len(updates) > 2  # it streamed
        user, reply = stored(app, "viewer", final[2]).messages
        direct = llama.complete(list(user.token_ids), 24)
        assert list(reply.token_ids[: len(direct)]) == direct and reply.completion_tokens == len(direct)
        assert reply.finish_reason in ("eos", "length") and reply.prompt_tokens == len(user.token_ids)
