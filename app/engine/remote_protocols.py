"""Wire formats of the inference servers we can generate on: request bodies and stream chunks.

Only what differs between servers lives here; queueing, streaming, stop strings,
errors and cancellation are shared in ``app.engine.remote`` so the llama.cpp
tests cover them for every protocol. Both formats take the prompt as token ids
(the promise is token-exact replay: chat endpoints would re-render the history
from text) and return the generated ids with each streamed chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from app.engine.params import InvalidParams, SamplingParams

PROTOCOLS = ("llamacpp", "openai")


@dataclass(frozen=True)
class Chunk:
    """What one server-sent event says, in our terms."""

    token_ids: list[int]
    text: str = ""
    finish_reason: str | None = None  # eos | length | stop, once the server is done
    tokens_so_far: int | None = None  # the server's count of generated tokens, when it tells
    prompt_tokens: int | None = None
    cached_tokens: int | None = None


class WireProtocol(Protocol):
    name: str
    completion_path: str

    def request_body(self, prompt_ids: list[int], params: SamplingParams, model: str | None) -> dict[str, Any]: ...

    def parse(self, event: dict[str, Any]) -> Chunk: ...


class LlamaCppProtocol:
    """llama.cpp's own ``POST /completion`` (tools/server/README.md of llama.cpp)."""

    name = "llamacpp"
    completion_path = "/completion"

    def request_body(self, prompt_ids: list[int], params: SamplingParams, model: str | None) -> dict[str, Any]:
        if params.min_new_tokens:
            raise InvalidParams("min_new_tokens is not supported by the llama.cpp protocol")
        body: dict[str, Any] = {
            "prompt": prompt_ids,
            "stream": True,
            "return_tokens": True,
            "n_predict": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "repeat_penalty": params.repetition_penalty,
            # like our engine: every earlier token counts, not the last 64 (-1 for "all" is refused)
            "repeat_last_n": len(prompt_ids) + params.max_new_tokens,
            "cache_prompt": True,
            "n_keep": 0,
        }
        if params.seed is not None:
            body["seed"] = params.seed % 2**32  # llama.cpp seeds are 32-bit
        return body

    def parse(self, event: dict[str, Any]) -> Chunk:
        finish = None
        if event.get("stop"):
            finish = {"eos": "eos", "limit": "length", "word": "stop"}.get(event.get("stop_type", ""), "length")
        timings = event.get("timings") or {}
        return Chunk(
            token_ids=[int(t) for t in event.get("tokens") or []],
            text=event.get("content") or "",
            finish_reason=finish,
            tokens_so_far=event.get("tokens_predicted"),
            prompt_tokens=event.get("tokens_evaluated"),
            cached_tokens=timings.get("cache_n"),
        )


class OpenAICompletionsProtocol:
    """The OpenAI-compatible ``POST /v1/completions`` as vLLM (and SGLang) document it.

    ``prompt`` may be a list of token ids; ``return_token_ids: true`` (vLLM 0.10.2+)
    adds each chunk's generated ids as ``choices[0].token_ids``. ``top_k``,
    ``repetition_penalty`` and ``min_tokens`` are vLLM's extra sampling fields.
    """

    name = "openai"
    completion_path = "/v1/completions"

    def request_body(self, prompt_ids: list[int], params: SamplingParams, model: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": prompt_ids,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
            "max_tokens": params.max_new_tokens,
            "min_tokens": params.min_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k > 0 else -1,  # vLLM: -1 means off
            "repetition_penalty": params.repetition_penalty,
            "skip_special_tokens": True,
        }
        if model:
            body["model"] = model
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def parse(self, event: dict[str, Any]) -> Chunk:
        choices = event.get("choices") or []
        usage = event.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        if not choices:  # the closing usage chunk
            return Chunk([], prompt_tokens=usage.get("prompt_tokens"), cached_tokens=details.get("cached_tokens"))
        choice = choices[0]
        # a vLLM that knows the field sends it null when it ignores the request; an older one omits it
        if choice.get("token_ids") is None and choice.get("text"):
            raise ValueError("the server sends no token ids (vLLM 0.10.2 or newer is needed for return_token_ids)")
        reason = choice.get("finish_reason")
        # we send no stop strings, so the server's "stop" is an end-of-sequence token
        finish = None if reason is None else {"stop": "eos", "length": "length"}.get(reason, "length")
        return Chunk(
            token_ids=[int(t) for t in choice.get("token_ids") or []],
            text=choice.get("text") or "",
            finish_reason=finish,
            prompt_tokens=usage.get("prompt_tokens"),
            cached_tokens=details.get("cached_tokens"),
        )


def protocol_named(name: str) -> WireProtocol:
    if name == "llamacpp":
        return LlamaCppProtocol()
    if name == "openai":
        return OpenAICompletionsProtocol()
    raise ValueError(f"CHAT_ENGINE_PROTOCOL must be one of {', '.join(PROTOCOLS)}, not {name!r}")
