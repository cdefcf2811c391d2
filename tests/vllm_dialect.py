"""vLLM's OpenAI-compatible completions dialect, spoken in front of a real llama.cpp server.

vLLM needs a GPU, so the ``openai`` protocol cannot meet a real vLLM here. This front
lets it meet the next best thing: requests and stream chunks shaped field for field as
vLLM 0.19.1 takes and sends them (``vllm/entrypoints/openai/completion/protocol.py``
and ``serving.py`` of its wheel), with a real model behind them: every request is
translated to llama.cpp's ``/completion`` and every chunk back, so the ids the app
stores are ids a real model generated, and closing the stream frees the real slot.

Where vLLM would quietly ignore an unknown request field (it only logs it), this front
refuses it, so a misspelt sampling field fails a test instead of changing replies.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support import free_port

# the request fields of vLLM 0.19.1's CompletionRequest
VLLM_COMPLETION_FIELDS = frozenset({
    "add_special_tokens", "allowed_token_ids", "cache_salt", "echo", "frequency_penalty", "ignore_eos",
    "include_stop_str_in_output", "kv_transfer_params", "length_penalty", "logit_bias", "logprobs", "max_tokens",
    "min_p", "min_tokens", "model", "n", "presence_penalty", "priority", "prompt", "prompt_embeds",
    "prompt_logprobs", "repetition_detection", "repetition_penalty", "request_id", "response_format",
    "return_token_ids", "return_tokens_as_token_ids", "seed", "skip_special_tokens",
    "spaces_between_special_tokens", "stop", "stop_token_ids", "stream", "stream_options", "structured_outputs",
    "suffix", "temperature", "top_k", "top_p", "truncate_prompt_tokens", "use_beam_search", "user", "vllm_xargs",
})


def _error(message: str, status: int) -> JSONResponse:
    """vLLM's error body."""
    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}},
                        status_code=status)


@dataclass
class VllmDialectFront:
    """The front on a free port; ``token_ids=False`` plays a vLLM older than 0.10.2 (no ``return_token_ids``)."""

    llama_url: str
    served_name: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    token_ids: bool = True
    port: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    open_streams: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ routes

    async def health(self, request: Request) -> Response:
        async with httpx.AsyncClient(timeout=5) as client:
            answer = await client.get(self.llama_url + "/health")
        return Response(status_code=answer.status_code)

    async def _context(self, client: httpx.AsyncClient) -> int:
        props = (await client.get(self.llama_url + "/props")).json()
        return int(props["default_generation_settings"]["n_ctx"])

    async def models(self, request: Request) -> Response:
        async with httpx.AsyncClient(timeout=5) as client:
            context = await self._context(client)
        card = {"id": self.served_name, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                "root": self.served_name, "parent": None, "max_model_len": context}
        return JSONResponse({"object": "list", "data": [card]})

    async def tokenize(self, request: Request) -> Response:
        body = await request.json()
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(self.llama_url + "/tokenize", json={
                "content": body["prompt"], "add_special": body.get("add_special_tokens", True)})
            tokens = answer.json()["tokens"]
            return JSONResponse({"count": len(tokens), "max_model_len": await self._context(client),
                                 "tokens": tokens, "token_strs": None})

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.bodies.append(body)
        unknown = sorted(set(body) - VLLM_COMPLETION_FIELDS)
        if unknown:
            return _error(f"fields vLLM would ignore: {', '.join(unknown)}", 400)
        if body.get("model") not in (None, self.served_name):
            return _error(f"The model `{body.get('model')}` does not exist.", 404)
        prompt = body.get("prompt")
        if not (isinstance(prompt, list) and all(isinstance(t, int) and t >= 0 for t in prompt)):
            return _error("this front takes prompts as token ids only", 400)
        if body.get("min_tokens") or body.get("n", 1) != 1 or not body.get("stream"):
            return _error("this front streams one completion without min_tokens", 400)
        max_tokens = int(body.get("max_tokens") or 16)
        top_k = int(body.get("top_k") or 0)
        upstream = {
            "prompt": prompt, "stream": True, "return_tokens": True, "n_predict": max_tokens,
            "temperature": float(body.get("temperature") if body.get("temperature") is not None else 1.0),
            "top_p": float(body.get("top_p") or 1.0), "top_k": max(0, top_k),  # -1 and 0: off, as in vLLM
            "repeat_penalty": float(body.get("repetition_penalty") or 1.0),
            "repeat_last_n": len(prompt) + max_tokens,  # vLLM's penalty counts prompt and output
            "cache_prompt": True,
        }
        if body.get("seed") is not None:
            upstream["seed"] = int(body["seed"]) % 2**32
        usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))
        wants_ids = bool(body.get("return_token_ids")) and self.token_ids
        return StreamingResponse(self._chunks(upstream, prompt, usage_wanted, wants_ids),
                                 media_type="text/event-stream")

    async def _chunks(
        self, upstream: dict[str, Any], prompt: list[int], usage_wanted: bool, wants_ids: bool
    ) -> AsyncIterator[str]:
        request_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        generated = 0
        self.open_streams += 1
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(120, connect=5)) as client, client.stream(
                "POST", self.llama_url + "/completion", json=upstream
            ) as answer:
                async for line in answer.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[len("data: "):])
                    tokens = [int(t) for t in event.get("tokens") or []]
                    generated += len(tokens)
                    if event.get("tokens_predicted", generated) != generated:
                        # llama.cpp withheld ids of a split character; vLLM never does: fail loudly
                        yield "data: " + json.dumps({"error": {"message": "front lost token ids", "code": 500}})
                        return
                    finish = None
                    if event.get("stop"):
                        finish = "stop" if event.get("stop_type") == "eos" else "length"
                    if not tokens and not event.get("content") and finish is None:
                        continue
                    choice: dict[str, Any] = {"index": 0, "text": event.get("content") or "", "logprobs": None,
                                              "finish_reason": finish, "stop_reason": None}
                    if self.token_ids:  # a vLLM that has the fields sends them, null unless asked
                        choice["prompt_token_ids"] = prompt if wants_ids and generated == len(tokens) else None
                        choice["token_ids"] = tokens if wants_ids else None
                    chunk = {"id": request_id, "object": "text_completion", "created": created,
                             "model": self.served_name, "choices": [choice], "usage": None}
                    yield f"data: {json.dumps(chunk)}\n\n"
            if usage_wanted:
                usage = {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + generated,
                         "completion_tokens": generated}
                chunk = {"id": request_id, "object": "text_completion", "created": created,
                         "model": self.served_name, "choices": [], "usage": usage}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.open_streams -= 1

    # ------------------------------------------------------------ life cycle

    def start(self) -> VllmDialectFront:
        self.port = self.port or free_port()
        app = Starlette(routes=[
            Route("/health", self.health),
            Route("/v1/models", self.models),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=asyncio.run, args=(self._server.serve(),), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the vLLM-dialect front did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
