"""Issue 23: places where the login layer trusted the network or the page more than it should,
tried against the real server with real clients (httpx, raw sockets, gradio_client)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.accounts.login_guard import FREE_FAILURES_PER_ADDRESS, FREE_FAILURES_PER_DEVICE, FREE_FAILURES_PER_PAIR
from app.config import Settings, sqlite_url
from app.web.device_cookie import COOKIE_PREFIX
from app.web.login_gate import LOGINS_AT_ONCE_PER_ADDRESS, LOGINS_WAITING_PER_ADDRESS
from app.web.server import proxy_options
from tests.models import SERVER_CONTEXT, build_tiny_llama
from tests.page_client import stored
from tests.support import api_client, login_cookies, running_server

PASSWORD = "correct-horse-battery"
# the engine in a thread (no second process to start) and accounts made over HTTP (no CLI process each)
PROXY = "127.0.0.20"
FAST_START = {"CHAT_ENGINE_PROCESS": "0", "CHAT_SIGNUP": "open", "CHAT_FAST_KERNELS": "0", "CHAT_MAX_BATCH_SIZE": "4"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_llama(tmp_path_factory.mktemp("hardening-model"), max_positions=SERVER_CONTEXT))


@contextlib.contextmanager
def small_disk(path: Path, size: str = "8m") -> Iterator[bool]:
    """A tmpfs at ``path`` to fill later (True), or a plain folder when mounting is not allowed (False)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        for _ in range(20 if mounted else 0):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    """One server for every finding: a proxy named (127.0.0.20, not the loopback's usual 127.0.0.1) and its
    database on a small disk of its own, filled by the last test."""
    data = tmp_path_factory.mktemp("hardening-data")
    with small_disk(data / "disk") as mounted:
        env = {**FAST_START, "CHAT_TRUSTED_PROXIES": PROXY, "CHAT_DATABASE_URL": sqlite_url(data / "disk" / "chat.db")}
        with running_server(data, tiny_model, **env) as process:
            process.small_disk = data / "disk" if mounted else None
            for name in ("alice", "bob", "vera", "carl"):
                answer = httpx.post(process.url + "signup", data={"username": name, "password": PASSWORD})
                assert answer.status_code == 303
            yield process


