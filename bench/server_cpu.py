"""Where a server process spends its CPU over a window: per thread and per child process, from ``/proc``.

Issue 24 asks how much of a core the server's event loop uses while it serves a
crowd (if the loop saturates, every reply waits for it, whatever the engine can do)
and how much the engine's threads use. The event loop is the main thread (its tid
is the pid). Other threads are told apart by their kernel name (``comm``), but
CPython 3.11 does not pass thread names to the kernel, so every thread would read
"python": ``thread_naming_env`` makes the server name its threads after their
Python names, and threads a thread starts, such as the OpenMP team the engine's
matrix products run on, inherit its name. If the engine runs in a child process,
the child's CPU is read too: children are found through
``/proc/<pid>/task/*/children``, which works whether there are any or not.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# the kernel keeps 15 bytes of a thread's name; the engine's worker thread is "generation-worker"
KERNEL_NAME_LENGTH = 15
ENGINE_THREAD = "generation-worker"[:KERNEL_NAME_LENGTH]

# Imported by every Python process started with ``thread_naming_env``: Thread._bootstrap_inner
# runs first in each new Python thread, so the name is set before the thread starts anything.
NAMING_SITECUSTOMIZE = '''\
"""Written by bench/server_cpu.py: give each Python thread its name in the kernel too (/proc/.../comm)."""
import ctypes
import threading

_PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True)
_bootstrap_inner = threading.Thread._bootstrap_inner


def _named_bootstrap_inner(self):
    try:
        _libc.prctl(_PR_SET_NAME, self.name.encode()[:15], 0, 0, 0)
    except Exception:
        pass
    _bootstrap_inner(self)


threading.Thread._bootstrap_inner = _named_bootstrap_inner
'''


def thread_naming_env(folder: Path) -> dict[str, str]:
    """Environment for a server whose threads carry their Python names in ``/proc`` (nothing else changes)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(NAMING_SITECUSTOMIZE)
    inherited = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(folder), inherited] if inherited else [str(folder)])}


def cpu_seconds(stat_path: Path) -> float | None:
    """utime + stime of one ``stat`` file; None once the task or process is gone."""
    try:
        text = stat_path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def kernel_name(task: Path) -> str:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return (task / "comm").read_text().strip()
    return "?"


def child_pids(pid: int) -> list[int]:
    """Every process below ``pid`` (children of any of its threads, and theirs)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for child in (task / "children").read_text().split():
                found += [int(child), *child_pids(int(child))]
    return found


@dataclass(frozen=True)
class Thread:
    tid: int
    name: str
    seconds: float


@dataclass
class Snapshot:
    """CPU seconds so far of a process's threads, its children and itself, at one moment."""

    pid: int
    at: float
    threads: dict[int, Thread]
    children: dict[int, tuple[str, float]]  # pid: (name, CPU seconds of all its threads)
    process_seconds: float


def snapshot(pid: int) -> Snapshot:
    at = time.perf_counter()
    threads = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        seconds = cpu_seconds(task / "stat")
        if seconds is not None:
            threads[int(task.name)] = Thread(int(task.name), kernel_name(task), seconds)
    children = {}
    for child in child_pids(pid):
        seconds = cpu_seconds(Path(f"/proc/{child}/stat"))  # the process's line sums all its threads
        if seconds is not None:
            children[child] = (kernel_name(Path(f"/proc/{child}")), seconds)
    return Snapshot(pid, at, threads, children, cpu_seconds(Path(f"/proc/{pid}/stat")) or 0.0)


@dataclass
class CpuShares:
    """Shares of one core (1.0 = one core busy the whole window) between two snapshots."""

    wall: float
    event_loop: float
    engine_threads: float
    engine_thread_count: int
    other_threads: dict[str, float] = field(default_factory=dict)  # by kernel name
    children: dict[str, float] = field(default_factory=dict)  # "name (pid)": share
    process: float = 0.0

    @property
    def engine(self) -> float:
        """The engine's threads here plus every child process (where a separate engine process would run)."""
        return self.engine_threads + sum(self.children.values())

    def describe(self) -> str:
        others = ", ".join(f"{name} {share:.0%}" for name, share in
                           sorted(self.other_threads.items(), key=lambda item: -item[1]) if share >= 0.005)
        children = ", ".join(f"{name} {share:.0%}" for name, share in self.children.items()) or "none"
        return (f"event loop {self.event_loop:.0%}, engine threads {self.engine_threads:.0%} "
                f"({self.engine_thread_count} named {ENGINE_THREAD}), other threads: {others or 'idle'}; "
                f"child processes: {children}; whole server process {self.process:.0%}")


def shares(before: Snapshot, after: Snapshot) -> CpuShares:
    """What each thread and child used between the snapshots (one that started in between counts from 0)."""
    wall = max(after.at - before.at, 1e-9)

    def used(thread: Thread) -> float:
        earlier = before.threads.get(thread.tid)
        return (thread.seconds - (earlier.seconds if earlier else 0.0)) / wall

    result = CpuShares(wall, 0.0, 0.0, 0, process=(after.process_seconds - before.process_seconds) / wall)
    others: dict[str, float] = defaultdict(float)
    for thread in after.threads.values():
        if thread.tid == after.pid:
            result.event_loop = used(thread)
        elif thread.name == ENGINE_THREAD:
            result.engine_threads += used(thread)
            result.engine_thread_count += 1
        else:
            others[thread.name] += used(thread)
    result.other_threads = dict(others)
    for child, (name, seconds) in after.children.items():
        earlier = before.children.get(child, (name, 0.0))[1]
        result.children[f"{name} ({child})"] = (seconds - earlier) / wall
    return result
