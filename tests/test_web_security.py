"""Accounts, logins and abuse, tried against the real server the way an attacker would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from app.login_guard import (
    FREE_FAILURES_PER_ADDRESS,
    FREE_FAILURES_PER_PAIR,
    MAX_CONCURRENT_HASHES,
    MAX_WAITING_HASHES,
    HashingBusy,
    LoginGuard,
    Throttled,
)
from tests.support import PYTHON, ROOT, add_user, api_client, build_tiny_llama, login_cookies, running_server

PASSWORD = "password-123"
ELSEWHERE = "http://127.0.0.1:9"  # another port of the same host: same site, other origin


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = build_tiny_llama(tmp_path_factory.mktemp("security-model"))
    data = tmp_path_factory.mktemp("security-data")
    with running_server(data, str(model)) as process:
        for name in ("alice", "bob", "erin"):
            add_user(data, name, PASSWORD)
        yield process


def users_cli(server, *args: str, stdin: str = "") -> None:
    environment = {**os.environ, "CHAT_DATA_DIR": str(server.data_dir)}
    environment.pop("CHAT_DATABASE_URL", None)
    subprocess.run([PYTHON, "-m", "app", "users", *args], cwd=ROOT, env=environment, input=stdin, text=True,
                   check=True, capture_output=True)


def whoami(server, cookies) -> str | None:
    """Who the server takes the holder of ``cookies`` for (None: nobody)."""
    return httpx.get(server.url + "gradio_api/user", cookies=cookies).json()


def from_address(address: str) -> httpx.Client:
    """A client whose connections come from another loopback address: another machine, to the server."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def chat_titles(client: Client) -> list[str]:
    return [label.rsplit(" · ", 1)[0] for label, _ in client.predict(api_name="/load")[1]["choices"]]  # "title · when"


def test_set_password_and_remove_end_that_users_logins(server):
    add_user(server.data_dir, "dave", PASSWORD)
    laptop, phone = login_cookies(server.url, "dave", PASSWORD), login_cookies(server.url, "dave", PASSWORD)
    assert whoami(server, laptop) == whoami(server, phone) == "dave"

    users_cli(server, "set-password", "dave", "--password-stdin", stdin="a-new-password-456\n")
    assert whoami(server, laptop) is None and whoami(server, phone) is None
    assert httpx.get(server.url, cookies=laptop).headers["location"].startswith("/login")

    current = login_cookies(server.url, "dave", "a-new-password-456")
    old_dave = Client(server.url, httpx_kwargs={"cookies": dict(current)}, verbose=False)
    old_dave.predict("old dave's secret", "", "", 0.7, 0.9, 4, "", api_name="/send")
    users_cli(server, "remove", "dave")
    assert whoami(server, current) is None

    add_user(server.data_dir, "dave", PASSWORD)  # somebody new under the same name
    new_dave = api_client(server.url, "dave", PASSWORD)
    new_dave.predict("new dave's chat", "", "", 0.7, 0.9, 4, "", api_name="/send")
    assert whoami(server, current) is None  # the old login does not pass to the new owner
    with pytest.raises(Exception):  # noqa: B017 (gradio_client raises different types per failure)
        Client(server.url, httpx_kwargs={"cookies": dict(current)}, verbose=False).predict(api_name="/load")
    assert chat_titles(new_dave) == ["new dave's chat"]


def test_logout_password_change_and_logout_everywhere(server):
    first, second, third = (login_cookies(server.url, "erin", PASSWORD) for _ in range(3))
    assert httpx.post(server.url + "logout", cookies=first).status_code == 303
    assert whoami(server, first) is None and whoami(server, second) == "erin"

    changed = httpx.post(server.url + "account/password", cookies=second,
                         data={"current": PASSWORD, "new": "erin-new-password"})
    assert changed.status_code == 200 and "Password changed" in changed.text
    assert whoami(server, second) == "erin" and whoami(server, third) is None  # the others ended

    assert httpx.post(server.url + "account/logout-everywhere", cookies=second).status_code == 303
    assert whoami(server, second) is None
    assert whoami(server, login_cookies(server.url, "erin", "erin-new-password")) == "erin"


def test_a_stranger_cannot_lock_a_user_out_and_spraying_slows_down(server):
    with from_address("127.0.0.2") as stranger:
        answers = [stranger.post(server.url + "login", data={"username": "bob", "password": f"guess-{i}"})
                   for i in range(FREE_FAILURES_PER_PAIR + 3)]
    assert [a.status_code for a in answers[:FREE_FAILURES_PER_PAIR]] == [401] * FREE_FAILURES_PER_PAIR
    assert "Incorrect username or password" in answers[0].text
    throttled = answers[-1]
    assert throttled.status_code == 429 and "Too many failed logins" in throttled.text
    assert int(throttled.headers["retry-after"]) >= 1

    # bob, from his own machine, is not locked out by the stranger
    assert whoami(server, login_cookies(server.url, "bob", PASSWORD)) == "bob"

    with from_address("127.0.0.3") as sprayer:  # one name after another from one address
        statuses = [sprayer.post(server.url + "login", data={"username": f"name{i}", "password": "guess"}).status_code
                    for i in range(FREE_FAILURES_PER_ADDRESS + 3)]
    assert statuses[:FREE_FAILURES_PER_ADDRESS] == [401] * FREE_FAILURES_PER_ADDRESS
    assert statuses[-1] == 429


