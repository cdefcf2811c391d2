"""Keeps the generation process running: spawns it, reads what it says, restarts it when it dies.

Two threads, so the web server's event loop never touches the pipe: the reader
receives the child's messages and hands them to the listener (``ProcessEngine``),
which dispatches them to the replies' queues; the sender writes requests, so a
child that stops reading (stuck, or dead with a full pipe) can never block the
event loop.

The child is started with the ``spawn`` method: forking a process whose torch
thread pools are running can deadlock the child, and ``spawn`` starts a fresh
interpreter. When it dies it is restarted after 1 s, then 2, 4... up to 30 s while
it keeps dying early; once a child has lived a minute the delay starts over.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from app.engine import engine_process
from app.engine.process_wire import EngineProcessConfig

log = logging.getLogger(__name__)

FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
STABLE_SECONDS = 60.0  # a child that lived this long died of something new: restart it quickly
REAP_SECONDS = 5.0


class ChildListener(Protocol):
    """What the supervisor tells the engine; every call comes from the reader thread."""

    def child_spawned(self, process: BaseProcess, conn: Connection) -> None: ...

    def child_message(self, message: tuple[Any, ...]) -> None: ...

    def child_ended(self, exitcode: int | None) -> bool:
        """The child's pipe closed; returns whether to start another."""
        ...


class ProcessSupervisor:
    """Spawns the generation process and restarts it with a backoff (see the module docstring)."""

    def __init__(
        self, config: EngineProcessConfig, listener: ChildListener, *,
        first_restart_delay: float = FIRST_RESTART_DELAY, max_restart_delay: float = MAX_RESTART_DELAY,
    ) -> None:
        self.config = config
        self.listener = listener
        self.first_restart_delay = first_restart_delay
        self.max_restart_delay = max_restart_delay
        self.restarts = 0
        self._context = multiprocessing.get_context("spawn")
        self._outgoing: queue.SimpleQueue[tuple[Connection, tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._reader: threading.Thread | None = None
        self._sender: threading.Thread | None = None

    def start(self) -> None:
        """Spawn the first child here (see ``_sigint_ignored_by_children``), then supervise it."""
        process, conn = self._spawn()
        self._sender = threading.Thread(target=self._send_loop, name="engine-process-sender", daemon=True)
        self._sender.start()
        self._reader = threading.Thread(
            target=self._supervise, args=(process, conn), name="engine-process-reader", daemon=True
        )
        self._reader.start()

    def send(self, conn: Connection, message: tuple[Any, ...]) -> None:
        """Queue ``message`` for the child behind ``conn``; dropped if that child is gone by then."""
        self._outgoing.put((conn, message))

    def stop_restarting(self) -> None:
        self._stopping.set()

    def join(self, timeout: float | None) -> bool:
        """Wait for the reader to end (the last child has exited); True if it did."""
        if self._reader is None:
            return True
        self._reader.join(timeout)
        if self._reader.is_alive():
            return False
        if self._sender is not None:
            self._outgoing.put(None)
            self._sender.join()
        return True

    # ------------------------------------------------------------ threads

    def _spawn(self) -> tuple[BaseProcess, Connection]:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=engine_process.main, args=(child_end, self.config), name="generation-process", daemon=True
        )
        with _sigint_ignored_by_children():
            process.start()
        # only the child holds its end now, so its death reads as end-of-file here
        child_end.close()
        self.listener.child_spawned(process, parent_end)
        return process, parent_end

    def _supervise(self, process: BaseProcess, conn: Connection) -> None:
        delay = self.first_restart_delay
        while True:
            spawned_at = time.monotonic()
            _read_until_closed(conn, self.listener)
            exitcode = _reap(process)
            # the connection is not closed here: the sender may be writing to it; dropping the
            # last reference closes it, and no other pipe can take its descriptor meanwhile
            del conn
            if not self.listener.child_ended(exitcode) or self._stopping.is_set():
                return
            if time.monotonic() - spawned_at >= STABLE_SECONDS:
                delay = self.first_restart_delay
            log.error(
                "the generation process stopped unexpectedly (%s); starting it again in %.1f s",
                describe_exit(exitcode), delay,
            )
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, self.max_restart_delay)
            self.restarts += 1
            process, conn = self._spawn()

    def _send_loop(self) -> None:
        while (item := self._outgoing.get()) is not None:
            conn, message = item
            with contextlib.suppress(OSError):  # that child is gone; the reader reports it
                conn.send(message)


def _read_until_closed(conn: Connection, listener: ChildListener) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        listener.child_message(message)


def _reap(process: BaseProcess) -> int | None:
    process.join(REAP_SECONDS)
    if process.is_alive():  # it closed its pipe but does not exit
        process.kill()
        process.join(REAP_SECONDS)
    return process.exitcode


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running after closing its pipe"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


@contextlib.contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """Start children with Ctrl-C ignored from their first instruction.

    The child ignores SIGINT itself, but only once it runs our code: importing torch
    first takes seconds, and a Ctrl-C then would print a traceback from it. An
    ignored signal stays ignored across ``exec``, so the parent ignores it for the
    few milliseconds of ``start()``. Only the main thread may change signal
    handlers: restarts, spawned by the reader thread, go without.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield  # (None: a handler set outside Python, which could not be put back)
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