def from_address(address: str, **options) -> httpx.Client:
    """A client whose connections come from another loopback address: another machine, to the server."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30, **options)


def login(client: httpx.Client, server, name: str, password: str, **headers: str) -> httpx.Response:
    return client.post(server.url + "login", data={"username": name, "password": password}, headers=headers)


def whoami(server, cookies) -> str | None:
    answer = httpx.get(server.url + "gradio_api/user", cookies=cookies)
    return answer.json() if answer.status_code == 200 else None


# 1. forwarded addresses ---------------------------------------------------------------------------

def test_forwarded_for_is_believed_only_from_a_named_proxy_never_by_default(server):
    assert proxy_options(Settings.from_env({})) == {"proxy_headers": False}  # the default names no proxy
    with httpx.Client(timeout=30) as loopback:  # 127.0.0.1, which uvicorn alone would trust
        statuses = [login(loopback, server, "nobody-1", "guess", **{"X-Forwarded-For": f"10.1.0.{i}"}).status_code
                    for i in range(FREE_FAILURES_PER_PAIR + 2)]
    # every attempt came from 127.0.0.1 whatever the header said: the name+address throttle caught it
    assert statuses[:FREE_FAILURES_PER_PAIR] == [401] * FREE_FAILURES_PER_PAIR
    assert statuses[-1] == 429
    with from_address(PROXY) as proxy:  # the named proxy, passing two clients on
        first = [login(proxy, server, "zed", "guess", **{"X-Forwarded-For": "10.2.0.1"}).status_code
                 for _ in range(FREE_FAILURES_PER_PAIR + 1)]
        second = login(proxy, server, "zed", "guess", **{"X-Forwarded-For": "10.2.0.2"}).status_code
    assert first[-1] == 429 and second == 401  # 10.2.0.2 is not slowed by 10.2.0.1's failures


# 2. device cookies ---------------------------------------------------------------------------------

def test_a_known_browser_logs_in_through_a_strangers_failures_from_its_address(server):
    with from_address("127.0.0.7") as browser, from_address("127.0.0.7") as stranger, \
            from_address("127.0.0.7") as newcomer:
        assert login(browser, server, "vera", PASSWORD).status_code == 200
        device = [name for name in browser.cookies if name.startswith(COOKIE_PREFIX)]
        assert len(device) == 1 and "vera" not in device[0]
        browser.post(server.url + "logout")  # logging out keeps the device cookie

        attempts = [login(stranger, server, "vera", f"guess-{i}") for i in range(FREE_FAILURES_PER_PAIR + 3)]
        assert attempts[-1].status_code == 429  # the stranger is slowed
        time.sleep(int(attempts[-1].headers["retry-after"]))
        assert login(stranger, server, "vera", "one more guess").status_code == 401  # now slowed for 4 s

        assert login(browser, server, "vera", PASSWORD).status_code == 200  # her own browser is not
        assert login(newcomer, server, "vera", PASSWORD).status_code == 429  # a browser never seen is
        forged = browser.cookies[device[0]][:-4] + "AAAA"
        assert login(newcomer, server, "vera", PASSWORD, Cookie=f"{device[0]}={forged}").status_code == 429
        assert login(browser, server, "carl", PASSWORD).status_code == 200  # her cookie says nothing of carl...
        assert login(stranger, server, "carl", "guess").status_code == 401

        # a stolen device cookie buys only a few guesses, then it is slowed like anyone
        for i in range(FREE_FAILURES_PER_DEVICE):
            assert login(browser, server, "vera", f"wrong-{i}").status_code == 401
        assert login(browser, server, "vera", PASSWORD).status_code == 429


# 3. a page's session belongs to its login ---------------------------------------------------------

def send_fn_index(server, cookies) -> int:
    config = httpx.get(server.url + "config", cookies=cookies).json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == "send")


def test_another_login_cannot_read_feed_or_end_a_page_by_its_session_hash(server):
    alice = api_client(server.url, "alice", PASSWORD)
    job = alice.submit("tell me a long story", "", "", 0.7, 0.9, 64, "", api_name="/send")
    deadline = time.monotonic() + 30
    while not alice.pending_event_ids and time.monotonic() < deadline:
        time.sleep(0.01)
    her_session, her_event = alice.session_hash, next(iter(alice.pending_event_ids))
    bob = login_cookies(server.url, "bob", PASSWORD)
    fn_index = send_fn_index(server, bob)

    with httpx.stream("GET", server.url + f"gradio_api/queue/data?session_hash={her_session}", cookies=bob,
                      timeout=10) as reading:
        assert reading.status_code == 403
        assert b"process_" not in reading.read()
    joined = httpx.post(server.url + "gradio_api/queue/join", cookies=bob, json={
        "data": ["bob's words in her page", "", "", 0.7, 0.9, 8, ""], "fn_index": fn_index,
        "session_hash": her_session, "event_data": None})
    assert joined.status_code == 403
    for session in (her_session, uuid.uuid4().hex):  # her page, or his own naming her event
        cancel = httpx.post(server.url + "gradio_api/cancel", cookies=bob,
                            json={"session_hash": session, "fn_index": fn_index, "event_id": her_event})
        assert cancel.status_code == 403
    assert httpx.post(server.url + f"gradio_api/stream/{her_event}/close", cookies=bob).status_code == 403
    with httpx.stream("GET", server.url + f"gradio_api/heartbeat/{her_session}", cookies=bob, timeout=10) as beat:
        assert beat.status_code == 403

    final = job.result(timeout=120)
    conversation = stored(server, "alice", final[2])
    assert [m.role for m in conversation.messages] == ["user", "assistant"]
    assert conversation.messages[0].content == "tell me a long story"
    assert conversation.messages[-1].finish_reason in ("length", "eos")
    alice.close()


def test_her_own_page_keeps_working_and_an_unknown_event_is_a_4xx(server):
    cookies = login_cookies(server.url, "carl", PASSWORD)
    session = uuid.uuid4().hex
    unknown = httpx.post(server.url + "gradio_api/queue/join", cookies=cookies,
                         json={"data": [], "fn_index": 99_999, "session_hash": session, "event_data": None})
    assert 400 <= unknown.status_code < 500, unknown.text
    fn_index = send_fn_index(server, cookies)
    joined = httpx.post(server.url + "gradio_api/queue/join", cookies=cookies, json={
        "data": ["hello", "", "", 0.7, 0.9, 4, ""], "fn_index": fn_index, "session_hash": session,
        "event_data": None})
    assert joined.status_code == 200, joined.text
    completed = None
    with httpx.stream("GET", server.url + f"gradio_api/queue/data?session_hash={session}", cookies=cookies,
                      timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                completed = json.loads(line[5:])
                break
    assert completed is not None and completed["success"] and completed["event_id"] == joined.json()["event_id"]


# 4. a login flood ----------------------------------------------------------------------------------

def raw_login_start(server, address: str, declared: int = 1000) -> socket.socket:
    """A login post that declares a body and sends only its start (what a slow or hostile client does)."""
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=5, source_address=(address, 0))
    connection.sendall(
        f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/x-www-form-urlencoded"
        f"\r\nContent-Length: {declared}\r\n\r\nusername=a".encode())
    return connection


def status_of(connection: socket.socket) -> int:
    """The status line's code, read without ever sending the rest of the body (a timeout fails the test)."""
    head = connection.recv(200).decode("latin-1")
    return int(head.split()[1])


