"""Testers driving the real app server, for the benchmarks that measure the app as served.

``bench/backends.py`` and ``bench/served.py`` both sign testers up over HTTP, log them
in with gradio_client and send one message each through the page's own ``/send`` API,
so what they time is what a tester's browser would wait for.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from tests.page_client import bubble_texts
from tests.support import ServerProcess, api_client

PASSWORD = "bench-password-123"
# the untimed first reply on a fresh server: first-request costs of every layer, not the work measured
WARM_UP_TEXT = "Say hello."
WARM_UP_TOKENS = 8


@dataclass
class Reply:
    """One user's reply as the client saw it and as the app stored it."""

    username: str
    ttft: float
    seconds: float
    tokens: int
    finish_reason: str


def sign_up(server: ServerProcess, username: str):
    """Sign up over HTTP as a new tester would, then log in with gradio_client."""
    response = httpx.post(server.url + "signup", data={"username": username, "password": PASSWORD}, timeout=30)
    if response.status_code != 303:
        raise RuntimeError(f"sign-up of {username} failed: {response.status_code} {response.text[:200]}")
    for attempt in range(3):  # gradio_client's login waits 5 s; scrypt on a loaded machine can take longer
        try:
            return api_client(server.url, username, PASSWORD)
        except httpx.TimeoutException:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def sign_up_all(server: ServerProcess, names: list[str]) -> list:
    """Every tester signed up and logged in; not timed, a few at a time, as testers arrive."""
    with ThreadPoolExecutor(4) as setup:
        return list(setup.map(lambda name: sign_up(server, name), names))


def ask(client, text: str, new_tokens: int, start: threading.Barrier | None = None):
    """Send one message, read the stream; returns when it was sent, first showed reply text, ended; the chat id."""
    if start is not None:
        start.wait()
    sent = time.perf_counter()
    first = None
    job = client.submit(text, "", "", 0.0, 1.0, new_tokens, "", api_name="/send")
    for update in job:
        bubbles = bubble_texts(update[0]) if update[0] else []
        if first is None and bubbles and bubbles[-1][0] == "assistant" and bubbles[-1][1] not in ("", "…"):
            first = time.perf_counter()
    done = time.perf_counter()
    final = job.result()
    if final[3]:
        raise RuntimeError(f"the app answered with a status instead of a reply: {final[3]}")
    return sent, first or done, done, final[2]


def warm_up(client) -> None:
    """One short reply, untimed: the first request's costs (and the system prompt's prefill) before the clock."""
    ask(client, WARM_UP_TEXT, WARM_UP_TOKENS)
