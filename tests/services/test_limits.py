"""The limits a tester meets: the shared limiter itself, and the server's configured queue.

The limiter (app/services/limits.py) first, with an injected clock instead of sleeps:
every per-key table stays within its cap however many keys a client invents, and a
moving window refuses, says how long to wait, and lets the key in again after that.

Then the queue is the configured one, not Gradio's default.
Fifty testers send at once to a one-slot engine while one long reply holds the
slot: with a queue of 100 every message is stored and reaches the engine (nobody
hears "busy"), while the page still loads and chats still open at once; with a
queue of 5, the five extra testers beyond it are told "busy" and keep their text.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from gradio_client import Client

from app.accounts.login_guard import LoginGuard
from app.services.errors import RateLimited
from app.services.limits import SEARCHES_PER_WINDOW, BoundedTable, MovingWindow, SearchGate, Slots
from app.web.auth_routes import SignupLimiter
from app.web.export_route import ExportGate, ExportRefused
from tests.models import SERVER_CONTEXT, build_tiny_llama
from tests.page_client import PASSWORD, bubble_texts
from tests.support import ServerProcess, running_server

TESTERS = 50


class Clock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bounded_table_never_exceeds_its_cap_and_forgets_the_least_recent_first():
    table: BoundedTable[str, int] = BoundedTable(capacity=1_000)
    for index in range(100_000):  # keys a client invents, one after another
        table.get_or_add(f"key{index}", lambda index=index: index)
        assert len(table) <= 1_000
    assert len(table) == 1_000 and "key99999" in table and "key98999" not in table

    table.get("key99000")  # looking does not keep a key
    table.get_or_add("key99001", lambda: -1)  # using it does (and keeps its value)
    assert table.get("key99001") == 99001
    table.put("new", 0)
    assert "key99000" not in table and "key99001" in table and len(table) == 1_000


def test_a_moving_window_refuses_says_how_long_to_wait_and_lets_in_again():
    clock = Clock()
    window = MovingWindow(3, 10.0, clock=clock)
    for _ in range(3):
        assert window.allow("alice")
        clock.now += 4  # events at 0, 4, 8
    clock.now -= 3  # 9 s after the first
    assert not window.allow("alice") and window.retry_after("alice") == 1
    assert window.allow("bob")  # another key is not affected
    clock.now += 0.5
    assert window.retry_after("alice") == 1  # whole seconds, rounded up
    clock.now += 0.5  # the first event is exactly 10 s old: no longer counted
    assert window.retry_after("alice") == 0 and window.allow("alice")
    assert window.retry_after("alice") == 4  # moving: the event at 4 s leaves next
    clock.now += 60
    assert window.retry_after("alice") == 0


def test_a_moving_window_keeps_at_most_its_capacity_of_keys():
    clock = Clock()
    window = MovingWindow(5, 600.0, capacity=500, clock=clock)
    for index in range(100_000):
        assert window.allow(f"10.{index // 65536}.{index // 256 % 256}.{index % 256}")
    assert window.tracked_keys() == 500


async def test_a_search_gate_and_a_login_guard_keep_their_tables_bounded():
    clock = Clock()
    guard = LoginGuard(clock=clock, capacity=300)
    for index in range(100_000):
        guard.failed(f"name{index}", f"address{index}")
    assert guard.tracked_keys() <= 600

    gate = SearchGate(capacity=300, clock=clock)  # its per-user tables had no cap before
    for index in range(20_000):
        async with gate.turn(f"user{index}"):
            pass
    assert gate.tracked_keys() <= 600


async def test_searches_recover_when_the_window_moves_on():
    clock = Clock()
    gate = SearchGate(clock=clock)
    for _ in range(SEARCHES_PER_WINDOW):
        async with gate.turn("alice"):
            pass
    with pytest.raises(RateLimited, match="Too many searches"):
        async with gate.turn("alice"):
            pass
    clock.now += 10.0
    async with gate.turn("alice"):
        pass


async def test_exports_and_sign_ups_say_when_to_come_back():
    clock = Clock()
    gate = ExportGate(limit=2, window=60.0, clock=clock)
    for _ in range(2):
        async with gate.turn("alice"):
            clock.now += 10
    with pytest.raises(ExportRefused, match="try again in 40 seconds") as refused:
        async with gate.turn("alice"):
            pass
    assert refused.value.retry_after == 40
    clock.now += 40
    async with gate.turn("alice"):
        pass

    signups = SignupLimiter(limit=1, window=600.0, clock=clock)
    assert signups.retry_after("10.0.0.1") == 0
    signups.hit("10.0.0.1")
    clock.now += 0.25
    assert signups.retry_after("10.0.0.1") == 600  # 599.75 s: rounded up for Retry-After
    clock.now += 600
    assert signups.retry_after("10.0.0.1") == 0


async def test_slots_refuse_beyond_their_line_and_after_their_longest_wait():
    async def hold(slots: Slots, release: asyncio.Event) -> None:
        async with slots.turn(RuntimeError("no turn")):
            await release.wait()

    line, release = Slots(1, max_waiting=1), asyncio.Event()
    holder, waiter = asyncio.create_task(hold(line, release)), asyncio.create_task(hold(line, release))
    await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError, match="no turn"):  # a second waiter is refused at once
        await hold(line, release)
    release.set()
    await asyncio.gather(holder, waiter)
    assert line.waiting == 0

    slot, release = Slots(1, wait_seconds=0.05), asyncio.Event()
    holder = asyncio.create_task(hold(slot, release))
    await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError, match="no turn"):  # waited its longest
        await hold(slot, release)
    release.set()
    await holder
    await hold(slot, release)  # free again


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_llama(tmp_path_factory.mktemp("limits-model"), max_positions=SERVER_CONTEXT))


def join_all(server: ServerProcess, names: list[str]) -> dict[str, Client]:
    def join(name: str) -> Client:
        created = httpx.post(server.url + "signup", data={"username": name, "password": PASSWORD})
        assert created.status_code == 303, created.text
        return Client(server.url, auth=(name, PASSWORD), verbose=False)

    with ThreadPoolExecutor(8) as pool:
        return dict(zip(names, pool.map(join, names), strict=True))


def engine_report(server: ServerProcess) -> dict[str, Any]:
    return httpx.get(server.url + "healthz", timeout=30).json()["engine"]


def hold_the_only_slot(client: Client) -> Any:
    """A long reply that keeps the one-slot engine busy until it is stopped."""
    job = client.submit("a very long reply", "", "", 1.0, 1.0, 1990, "", api_name="/send")
    deadline = time.monotonic() + 30
    while not streaming(job):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return job


def streaming(job: Any) -> bool:
    outputs = job.outputs()
    return bool(outputs) and len(bubble_texts(outputs[-1][0])[-1][1]) > 3


def test_fifty_testers_on_a_one_slot_engine_all_reach_it_and_pages_stay_quick(tmp_path, tiny_model):
    env = {"CHAT_MAX_BATCH_SIZE": "1", "CHAT_MAX_QUEUE": "100", "CHAT_SIGNUP": "open", "CHAT_MAX_NEW_TOKENS": "2000"}
    with running_server(tmp_path, tiny_model, **env) as server:
        names = [f"tester{i}" for i in range(TESTERS)]
        clients = join_all(server, ["holder", "observer", *names])
        holder = hold_the_only_slot(clients["holder"])
        started = time.monotonic()
        jobs = {name: clients[name].submit(f"short reply for {name}", "", "", 0.7, 0.9, 2, "", api_name="/send")
                for name in names}
        acknowledged: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while len(acknowledged) < TESTERS and not holder.done() and time.monotonic() < deadline:
            for name, job in jobs.items():
                if name not in acknowledged and any(update[2] for update in job.outputs()):
                    acknowledged[name] = time.monotonic() - started
            time.sleep(0.05)
        report = engine_report(server)
        assert len(acknowledged) == TESTERS and not holder.done(), (
            f"only {len(acknowledged)} of {TESTERS} messages were stored while one reply held the engine: {report}"
        )
        assert report["running"] == 1 and report["waiting"] == TESTERS, report

        # the slot is still taken by the long reply: the page and the chats must not wait for it
        for call in ({"api_name": "/load"}, {"api_name": "/open"}):
            began = time.monotonic()
            args = (jobs[names[0]].outputs()[-1][2],) if call["api_name"] == "/open" else ()
            clients[names[0]].predict(*args, **call)
            assert time.monotonic() - began < 5, call

        holder.cancel()  # Stop: the queue drains
        finals = {name: job.result() for name, job in jobs.items()}
        # a page that opened another view mid-reply gets no status update for this one (see app/web/page/page_views.py)
        busy = [name for name, final in finals.items() if isinstance(final[3], str) and final[3]]
        assert busy == [], [finals[name][3] for name in busy]
        waits = sorted(acknowledged.values())
        print(f"\n{TESTERS} testers: message stored after p50 {statistics.median(waits):.2f} s, "
              f"max {waits[-1]:.2f} s; all {TESTERS} waited in the engine at once")


def test_beyond_a_queue_of_five_testers_are_told_busy_and_keep_their_text(tmp_path, tiny_model):
    env = {"CHAT_MAX_BATCH_SIZE": "1", "CHAT_MAX_QUEUE": "5", "CHAT_SIGNUP": "open", "CHAT_MAX_NEW_TOKENS": "2000"}
    with running_server(tmp_path, tiny_model, **env) as server:
        names = [f"tester{i}" for i in range(10)]
        clients = join_all(server, ["holder", *names])
        holder = hold_the_only_slot(clients["holder"])
        jobs = {name: clients[name].submit(f"short reply for {name}", "", "", 0.7, 0.9, 2, "", api_name="/send")
                for name in names}
        deadline = time.monotonic() + 60
        while not (sum(job.done() for job in jobs.values()) == 5 and engine_report(server)["waiting"] == 5):
            assert time.monotonic() < deadline, engine_report(server)
            time.sleep(0.1)
        holder.cancel()
        finals = {name: job.result() for name, job in jobs.items()}
        busy = {name for name, final in finals.items() if "busy" in final[3].lower()}
        assert len(busy) == 5
        for name in busy:
            assert finals[name][1] == f"short reply for {name}"  # the typed text is handed back
        assert all(finals[name][3] == "" for name in set(names) - busy)
