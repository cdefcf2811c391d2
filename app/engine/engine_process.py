"""The generation process: the model and its ``Engine``, away from the web server's interpreter lock.

Served through the web app, the in-process engine made about a third of the tokens
per second it makes alone: the web process's event loop (Gradio's work per streamed
frame) holds the interpreter lock for ~44% of a core, and the engine's thread waits
for it between torch calls. Here the engine has an interpreter of its own; the web
process (``process_engine.ProcessEngine``) only sends requests and reads text.

The process loads the model exactly as the server does, builds an ``Engine`` and
relays: submits become ``engine.submit``, each reply's deltas (with their token ids)
go back coalesced per engine step, then its result; every ~100 ms, and whenever a
request arrives or ends, the engine's stats and each waiting request's position go
back too, so the web process answers those without asking.

It ignores Ctrl-C (a terminal sends it to both processes; the web process decides
how to shut down and sends ``STOP``), and exits at once when the web process's end
of the pipe closes: a killed web server leaves no orphan holding the model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from dataclasses import astuple
from multiprocessing.connection import Connection
from typing import Any

from tqdm import tqdm

from app.engine.batcher import Engine, EngineBusy, EngineStopped, InvalidPrompt, PromptTooLong
from app.engine.fast_linear import KernelsUnavailable, pack_linear_layers
from app.engine.loading import LoadedModel, ModelLoadError, load_model
from app.engine.params import SamplingParams
from app.engine.process_wire import (
    CANCEL,
    FAILED,
    LOADED,
    OUTPUT,
    READY,
    STATS,
    STOP,
    STOPPED,
    SUBMIT,
    EngineProcessConfig,
    result_fields,
)
from app.engine.streams import GenerationResult, GenerationStream

log = logging.getLogger(__name__)

STATS_PERIOD_SECONDS = 0.1


def main(conn: Connection, config: EngineProcessConfig) -> None:
    """The process's entry point (``multiprocessing``'s target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # progress bars (loading weights) lock with a thread lock: tqdm's default is a
    # multiprocessing semaphore, which the fast exit below would leave behind
    tqdm.set_lock(threading.RLock())
    asyncio.run(_serve(conn, config))
    # all is handed over; the interpreter's teardown with torch loaded takes seconds (3.7 s here)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def load_for_engine(config: EngineProcessConfig) -> LoadedModel:
    """The model as ``serve()`` loads it for the in-process engine: weights, then prepacked linears."""
    loaded = load_model(config.model, config.cache_dir, config.threads)
    if config.fast_kernels:
        packed = pack_linear_layers(loaded.model, config.kernels)
        log.info("%d linear layers on prepacked oneDNN kernels (%s)", packed, config.kernels)
    return loaded


async def _serve(conn: Connection, config: EngineProcessConfig) -> None:
    relay = _Relay(conn)
    # listening from the start: a STOP or a closed pipe must end the process even mid-load
    asyncio.get_running_loop().add_reader(conn.fileno(), relay.read_messages)
    try:
        loaded = await asyncio.to_thread(load_for_engine, config)
        engine = Engine(loaded, **config.engine_kwargs)
    except (ModelLoadError, KernelsUnavailable) as error:
        relay.send((FAILED, str(error)))
        return
    except Exception as error:  # anything else: the web process gets one sentence, the log the traceback
        log.exception("the generation process cannot load its model")
        relay.send((FAILED, f"cannot load model {config.model!r}: {error}"))
        return
    engine.start()
    relay.attach(engine)
    relay.send((LOADED, engine.vocab_size, engine.context_length))
    await engine.wait_ready()
    relay.send_stats(force=True)
    relay.send((READY,))
    ticker = asyncio.create_task(relay.report_stats_periodically())
    await relay.finished.wait()
    ticker.cancel()


def _exit_now() -> None:
    """The web process is gone or wants us gone before a model exists: nothing to hand back."""
    os._exit(0)


