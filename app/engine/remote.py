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

Here: admission, lifecycle and health. Reading one request's HTTP stream is
``remote_stream.ServerStreamMixin``; the start-up check is ``remote_probe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import httpx

from app.engine.contract import (
    NO_PREFIX_CACHE,
    ChatEngine,
    EngineBusy,
    EngineHealth,
    EngineStats,
    EngineStopped,
    checked_prompt,
)
from app.engine.detokenize import IncrementalDecoder
from app.engine.loading import LoadedModel
from app.engine.params import SamplingParams
from app.engine.remote_errors import RemoteEngineError, describe_error
from app.engine.remote_probe import PROBE_TEXT, RemoteInfo, probe_server
from app.engine.remote_protocols import WireProtocol, protocol_named
from app.engine.remote_stream import RemoteRequest, ServerStreamMixin
from app.engine.streams import GenerationStream

# Names importable from here before the start-up check and the errors had their own modules.
__all__ = ["PROBE_TEXT", "RemoteEngine", "RemoteEngineError", "RemoteInfo", "probe_server"]

log = logging.getLogger(__name__)

# How long submit() waits for the server's answer to a request it sends at once, so
# that a 429/503 or a dead server becomes "busy" before anything is shown.
HEADERS_WAIT_SECONDS = 5.0


class RemoteEngine(ServerStreamMixin, ChatEngine):
    """Sends generations to an inference server; the same ``ChatEngine`` as ``app.engine.Engine``."""

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
        self._waiting: deque[RemoteRequest] = deque()
        self._running: set[RemoteRequest] = set()
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
            if (await self._server_health())["status"] == "ok":
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.5)

    @property
    def ready(self) -> bool:
        return self._alive

    async def health_report(self) -> EngineHealth:
        """Healthy while the inference server says so; ``/healthz`` shows where it is and the load on it."""
        stats = self.stats()
        server = await self._server_health()
        report = {
            **server,
            "running": stats.running,
            "waiting": stats.waiting,
            "max_concurrency": stats.max_batch_size,
            "max_queue": stats.max_queue,
            "generated_tokens": stats.generated_tokens,
        }
        return EngineHealth(healthy=server["status"] == "ok", report=report)

    async def _server_health(self) -> dict[str, Any]:
        """The server's own health endpoint, asked now."""
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
            report["status"] = f"unreachable: {describe_error(error)}"
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
            prefix_cache=NO_PREFIX_CACHE,
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
        request = RemoteRequest(prompt, params, IncrementalDecoder(self.tokenizer))
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

    def cancel_request(self, request: RemoteRequest) -> None:
        task = request.task
        if task is not None and not task.done():
            task.cancel()  # leaves the ``async with`` of the HTTP stream: the connection closes

    def queue_position_of(self, request: RemoteRequest) -> int | None:
        try:
            return self._waiting.index(request)
        except ValueError:
            return None

    def _admit_waiting(self) -> None:
        while self._waiting and len(self._running) < self.max_batch_size:
            request = self._waiting.popleft()
            self._running.add(request)
            request.turn.set()

    async def _run(self, request: RemoteRequest) -> None:
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
