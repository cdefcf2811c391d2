"""Generation on an inference server (llama.cpp, vLLM, SGLang) behind the in-process engine's interface.

``ChatService`` does not know which engine it talks to: ``RemoteEngine.submit``
returns a stream with the same async iteration of text deltas, ``final()``,
``cancel()``, ``queue_position`` and ``result`` as ``app.engine.Engine``. Prompts
go out as token ids and the generated ids come back, so what is stored is exactly
what the server generated; the text is decoded locally from those ids (the same
incremental decoder as the local engine) and stop strings are applied here with
the same hold-back, so a stop string never flashes on screen.

Up to ``max_concurrency`` requests are in flight; more wait here (with a queue
position, like the local engine), and past ``max_queue`` the caller hears "busy".
Cancelling closes the HTTP stream, which makes the server free the slot. A lost
connection or time-out ends the reply with ``finish_reason="error"`` and keeps
the part already received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.engine.batcher import (
    EngineBusy,
    EngineStats,
    EngineStopped,
    checked_prompt,
)
from app.engine.detokenize import IncrementalDecoder
from app.engine.loading import LoadedModel
from app.engine.params import SamplingParams
from app.engine.prefix_cache import PrefixCacheStats
from app.engine.remote_protocols import Chunk, WireProtocol, protocol_named
from app.engine.reply_text import accept_token
from app.engine.streams import GenerationResult, GenerationStream

log = logging.getLogger(__name__)

# How long submit() waits for the server's answer to a request it sends at once, so
# that a 429/503 or a dead server becomes "busy" before anything is shown.
HEADERS_WAIT_SECONDS = 5.0
BUSY_STATUSES = (429, 503)
# Tokenized on both sides at start: any difference means another model or tokenizer.
PROBE_TEXT = "<|im_start|>user\nHello, world! Ünïcødé 12345, `x = y + 1;` and 🙂.<|im_end|>\n"


class RemoteEngineError(RuntimeError):
    """The inference server cannot be used (unreachable, another model); the message says why."""


@dataclass(frozen=True)
class RemoteInfo:
    """What the start-up check learned of the server."""

    model: str | None  # the name to send (OpenAI protocol) or the file it serves (llama.cpp)
    context_length: int | None  # tokens one request may use on the server


@dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    decoder: IncrementalDecoder
    events: asyncio.Queue[str | GenerationResult] = field(default_factory=asyncio.Queue)
    submitted_at: float = field(default_factory=time.perf_counter)
    turn: asyncio.Event = field(default_factory=asyncio.Event)  # set when it may be sent
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # the server's status line came
    refusal: Exception | None = None  # busy or unreachable, while submit() still waits
    task: asyncio.Task[None] | None = None
    generated: list[int] = field(default_factory=list)
    text: str = ""
    sent_chars: int = 0
    first_token_at: float | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int = 0
    done: bool = False


class RemoteEngine:
    """Sends generations to an inference server; the interface of ``app.engine.Engine``."""

    def __init__(
        self,
        loaded: LoadedModel,
        url: str,
        protocol: str = "llamacpp",
        *,
        max_concurrency: int = 16,
        max_queue: int = 64,
        served_model: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
    ) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.context_length = loaded.context_length
        self.eos_token_ids = frozenset(loaded.eos_token_ids)
        self.vocab_size = len(loaded.tokenizer)
        self.url = url.rstrip("/")
        self.protocol: WireProtocol = protocol_named(protocol)
        self.served_model = served_model
        self.max_batch_size = max_concurrency
        self.max_queue = max_queue
        self._timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=30.0, pool=None)
        self._client: httpx.AsyncClient | None = None
        self._waiting: deque[_Request] = deque()
        self._running: set[_Request] = set()
        self._accepting = False
        self._alive = False
        self._generated_tokens = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._client is None:
            connections = self.max_batch_size + 4
            limits = httpx.Limits(max_connections=connections, max_keepalive_connections=self.max_batch_size)
            self._client = httpx.AsyncClient(timeout=self._timeout, limits=limits)
            self._accepting = True

    async def wait_ready(self, max_seconds: float | None = None) -> bool:
        """True once the server answers its health check (the start-up check already ran before)."""
        deadline = time.monotonic() + (30.0 if max_seconds is None else max_seconds)
        while True:
            if (await self.health())["status"] == "ok":
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.5)

    @property
    def ready(self) -> bool:
        return self._alive

    async def health(self) -> dict[str, Any]:
        """The server's own health endpoint, asked now (for ``/healthz``)."""
        report: dict[str, Any] = {"url": self.url, "protocol": self.protocol.name}
        if self._client is None:
            report["status"] = "stopped"
            return report
        try:
            response = await self._client.get(self.url + "/health", timeout=3.0)
            self._alive = response.status_code == 200
            report["status"] = "ok" if self._alive else f"HTTP {response.status_code}"
        except httpx.HTTPError as error:
            self._alive = False
            report["status"] = f"unreachable: {_describe(error)}"
        return report

    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop taking requests; let running ones finish for ``grace_seconds``, cancel the rest."""
        self._accepting = False
        tasks = [r.task for r in [*self._waiting, *self._running] if r.task is not None]
        if tasks and grace_seconds > 0:
            await asyncio.wait(tasks, timeout=grace_seconds)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self._running),
            prefilling=0,
            waiting=len(self._waiting),
            max_batch_size=self.max_batch_size,
            max_queue=self.max_queue,
            steps=0,
            generated_tokens=self._generated_tokens,
            alive=self._client is not None,
            accepting=self._accepting,
            prefix_cache=PrefixCacheStats(0, 0, 0, 0, 0, 0, 0),
        )

    # ------------------------------------------------------------ requests

    async def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> GenerationStream:
        """Send (or queue) a generation; raises at once if it can never run or the server is busy."""
        if not isinstance(params, SamplingParams):
            raise TypeError("params must be a SamplingParams")
        prompt = self._check_prompt(prompt_ids, params)
        self.protocol.request_body(prompt, params, self.served_model)  # refuses unsupported settings now
        if not self._accepting or self._client is None:
            raise EngineStopped("the generation engine is not running")
        free = len(self._running) < self.max_batch_size
        if not free and len(self._waiting) >= self.max_queue:
            raise EngineBusy(
                f"the server is busy ({len(self._running)} replies running, "
                f"{len(self._waiting)} waiting); please try again in a moment"
            )
        request = _Request(prompt, params, IncrementalDecoder(self.tokenizer))
        if free:
            self._running.add(request)
            request.turn.set()
        else:
            self._waiting.append(request)
        request.task = asyncio.create_task(self._run(request))
        if free:
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEADERS_WAIT_SECONDS):
                        await request.answered.wait()
            except BaseException:  # the caller went away: nobody will read this reply
                request.task.cancel()
                raise
            if request.refusal is not None:
                raise request.refusal
        return GenerationStream(self, request)

    def _check_prompt(self, prompt_ids: Sequence[int], params: SamplingParams) -> list[int]:
        return checked_prompt(prompt_ids, params, self.vocab_size, self.context_length)

    def cancel_request(self, request: _Request) -> None:
        task = request.task
        if task is not None and not task.done():
            task.cancel()  # leaves the ``async with`` of the HTTP stream: the connection closes

    def queue_position_of(self, request: _Request) -> int | None:
        try:
            return self._waiting.index(request)
        except ValueError:
            return None

    def _admit_waiting(self) -> None:
        while self._waiting and len(self._running) < self.max_batch_size:
            request = self._waiting.popleft()
            self._running.add(request)
            request.turn.set()

    async def _run(self, request: _Request) -> None:
        reason, error = "error", None
        try:
            await request.turn.wait()
            reason, error = await self._generate(request)
        except asyncio.CancelledError:
            reason = request.finish_reason or "cancelled"  # done already, only its last chunk was pending
        except Exception as failure:  # a fault fails this request, never the engine
            log.exception("remote generation failed")
            error = f"generation failed: {failure}"
        finally:
            with contextlib.suppress(ValueError):
                self._waiting.remove(request)
            self._running.discard(request)
            self._admit_waiting()
            if not request.answered.is_set():
                request.answered.set()
            self._finish(request, reason, error)

    async def _generate(self, request: _Request) -> tuple[str, str | None]:
        """One streamed completion; returns (finish_reason, error)."""
        assert self._client is not None
        body = self.protocol.request_body(request.prompt_ids, request.params, self.served_model)
        address = self.url + self.protocol.completion_path
        try:
            async with self._client.stream("POST", address, json=body) as response:
                if response.status_code in BUSY_STATUSES:
                    detail = _error_text(await response.aread())
                    message = f"the inference server is busy (HTTP {response.status_code}{detail})"
                    return self._refuse(request, EngineBusy(message + "; please try again in a moment"))
                if response.status_code >= 400:
                    detail = _error_text(await response.aread())
                    return "error", f"the inference server refused the request (HTTP {response.status_code}{detail})"
                request.answered.set()
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        return "error", f"the inference server reported: {_error_text(event)}"
                    self._accept_chunk(request, self.protocol.parse(event))
                    if request.finish_reason == "stop":
                        return "stop", None  # our stop string: leaving closes the stream, the server stops
                    # after an EOS or the length limit the server ends too; its last chunk has the figures
        except httpx.ConnectError as failure:
            return self._lost(request, f"cannot reach the inference server at {self.url} ({_describe(failure)})")
        except httpx.TimeoutException as failure:
            return self._lost(request, f"the inference server at {self.url} timed out ({_describe(failure)})")
        except httpx.TransportError as failure:
            return self._lost(request, f"lost the connection to the inference server at {self.url} "
                                       f"({_describe(failure)})")
        if request.finish_reason is None:
            return "error", "the inference server ended the stream before the reply was finished"
        return request.finish_reason, None

    def _refuse(self, request: _Request, refusal: Exception) -> tuple[str, str | None]:
        """Before submit() returns, a refusal is raised to the caller; later it ends the reply."""
        if not request.answered.is_set():
            request.refusal = refusal
            request.answered.set()
        return "error", str(refusal)

    def _lost(self, request: _Request, message: str) -> tuple[str, str | None]:
        if not request.answered.is_set() and not request.generated:
            return self._refuse(request, EngineStopped(message))
        return "error", message

    def _accept_chunk(self, request: _Request, chunk: Chunk) -> None:
        if chunk.prompt_tokens is not None:
            request.prompt_tokens = chunk.prompt_tokens
        if chunk.cached_tokens is not None:
            request.cached_tokens = int(chunk.cached_tokens)
        if request.finish_reason is not None:
            return
        ids = chunk.token_ids
        if chunk.tokens_so_far is not None and chunk.tokens_so_far > len(request.generated) + len(ids):
            ids = self._recover_skipped(request, chunk)
        for token in ids:
            self._accept_token(request, token)
            if request.finish_reason is not None:
                return
        if chunk.finish_reason is not None:
            request.finish_reason = chunk.finish_reason

    def _recover_skipped(self, request: _Request, chunk: Chunk) -> list[int]:
        """Ids the server generated but did not send (llama.cpp withholds tokens ending mid-character).

        The chunk's text is the text of the skipped tokens plus this one; re-encoding
        it gives them back whenever the model chose the canonical split (it nearly
        always does), which we check by the count.
        """
        skipped = chunk.tokens_so_far - len(request.generated) - len(chunk.token_ids)  # type: ignore[operator]
        candidate = self.tokenizer.encode(chunk.text, add_special_tokens=False)
        if len(candidate) == skipped + len(chunk.token_ids) and candidate[skipped:] == chunk.token_ids:
            return candidate
        log.warning("could not recover %d token ids the server did not stream; the text is kept", skipped)
        return candidate[: max(0, len(candidate) - len(chunk.token_ids))] + chunk.token_ids

    def _accept_token(self, request: _Request, token: int) -> None:
        """The local engine's rule (``reply_text``), so a reply does not depend on where it ran."""
        self._generated_tokens += 1
        delta = accept_token(request, request.decoder, token, self.eos_token_ids)
        if delta:
            request.events.put_nowait(delta)

    def _finish(self, request: _Request, reason: str, error: str | None) -> None:
        if request.done:
            return
        request.done = True
        text = request.text if reason == "stop" else request.decoder.full_text()
        if text.startswith(request.text[: request.sent_chars]) and len(text) > request.sent_chars:
            request.events.put_nowait(text[request.sent_chars :])
        now = time.perf_counter()
        request.events.put_nowait(
            GenerationResult(
                token_ids=list(request.generated),
                text=text,
                finish_reason=reason,
                prompt_tokens=request.prompt_tokens or len(request.prompt_ids),
                completion_tokens=len(request.generated),
                time_to_first_token=(
                    None if request.first_token_at is None else request.first_token_at - request.submitted_at
                ),
                total_time=now - request.submitted_at,
                error=error,
                cached_tokens=request.cached_tokens,
            )
        )


# ------------------------------------------------------------ start-up check


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
                last = f"HTTP {response.status_code}{_error_text(response.content)}"
            except httpx.HTTPError as error:
                last = _describe(error)
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


# ------------------------------------------------------------ small helpers


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _error_text(payload: bytes | dict[str, Any]) -> str:
    """The server's error message, short, for a sentence of ours."""
    try:
        data = json.loads(payload) if isinstance(payload, bytes) else payload
        error = data.get("error", data) if isinstance(data, dict) else data
        message = error.get("message") if isinstance(error, dict) else error
        text = str(message).strip()
    except (ValueError, AttributeError):
        text = payload.decode(errors="replace").strip() if isinstance(payload, bytes) else str(payload)
    return f": {text[:200]}" if text else ""