def server_memory_mb(server) -> float:
    status = Path(f"/proc/{server.process.pid}/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_a_flood_of_huge_login_names_keeps_memory_bounded(server):
    huge = "x" * 1_000_000
    before = server_memory_mb(server)
    refused = 0
    for index in range(200):
        with httpx.Client(timeout=30) as client:
            try:
                answer = client.post(server.url + "login", data={"username": f"{index}{huge}", "password": "guess"})
            except httpx.TransportError:
                continue  # the server may close the connection before reading the megabyte
            refused += answer.status_code == 413
    grown = server_memory_mb(server) - before
    assert grown < 40, f"memory grew by {grown:.0f} MB over 200 logins with 1 MB names"  # was ~200 MB
    assert refused > 0  # refused as too large, before any parsing or hashing
    assert whoami(server, login_cookies(server.url, "alice", PASSWORD)) == "alice"


def test_failure_counters_stay_bounded_and_delays_grow_then_expire():
    now = [0.0]
    guard = LoginGuard(clock=lambda: now[0], capacity=1_000)
    for index in range(20_000):  # a spray of unique names from unique addresses
        guard.failed(f"name{index}", f"10.0.{index // 256}.{index % 256}")
    assert guard.tracked_keys() <= 2_000

    for _ in range(FREE_FAILURES_PER_PAIR):
        guard.check_allowed("carol", "10.9.9.9")
        guard.failed("carol", "10.9.9.9")
    with pytest.raises(Throttled) as first:
        guard.check_allowed("carol", "10.9.9.9")
    guard.check_allowed("carol", "10.8.8.8")  # carol herself, elsewhere: not affected
    now[0] += first.value.retry_after
    guard.check_allowed("carol", "10.9.9.9")
    guard.failed("carol", "10.9.9.9")
    with pytest.raises(Throttled) as second:
        guard.check_allowed("carol", "10.9.9.9")
    assert second.value.retry_after > first.value.retry_after  # each further failure waits longer


def test_other_origins_are_refused_and_the_page_cannot_be_framed(server):
    cookies = login_cookies(server.url, "alice", PASSWORD)
    elsewhere = {"Origin": ELSEWHERE}
    for method, path in [("GET", "config"), ("GET", "gradio_api/info"), ("GET", "gradio_api/token"),
                         ("POST", "gradio_api/queue/join"), ("POST", "login"), ("POST", "logout")]:
        answer = httpx.request(method, server.url + path, cookies=cookies, headers=elsewhere)
        assert answer.status_code == 403, (path, answer.status_code)
        assert "access-control-allow-origin" not in answer.headers and "Cross-origin" in answer.text
    preflight = httpx.options(server.url + "gradio_api/queue/join",
                              headers={**elsewhere, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    assert whoami(server, cookies) == "alice"  # the refused logout did nothing
    same_origin = httpx.get(server.url + "gradio_api/info", cookies=cookies,
                            headers={"Origin": server.url.rstrip("/")})
    assert same_origin.status_code == 200

    for path in ("", "login", "config"):
        answer = httpx.get(server.url + path, cookies=cookies)
        assert answer.headers["x-frame-options"] == "DENY"
        policy = answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "img-src 'self' data: blob:;" in policy
        assert "samesite=none" not in " ".join(answer.headers.get_list("set-cookie")).lower()
    login = httpx.post(server.url + "login", data={"username": "alice", "password": PASSWORD})
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert httpx.get(server.url + "gradio_api/token", cookies=cookies).json().get("token") is None


def test_uploads_are_refused(server):
    cookies = login_cookies(server.url, "alice", PASSWORD)
    started = time.monotonic()
    answer = httpx.post(server.url + "gradio_api/upload", cookies=cookies,
                        files={"files": ("big.bin", b"\0" * 2_000_000)})
    assert answer.status_code == 403 and "accepts no file uploads" in answer.text
    assert time.monotonic() - started < 10
    assert httpx.post(server.url + "gradio_api/upload", files={"files": ("a.txt", b"x")}).status_code == 403


async def test_password_hashes_run_one_at_a_time_and_a_flood_is_told_to_wait():
    guard = LoginGuard()
    active, most = [0], [0]

    def slow_hash() -> None:
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.02)
        active[0] -= 1

    outcomes = await asyncio.gather(*(guard.hash_in_turn(slow_hash) for _ in range(MAX_WAITING_HASHES + 8)),
                                    return_exceptions=True)
    busy = [o for o in outcomes if isinstance(o, HashingBusy)]
    assert most[0] == MAX_CONCURRENT_HASHES  # the model's threads keep the other core(s)
    assert busy and "Too many logins at once" in str(busy[0])
    assert len(outcomes) - len(busy) >= MAX_WAITING_HASHES
