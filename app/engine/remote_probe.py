"""The start-up check of an inference server: healthy, and running a model with our tokenizer.

Run once before the web server starts (``app.web.server.load_for_remote``), with a
plain blocking client: prompts built with another tokenizer would be garbage to the
server, so a mismatch stops the start with a sentence for the operator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from app.engine.remote_errors import RemoteEngineError, describe_error, server_error_text

# Tokenized on both sides at start: any difference means another model or tokenizer.
PROBE_TEXT = "<|im_start|>user\nHello, world! Ünïcødé 12345, `x = y + 1;` and 🙂.<|im_end|>\n"


@dataclass(frozen=True)
class RemoteInfo:
    """What the start-up check learned of the server."""

    model: str | None  # the name to send (OpenAI protocol) or the file it serves (llama.cpp)
    context_length: int | None  # tokens one request may use on the server


def probe_server(url: str, protocol: str, tokenizer: Any, wait_seconds: float = 30.0) -> RemoteInfo:
    """Wait for the server to be healthy, then check it runs a model with our tokenizer.

    Raises ``RemoteEngineError`` with a sentence for the operator: prompts built
    with another tokenizer would be garbage to the server, so we refuse to start.
    """
    url = url.rstrip("/")
    deadline = time.monotonic() + wait_seconds
    last = "no answer"
    with httpx.Client(timeout=httpx.Timeout(10.0, connect=3.0)) as client:
        while True:
            try:
                response = client.get(url + "/health")
                if response.status_code == 200:
                    break
                last = f"HTTP {response.status_code}{server_error_text(response.content)}"
            except httpx.HTTPError as error:
                last = describe_error(error)
            if time.monotonic() >= deadline:
                raise RemoteEngineError(
                    f"the inference server at {url} is not ready after {wait_seconds:g} s ({last}); "
                    "start it first (see README, 'Scaling out') or fix CHAT_ENGINE_URL"
                )
            time.sleep(0.5)
        ours = list(tokenizer.encode(PROBE_TEXT, add_special_tokens=False))
        if protocol == "llamacpp":
            return _probe_llamacpp(client, url, ours)
        return _probe_openai(client, url, ours)


def _probe_llamacpp(client: httpx.Client, url: str, ours: list[int]) -> RemoteInfo:
    response = client.post(url + "/tokenize", json={"content": PROBE_TEXT, "add_special": False})
    if response.status_code != 200:
        raise RemoteEngineError(f"{url} does not answer POST /tokenize (HTTP {response.status_code}): "
                                "is it a llama.cpp server? (else set CHAT_ENGINE_PROTOCOL=openai)")
    theirs = response.json().get("tokens")
    props = client.get(url + "/props")
    settings = props.json() if props.status_code == 200 else {}
    model = settings.get("model_path")
    if theirs != ours:
        raise RemoteEngineError(
            f"the inference server at {url} runs a model whose tokenizer differs from ours "
            f"({model or 'unknown model'}): pass --model with the tokenizer folder of the model it serves"
        )
    context = (settings.get("default_generation_settings") or {}).get("n_ctx")
    return RemoteInfo(model=model, context_length=context if isinstance(context, int) and context > 0 else None)


def _probe_openai(client: httpx.Client, url: str, ours: list[int]) -> RemoteInfo:
    response = client.get(url + "/v1/models")
    if response.status_code != 200:
        raise RemoteEngineError(f"{url} does not answer GET /v1/models (HTTP {response.status_code}): "
                                "is it an OpenAI-compatible server such as vLLM?")
    models = response.json().get("data") or []
    if not models:
        raise RemoteEngineError(f"the inference server at {url} serves no model")
    served = models[0]
    name = str(served.get("id"))
    context = served.get("max_model_len")
    tokenized = client.post(url + "/tokenize", json={"model": name, "prompt": PROBE_TEXT, "add_special_tokens": False})
    if tokenized.status_code != 200:
        raise RemoteEngineError(
            f"{url} has no POST /tokenize (HTTP {tokenized.status_code}), so we cannot check that its model "
            f"{name!r} uses our tokenizer; vLLM and SGLang provide it"
        )
    if tokenized.json().get("tokens") != ours:
        raise RemoteEngineError(
            f"the inference server at {url} serves {name!r}, whose tokenizer differs from ours: "
            "pass --model with the tokenizer folder of the model it serves"
        )
    return RemoteInfo(model=name, context_length=context if isinstance(context, int) and context > 0 else None)