class _Relay:
    """Carries requests from the pipe to the engine and their output back."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.engine: Engine | None = None
        self.finished = asyncio.Event()
        self._streams: dict[int, GenerationStream] = {}
        self._queued: dict[int, GenerationStream] = {}  # not yet admitted: their positions are reported
        self._tasks: set[asyncio.Task[None]] = set()
        self._early_cancels: set[int] = set()
        self._last_seen = 0  # the newest request the engine has taken (or refused)
        self._deltas: list[tuple[int, list[int], str]] = []
        self._results: list[tuple[int, tuple[Any, ...]]] = []
        self._flush_scheduled = False
        self._last_stats: tuple[Any, ...] | None = None
        self._stats_scheduled = False

    def attach(self, engine: Engine) -> None:
        self.engine = engine

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self.conn.send(message)
        except OSError:  # the web process is gone
            _exit_now()

    # ------------------------------------------------------------ from the web process

    def read_messages(self) -> None:
        try:
            while self.conn.poll():
                self._handle(self.conn.recv())
        except (EOFError, OSError):
            _exit_now()

    def _handle(self, message: tuple[Any, ...]) -> None:
        tag = message[0]
        if tag == SUBMIT:
            _, request_id, prompt_ids, params = message
            self._spawn(self._relay(request_id, prompt_ids, SamplingParams(**params)))
        elif tag == CANCEL:
            stream = self._streams.get(message[1])
            if stream is not None:
                stream.cancel()
            elif message[1] > self._last_seen:  # its submit's task has not run yet
                self._early_cancels.add(message[1])
        elif tag == STOP:
            if self.engine is None:
                _exit_now()
            self._spawn(self._stop(message[1]))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, request_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        assert self.engine is not None
        try:
            stream = await self.engine.submit(prompt_ids, params)
        except (EngineBusy, EngineStopped, InvalidPrompt, PromptTooLong) as error:
            # the web process checks all of these first; this is the rare race with a dying worker
            self._last_seen = request_id
            self._result(request_id, _refusal(len(prompt_ids), str(error)))
            return
        self._last_seen = request_id
        self._streams[request_id] = stream
        self._queued[request_id] = stream
        if request_id in self._early_cancels:
            self._early_cancels.discard(request_id)
            stream.cancel()
        self._stats_soon()
        # the engine's own record of the ids, read as deltas arrive, so a reply cut short by a
        # crash of this process still has the ids that were shown (the result brings them all)
        generated: list[int] = stream._request.generated  # the batcher's _Request, read-only here
        sent = 0
        try:
            async for delta in stream:
                if not sent:  # it left the queue: the web process hears that before its text
                    self._stats_soon()
                ids = generated[sent:]
                sent += len(ids)
                self._deltas.append((request_id, ids, delta))
                self._flush_soon()
        finally:
            del self._streams[request_id]
            self._queued.pop(request_id, None)
        assert stream.result is not None
        self._result(request_id, stream.result)

    def _result(self, request_id: int, result: GenerationResult) -> None:
        self._results.append((request_id, result_fields(result)))
        self._flush_soon()
        self._stats_soon()

    async def _stop(self, grace_seconds: float) -> None:
        assert self.engine is not None
        await self.engine.stop(grace_seconds)
        relays = [task for task in self._tasks if task is not asyncio.current_task()]
        await asyncio.gather(*relays, return_exceptions=True)  # every result is handed over
        self._flush()
        self.send_stats(force=True)
        self.send((STOPPED,))
        self.finished.set()

    # ------------------------------------------------------------ to the web process

    def _flush_soon(self) -> None:
        """Send after the relays woken by this engine step have run: one message per step."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._results:  # as in the engine: its stats have lost the rows before their results arrive
            self.send_stats()
        if self._deltas or self._results:
            deltas, results = self._deltas, self._results
            self._deltas, self._results = [], []
            self.send((OUTPUT, deltas, results))

    def _stats_soon(self) -> None:
        if not self._stats_scheduled:
            self._stats_scheduled = True
            asyncio.get_running_loop().call_soon(self.send_stats)

    def send_stats(self, force: bool = False) -> None:
        """The engine's stats and the waiting requests' positions, when they changed."""
        self._stats_scheduled = False
        assert self.engine is not None
        positions = []
        for request_id, stream in list(self._queued.items()):
            position = stream.queue_position
            if position is None:  # admitted (or ended): it never waits again
                del self._queued[request_id]
            else:
                positions.append((request_id, position))
        report = (astuple(self.engine.stats()), self._last_seen, positions)
        if force or report != self._last_stats:
            self._last_stats = report
            self.send((STATS, *report))

    async def report_stats_periodically(self) -> None:
        while True:
            await asyncio.sleep(STATS_PERIOD_SECONDS)
            self.send_stats()


def _refusal(prompt_tokens: int, sentence: str) -> GenerationResult:
    return GenerationResult(
        token_ids=[], text="", finish_reason="error", prompt_tokens=prompt_tokens, completion_tokens=0,
        time_to_first_token=None, total_time=0.0, error=sentence,
    )
