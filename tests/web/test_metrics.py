"""``/metrics``: the real server scraped like Prometheus would, and its counters following real replies."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.web.metrics import OFF, ServerMetrics, build_metrics_router
from app.web.resources import ServerResources
from tests.page_client import bubble_texts, client_for, send
from tests.web.conftest import METRICS_TOKEN, RATE_LIMIT

TOKEN = METRICS_TOKEN


@pytest.fixture(scope="module")
def server(team_lead_server):
    return team_lead_server


def scrape(server) -> dict[tuple[str, frozenset], float]:
    """One scrape, parsed by prometheus_client's own parser: {(sample name, labels): value}."""
    response = httpx.get(server.url + "metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(figures: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """The sum of the samples named so whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, found), value in figures.items() if sample == name and wanted <= found)


def test_metrics_are_off_without_a_configured_token():
    """No token configured: 404 with the sentence that says how to turn it on (whatever the request sends)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.include_router(build_metrics_router(ServerMetrics("m", ServerResources()), ""))
    with TestClient(app) as client:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
            response = client.get("/metrics", headers=headers)
            assert response.status_code == 404 and response.text == OFF


def test_a_scrape_needs_the_token(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
        response = httpx.get(server.url + "metrics", headers=headers, timeout=10)
        assert response.status_code == 401, headers
        assert "CHAT_METRICS_TOKEN" in response.text and "chat_replies" not in response.text
    figures = scrape(server)
    for name in ("chat_replies_running", "chat_replies_queued", "chat_batch_size", "chat_journal_entries_waiting",
                 "chat_prefix_cache_hits_total", "chat_prefix_cache_bytes", "chat_engine_up"):
        assert any(sample == name for sample, _ in figures), name
    assert total(figures, "chat_engine_up") == 1 and total(figures, "chat_journal_entries_waiting") == 0


def test_counters_move_as_replies_finish_stop_and_are_refused(server):
    before = scrape(server)
    alice = client_for(server, "alice")
    _, final = send(alice, "hello there", max_new_tokens=8)
    send(alice, "and again", final[2], max_new_tokens=8)

    bob = client_for(server, "bob")
    job = bob.submit("a long answer please", "", "", 1.0, 1.0, 1800, "", api_name="/send")
    for update in job:
        if update[2] and len(bubble_texts(update[0])[-1][1]) > 20:
            break
    job.cancel()  # the Stop button

    carol = client_for(server, "carol")
    for _ in range(RATE_LIMIT):
        send(carol, "quick one", max_new_tokens=2)
    _, refused = send(carol, "one too many", max_new_tokens=2)
    assert "slow down" in str(refused).lower()
    httpx.post(server.url + "login", data={"username": "alice", "password": "not her password"}, timeout=10)

    deadline = time.monotonic() + 20
    while True:  # the stopped reply is counted when it is stored, a moment after the cancel
        after = scrape(server)
        stopped = sum(total(after, "chat_replies_total", outcome=o) - total(before, "chat_replies_total", outcome=o)
                      for o in ("stopped", "disconnected"))
        if stopped >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.3)

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert stopped == 1
    assert moved("chat_replies_total", outcome="eos") + moved("chat_replies_total", outcome="length") == 2 + RATE_LIMIT
    assert moved("chat_replies_total", outcome="rate_limited") == 1
    assert moved("chat_replies_total", outcome="error") == 0
    assert moved("chat_time_to_first_token_seconds_count") == 3 + RATE_LIMIT
    assert moved("chat_time_to_first_token_seconds_sum") > 0
    assert moved("chat_output_tokens_total") > 20  # the stopped reply's tokens count too
    assert moved("chat_prompt_tokens_total") > 0
    assert moved("chat_engine_generated_tokens_total") >= moved("chat_output_tokens_total")
    assert moved("chat_logins_total", outcome="ok") == 3 and moved("chat_logins_total", outcome="failed") == 1
    assert total(after, "chat_replies_running") == 0
