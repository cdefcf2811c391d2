"""The limits a tester meets are the configured ones, not Gradio's defaults.

Fifty testers send at once to a one-slot engine while one long reply holds the
slot: with a queue of 100 every message is stored and reaches the engine (nobody
hears "busy"), while the page still loads and chats still open at once; with a
queue of 5, the five extra testers beyond it are told "busy" and keep their text.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from gradio_client import Client

from tests.support import ServerProcess, build_tiny_llama, running_server
from tests.test_server import PASSWORD, bubble_texts

TESTERS = 50


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_llama(tmp_path_factory.mktemp("limits-model")))


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
