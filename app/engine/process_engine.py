"""The in-process engine's surface, with the engine itself in a process of its own.

Served through the web app, the ``Engine`` thread made ~35% of the tokens per second
it makes alone: it shares the interpreter lock with the web server's event loop,
which spends ~44% of a core on Gradio's work per streamed frame. ``ProcessEngine``
runs the model and its ``Engine`` in a child process (``engine_process``) and is a
drop-in for ``Engine`` as the web app uses it: ``start``, ``wait_ready``, ``ready``,
``submit`` -> ``GenerationStream``, ``stats``, ``stop`` and the same refusals.

This side does as little per token as possible: the reader thread unpickles one
message per engine step and hands all its deltas to the event loop in one call.
Refusals are decided here, at once: the prompt is checked against the vocabulary
and context the child reported when it loaded, and "busy" against the child's
latest report plus the requests sent since. Stats and queue positions are read off
that report (sent every ~100 ms and on change), never asked of the child.

If the child dies, every reply it held ends with ``finish_reason="error"`` and the
sentence ``PROCESS_DIED`` (keeping the ids and text it had shown), ``stats().alive``
is False and ``submit`` says the engine is restarting, until the supervisor's new
child is ready (see ``process_supervisor`` for the backoff).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from app.engine.batcher import Engine
from app.engine.contract import (
    ChatEngine,
    EngineHealth,
    EngineStats,
    EngineStopped,
    checked_prompt,
    embedded_engine_report,
)
from app.engine.loading import ModelLoadError
from app.engine.params import SamplingParams
from app.engine.process_replies import ChildReport, ProcessRequest, ReplyTable
from app.engine.process_supervisor import (
    FIRST_RESTART_DELAY,
    MAX_RESTART_DELAY,
    ProcessSupervisor,
    describe_exit,
)
from app.engine.process_wire import (
    CANCEL,
    FAILED,
    LOADED,
    OUTPUT,
    PROCESS_DIED,
    READY,
    STATS,
    STOP,
    SUBMIT,
    EngineProcessConfig,
)
from app.engine.streams import GenerationStream

log = logging.getLogger(__name__)

# after a stop's grace period, how long the child may take to end its replies and exit
STOP_MARGIN_SECONDS = 15.0
_ENGINE_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(Engine.__init__).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


class EngineSettings(Protocol):
    """The server settings the generation process is built from."""

    model: str
    cache_dir: Any
    threads: int
    fast_kernels: bool
    kernels: str
    max_batch_size: int
    max_queue: int
    prefill_chunk: int
    prefill_share: float
    kv_cache_mb: float
    kv_reserve_tokens: int


def engine_process_config(settings: EngineSettings) -> EngineProcessConfig:
    """What ``serve()`` passes to ``load_model`` and ``build_engine()`` to ``Engine`` today."""
    return EngineProcessConfig(
        model=settings.model,
        cache_dir=settings.cache_dir,
        threads=settings.threads,
        fast_kernels=settings.fast_kernels,
        kernels=settings.kernels,
        engine_kwargs={
            "max_batch_size": settings.max_batch_size,
            "max_queue": settings.max_queue,
            "prefill_chunk": settings.prefill_chunk,
            "prefill_share": settings.prefill_share,
            "prefix_cache_mb": settings.kv_cache_mb,
            "kv_reserve_tokens": settings.kv_reserve_tokens,
        },
    )


class ProcessEngine(ChatEngine):
    """The generation engine in a child process, behind the same contract as the in-thread ``Engine``."""

    def __init__(
        self, config: EngineProcessConfig, *,
        first_restart_delay: float = FIRST_RESTART_DELAY, max_restart_delay: float = MAX_RESTART_DELAY,
    ) -> None:
        options = {**_ENGINE_DEFAULTS, **config.engine_kwargs}
        if options["max_batch_size"] < 1 or options["max_queue"] < 0:
            raise ValueError("max_batch_size must be >= 1 and max_queue >= 0")
        self.config = config
        self.max_batch_size: int = options["max_batch_size"]
        self.max_queue: int = options["max_queue"]
        self.vocab_size: int | None = None  # both reported by the child once it has the model
        self.context_length: int | None = None
        self._state = threading.Condition()
        self._replies = ReplyTable()
        self._report = ChildReport.nothing_yet(self.max_batch_size, self.max_queue, 0)
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._up = False  # the child has its model and takes requests
        self._ready = False  # ... and has warmed up
        self._ever_ready = False
        self._load_error: str | None = None
        self._accepting = True
        self._stopping = False
        self._earlier_children = (0, 0)  # (steps, generated tokens) of children that died
        self._supervisor = ProcessSupervisor(
            config, self, first_restart_delay=first_restart_delay, max_restart_delay=max_restart_delay
        )
        self._started = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._supervisor.start()

    async def wait_ready(self, max_seconds: float | None = None) -> bool:
        """Wait until the child has warmed up (True) or ``max_seconds`` pass (False).

        Raises ``ModelLoadError`` (the child's sentence) if the model cannot be loaded.
        """
        return await asyncio.to_thread(self.wait_ready_blocking, max_seconds)

    def wait_ready_blocking(self, max_seconds: float | None = None) -> bool:
        """``wait_ready`` for synchronous callers (``serve()`` loads the model before uvicorn starts)."""
        with self._state:
            self._state.wait_for(lambda: self._ready or self._stopping or self._failed_to_load(), max_seconds)
            if self._failed_to_load():
                raise ModelLoadError(self._load_error)
            return self._ready

    def _failed_to_load(self) -> bool:
        return self._load_error is not None and not self._ever_ready

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def restarts(self) -> int:
        return self._supervisor.restarts

    @property
    def pid(self) -> int | None:
        """The generation process's id while one runs (for operators, and tests that kill it)."""
        process = self._process
        return None if process is None else process.pid

    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop taking requests; let running ones finish for ``grace_seconds``, cancel the rest."""
        with self._state:
            self._accepting = False
            self._stopping = True
            conn = self._conn
            self._state.notify_all()
        if not self._started:
            return
        self._supervisor.stop_restarting()
        if conn is not None:
            self._supervisor.send(conn, (STOP, grace_seconds))
        if not await asyncio.to_thread(self._supervisor.join, grace_seconds + STOP_MARGIN_SECONDS):
            log.warning("the generation process did not stop in time: killing it")
            with self._state:
                process = self._process
            if process is not None:
                process.kill()
            await asyncio.to_thread(self._supervisor.join, None)

    # ------------------------------------------------------------ requests

    async def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> GenerationStream:
        """Send a generation to the child; raises at once if it can never run or the queue is full."""
        if not isinstance(params, SamplingParams):
            raise TypeError("params must be a SamplingParams")
        if self.vocab_size is None or self.context_length is None:
            raise EngineStopped(self._not_running_reason())
        prompt = checked_prompt(prompt_ids, params, self.vocab_size, self.context_length)
        with self._state:  # held while the request is added, so a dying child's end_all cannot miss it
            if not (self._accepting and self._up and self._report.stats.alive) or self._conn is None:
                raise EngineStopped(self._not_running_reason())
            request = self._replies.add(self._report, len(prompt), self.max_queue)
            conn = self._conn
        self._supervisor.send(conn, (SUBMIT, request.request_id, prompt, params.to_dict()))
        return GenerationStream(self, request)

    def _not_running_reason(self) -> str:
        if not self._accepting or (self._up and not self._report.stats.alive):
            return "the generation engine is not running"
        if not self._ever_ready:
            return "the generation engine is starting"
        return "the generation process is restarting after it stopped unexpectedly"

    def cancel_request(self, request: ProcessRequest) -> None:
        if self._replies.claim_cancel(request):
            conn = self._conn
            if conn is not None:
                self._supervisor.send(conn, (CANCEL, request.request_id))

    def queue_position_of(self, request: ProcessRequest) -> int | None:
        return self._replies.position(request, self._report)

    def stats(self) -> EngineStats:
        report = self._report
        unseen = self._replies.unseen(report)
        with self._state:
            alive = self._ready and report.stats.alive
            accepting = self._accepting and self._up and report.stats.accepting
            steps, tokens = self._earlier_children
        return replace(
            report.stats, waiting=report.stats.waiting + unseen, alive=alive, accepting=accepting,
            steps=steps + report.stats.steps, generated_tokens=tokens + report.stats.generated_tokens,
        )

    async def health_report(self) -> EngineHealth:
        """Healthy while a child is up and ready; ``/healthz`` also shows how often one was restarted."""
        stats = self.stats()
        return EngineHealth(stats.alive, {**embedded_engine_report(stats, self.ready), "restarts": self.restarts})

    # ------------------------------------------------------------ the supervisor's reader thread

    def child_spawned(self, process: BaseProcess, conn: Connection) -> None:
        with self._state:
            self._process, self._conn = process, conn
            stopping = self._stopping
        if stopping:  # stop() came while this one was being started
            self._supervisor.send(conn, (STOP, 0.0))

    def child_message(self, message: tuple[Any, ...]) -> None:
        tag = message[0]
        if tag == OUTPUT:
            self._replies.deliver(message[1], message[2])
        elif tag == STATS:
            self._report = ChildReport.from_message(*message[1:])
        elif tag == LOADED:
            with self._state:
                self.vocab_size, self.context_length = message[1], message[2]
                self._up = True
        elif tag == READY:
            with self._state:
                self._ready = self._ever_ready = True
                self._load_error = None
                self._state.notify_all()
        elif tag == FAILED:
            if self._ever_ready:  # a restart: the first start's error is the server's to print
                log.error("the generation process cannot load the model: %s", message[1])
            with self._state:
                self._load_error = message[1]
                self._state.notify_all()

    def child_ended(self, exitcode: int | None) -> bool:
        """End the replies the child held; returns whether the supervisor should start another."""
        with self._state:
            stats = self._report.stats
            steps, tokens = self._earlier_children
            self._earlier_children = (steps + stats.steps, tokens + stats.generated_tokens)
            self._report = ChildReport.nothing_yet(self.max_batch_size, self.max_queue, self._replies.last_id)
            self._up = self._ready = False
            self._process = self._conn = None
            stopping = self._stopping
            if not self._ever_ready and self._load_error is None and not stopping:
                # e.g. killed for want of memory while loading: a restart would only do it again
                self._load_error = f"the generation process stopped while loading the model ({describe_exit(exitcode)})"
            self._state.notify_all()
        if stopping:
            self._replies.end_all("cancelled", None)
        else:
            self._replies.end_all("error", PROCESS_DIED)
        return not stopping and not self._failed_to_load()