def test_a_throttled_address_is_refused_before_its_form_is_read(server):
    with from_address("127.0.0.11") as known, from_address("127.0.0.11") as sprayer:
        assert login(known, server, "carl", PASSWORD).status_code == 200  # a teammate's browser, seen before
        attempts = [login(sprayer, server, f"sprayed-{i}", "guess") for i in range(FREE_FAILURES_PER_ADDRESS + 1)]
        assert attempts[-1].status_code == 429
        time.sleep(int(attempts[-1].headers["retry-after"]))
        assert login(sprayer, server, "sprayed-again", "guess").status_code == 401  # now slowed for 4 s
        connection = raw_login_start(server, "127.0.0.11")
        try:
            assert status_of(connection) == 429  # answered with most of the body never sent
        finally:
            connection.close()
        assert login(sprayer, server, "carl", PASSWORD).status_code == 429
        assert login(known, server, "carl", PASSWORD).status_code == 200  # the known browser still gets in


def test_concurrent_logins_from_one_address_are_capped(server):
    def team_member(_: int) -> int:
        with from_address("127.0.0.14") as client:
            return login(client, server, "bob", PASSWORD).status_code

    team = 2 * LOGINS_AT_ONCE_PER_ADDRESS
    with ThreadPoolExecutor(team) as pool:  # a team logging in at once behind one NAT: all get in
        assert list(pool.map(team_member, range(team))) == [200] * team

    # beyond the logins in flight and those waiting their turn, the address is told "busy"
    held = [raw_login_start(server, "127.0.0.12")
            for _ in range(LOGINS_AT_ONCE_PER_ADDRESS + LOGINS_WAITING_PER_ADDRESS)]
    time.sleep(0.5)  # let the server take them in
    try:
        extra = raw_login_start(server, "127.0.0.12")
        try:
            assert status_of(extra) == 503
        finally:
            extra.close()
        with from_address("127.0.0.13") as elsewhere:  # another address is not affected
            assert login(elsewhere, server, "bob", PASSWORD).status_code == 200
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.3)
    with from_address("127.0.0.12") as again:
        assert login(again, server, "bob", PASSWORD).status_code == 200


# 5. small ones -------------------------------------------------------------------------------------

def test_origin_less_cross_site_posts_cannot_end_sessions(server):
    cookies = login_cookies(server.url, "bob", PASSWORD)
    for path in ("logout", "account/logout-everywhere", "account/password"):
        answer = httpx.post(server.url + path, cookies=cookies, headers={"Sec-Fetch-Site": "cross-site"},
                            data={"current": PASSWORD, "new": "another-long-password"})
        assert answer.status_code == 403, path
        assert whoami(server, cookies) == "bob", path
    assert httpx.post(server.url + "logout", cookies=cookies, headers={"Sec-Fetch-Site": "same-origin"}
                      ).status_code == 303
    assert whoami(server, cookies) is None


# 6. the login page ---------------------------------------------------------------------------------

def test_the_login_page_wears_the_chat_pages_colours_light_and_dark_and_fits_a_phone(server):
    from tests.browser import ARTIFACTS, PHONE, browser_pages, contrast

    with browser_pages() as new_page:
        for scheme in ("light", "dark"):
            page = new_page(viewport=PHONE, color_scheme=scheme)
            page.goto(server.url + "login")
            page.get_by_label("Username").fill(f"nobody-{scheme}")
            page.get_by_label("Password").fill("not the password")
            page.get_by_role("button", name="Log in").click()
            page.locator(".err").wait_for()  # the refusal is on the page too, in its colour
            assert "Team Chat" in page.title() and page.locator(".brand").inner_text().endswith("Team Chat")
            ratios = {selector: contrast(page, selector)["ratio"]
                      for selector in (".brand", "h1", "label", "button[type=submit]", ".err")}
            assert min(ratios.values()) >= 4.5, (scheme, ratios)
            background = contrast(page, "h1")["bg"]
            assert (sum(background) < 100) == (scheme == "dark"), (scheme, background)  # it follows the system
            fits = page.evaluate("() => [document.scrollingElement.scrollWidth, innerWidth,"
                                 " parseFloat(getComputedStyle(document.querySelector('input')).fontSize)]")
            assert fits[0] <= fits[1] and fits[2] >= 16, fits  # no sideways scrolling, no zoom into the inputs
            page.screenshot(path=str(ARTIFACTS / f"login-phone-{scheme}.png"), full_page=True)
            page.context.close()


# last, as it fills the server's disk ---------------------------------------------------------------

def test_a_login_on_a_full_disk_says_writes_fail_not_that_the_database_is_unreachable(server):
    if server.small_disk is None:
        pytest.skip("cannot mount a tmpfs to fill (needs root)")
    filler = server.small_disk / "filler"
    try:
        with filler.open("wb") as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        answer = httpx.post(server.url + "login", data={"username": "carl", "password": PASSWORD},
                            headers={"Accept": "text/html"})
    finally:
        filler.unlink()
    assert answer.status_code == 503
    assert "cannot write" in answer.text and "disk full" in answer.text and "cannot reach" not in answer.text
