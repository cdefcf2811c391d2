"""Accounts, logins and abuse, tried against the real server the way an attacker would."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from app.accounts.login_guard import (
    FREE_FAILURES_PER_ADDRESS,
    FREE_FAILURES_PER_PAIR,
    MAX_CONCURRENT_HASHES,
    MAX_WAITING_HASHES,
    HashingBusy,
    LoginGuard,
    Throttled,
)
from app.web.export_route import EXPORTS_PER_WINDOW, ExportGate, ExportRefused
from app.web.page.message_window import PAGE_MESSAGES
from storage.database import Database
from storage.models import utcnow
from storage.repository import NewMessage, Repository
from tests.support import PYTHON, ROOT, add_user, api_client, login_cookies, tiny_team_server

PASSWORD = "password-123"
ELSEWHERE = "http://127.0.0.1:9"  # another port of the same host: same site, other origin


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = {"CHAT_SIGNUP": "open", "CHAT_SIGNUP_LIMIT": "5"}
    with tiny_team_server(tmp_path_factory, "security", ("alice", "bob", "erin"), PASSWORD, **settings) as process:
        yield process


def users_cli(server, *args: str, stdin: str = "") -> None:
    environment = {**os.environ, "CHAT_DATA_DIR": str(server.data_dir)}
    environment.pop("CHAT_DATABASE_URL", None)
    subprocess.run([PYTHON, "-m", "app", "users", *args], cwd=ROOT, env=environment, input=stdin, text=True,
                   check=True, capture_output=True)


def whoami(server, cookies) -> str | None:
    """Who the server takes the holder of ``cookies`` for (None: nobody)."""
    answer = httpx.get(server.url + "gradio_api/user", cookies=cookies)
    return answer.json() if answer.status_code == 200 else None  # 401: not logged in


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


def sign_up(client: httpx.Client, server, name: str, password: str, **headers: str) -> httpx.Response:
    return client.post(server.url + "signup", data={"username": name, "password": password}, headers=headers)


def test_names_are_one_whatever_their_case_and_passwords_must_be_hard_to_guess(server):
    with from_address("127.0.0.4") as client:
        for taken in ("ALICE", "Alice", "\uff41\uff4c\uff49\uff43\uff45"):  # the last in fullwidth letters
            answer = sign_up(client, server, taken, "a-fine-long-password-1")
            assert answer.status_code == 400 and "already exists" in answer.text, taken
        for password, why in [(" " * 12, "at least 8"), ("  short  ", "at least 8"), ("password", "too easy to guess"),
                              ("passw0rd", "too easy to guess"), ("12345678", "too easy to guess"),
                              ("Frieda-Novak", "must not be the user name")]:
            answer = sign_up(client, server, "frieda-novak", password)
            assert answer.status_code == 400 and why in answer.text, password
        assert sign_up(client, server, "frieda-novak", "plum tree at midnight").status_code == 303
    assert whoami(server, login_cookies(server.url, "ALICE", PASSWORD)) == "alice"  # any case logs in
    assert whoami(server, login_cookies(server.url, "Frieda-Novak", "plum tree at midnight")) == "frieda-novak"
    weak = httpx.post(server.url + "account/password", cookies=login_cookies(server.url, "alice", PASSWORD),
                      data={"current": PASSWORD, "new": "Alice"})
    assert weak.status_code == 400 and "Not changed" in weak.text


def test_sign_up_is_throttled_per_address_and_refuses_other_origins(server):
    with from_address("127.0.0.5") as client:
        statuses = [sign_up(client, server, f"crowd{i}", "violet-harbour-lamp").status_code for i in range(6)]
        assert statuses == [303] * 5 + [429]
        refused = sign_up(client, server, "crowd9", "violet-harbour-lamp")
        assert "Too many accounts were created from your address; try again in 10 minutes" in refused.text
    with from_address("127.0.0.6") as client:  # another address is not affected
        assert sign_up(client, server, "crowd10", "violet-harbour-lamp").status_code == 303
        # a form on another origin: refused with an Origin header, and by Sec-Fetch-Site without one
        assert sign_up(client, server, "crowd11", "violet-harbour-lamp", Origin=ELSEWHERE).status_code == 403
        forged = sign_up(client, server, "crowd11", "violet-harbour-lamp", **{"Sec-Fetch-Site": "cross-site"})
        assert forged.status_code == 403 and "only be sent from this server" in forged.text
        login = client.post(server.url + "login", data={"username": "alice", "password": PASSWORD},
                            headers={"Sec-Fetch-Site": "same-site"})
        assert login.status_code == 403 and "set-cookie" not in login.headers
    assert whoami(server, login_cookies(server.url, "crowd10", "violet-harbour-lamp")) == "crowd10"
    with pytest.raises(RuntimeError, match="401"):  # never created
        login_cookies(server.url, "crowd11", "violet-harbour-lamp")


def test_nothing_answers_without_a_login(server):
    anonymous = [("POST", "gradio_api/cancel"), ("GET", "config"), ("GET", "gradio_api/info"),
                 ("GET", "gradio_api/user"), ("GET", "gradio_api/token"), ("POST", "gradio_api/queue/join"),
                 ("GET", "gradio_api/queue/data?session_hash=x"), ("GET", "theme.css"), ("GET", "manifest.json"),
                 ("GET", "assets/x.js"),
                 ("GET", "gradio_api/file=/etc/passwd"), ("GET", "export/all"), ("GET", "favicon.ico")]
    for method, path in anonymous:
        answer = httpx.request(method, server.url + path, json={"session_hash": "x", "fn_index": 0, "event_id": "x"})
        assert answer.status_code == 401 and answer.text == "Please log in first.", (path, answer.status_code)
    assert httpx.get(server.url).headers["location"].startswith("/login")
    for public in ("login", "healthz"):
        assert httpx.get(server.url + public).status_code == 200
    cookies = login_cookies(server.url, "alice", PASSWORD)
    for path in ("openapi.json", "docs", "redoc", "gradio_api/openapi.json"):  # no schema for anyone
        assert httpx.get(server.url + path, cookies=cookies).status_code == 404, path
        assert httpx.get(server.url + path).status_code == 404, path


def raw_event(server, cookies, api_name: str, data: list) -> list:
    """One Gradio event sent as raw JSON (NaN and Infinity included, which gradio_client
    refuses to encode but a script can send); returns its output or raises with the error."""
    config = httpx.get(server.url + "config", cookies=cookies).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)
    session = uuid.uuid4().hex
    body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None})
    joined = httpx.post(server.url + "gradio_api/queue/join", content=body, cookies=cookies,
                        headers={"Content-Type": "application/json"})
    assert joined.status_code == 200, joined.text
    output = None
    with httpx.stream("GET", server.url + f"gradio_api/queue/data?session_hash={session}", cookies=cookies,
                      timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event.get("msg") == "process_completed":
                    output = event.get("output")
                    break
    assert output is not None
    if output.get("data") is None:  # refused by Gradio before our handler ran (a slider's range)
        raise ValueError(output.get("error"))
    return output["data"]


def test_bad_numbers_lone_surrogates_and_huge_searches_get_a_sentence(server):
    cookies = login_cookies(server.url, "bob", PASSWORD)
    for temperature, top_p, max_new_tokens, what in [(0.7, 0.9, float("nan"), "Max new tokens"),
                                                     (float("inf"), 0.9, 4, "Temperature"),
                                                     (0.7, float("-inf"), 4, "Top p"),
                                                     (0.7, 0.9, float("inf"), "Max new tokens")]:
        try:
            _chatbot, box, _chat, status, _list, _rows = raw_event(
                server, cookies, "send", ["hello", "", "", temperature, top_p, max_new_tokens, ""])
        except ValueError as refused:  # Gradio's own range check answers first for infinities
            assert str(refused).startswith("Value ") and "inf" in str(refused), refused
            continue
        assert status.startswith(f"⚠ {what} must be a finite number"), status
        assert box == "hello"  # kept for another try
    bad_text = ["bad \ud800 text", "", "", 0.7, 0.9, 4, ""]
    _chatbot, box, _chat, status, _list, _rows = raw_event(server, cookies, "send", bad_text)
    assert "invalid Unicode" in status and box == "bad \ufffd text"
    client = api_client(server.url, "bob", PASSWORD)
    reply = client.predict("still fine?", "", "", 0.7, 0.9, 4, "", api_name="/send")
    assert reply[3] == "" and reply[0][-1]["content"]  # the stream works on

    no_match = client.predict("x" * 50_000, None, api_name="/search")[-1]
    text = no_match["value"] if isinstance(no_match, dict) else str(no_match)
    assert "50,000 characters long; at most 100 allowed" in text
    assert "SELECT" not in text and "messages" not in text.lower()


def test_exports_come_from_an_owner_checked_throttled_route(server):
    cookies = login_cookies(server.url, "alice", PASSWORD)
    anonymous = httpx.get(server.url + "export/all", params={"format": "jsonl"})
    assert anonymous.status_code == 401
    answers = [httpx.get(server.url + "export/all", params={"format": "jsonl"}, cookies=cookies, timeout=30)
               for _ in range(EXPORTS_PER_WINDOW + 1)]
    assert [a.status_code for a in answers[:EXPORTS_PER_WINDOW]] == [200] * EXPORTS_PER_WINDOW
    assert answers[-1].status_code == 429 and "Too many exports" in answers[-1].text
    assert int(answers[-1].headers["retry-after"]) >= 1
    # others are not slowed by alice's exports; a bad format is a sentence
    bob = login_cookies(server.url, "bob", PASSWORD)
    assert httpx.get(server.url + "export/all", params={"format": "md"}, cookies=bob).status_code == 200
    odd = httpx.get(server.url + "export/all", params={"format": "pdf"}, cookies=bob)
    assert odd.status_code == 400 and "Unknown export format" in odd.text


async def test_the_export_gate_runs_one_export_per_user_at_a_time():
    gate, release = ExportGate(), asyncio.Event()

    async def export(name: str) -> None:
        async with gate.turn(name):
            await release.wait()

    running = asyncio.create_task(export("alice"))
    await asyncio.sleep(0.01)
    with pytest.raises(ExportRefused, match="still being prepared"):
        await export("alice")
    other = asyncio.create_task(export("bob"))
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(running, other)


async def test_a_long_chat_opens_at_its_newest_page_and_earlier_ones_come_on_request(server):
    database = Database(server.database_url)
    try:
        repository = Repository(database)
        alice = await repository.get_user("alice")
        chat_id, created = str(uuid.uuid4()), utcnow()
        await repository.import_conversation(
            alice.id, conversation_id=chat_id, title="a very long chat", model="m", created_at=created,
            updated_at=created,
            messages=[NewMessage(("user", "assistant")[i % 2], f"message number {i} " + "x" * 2000)
                      for i in range(PAGE_MESSAGES * 2 + 50)],
        )
    finally:
        await database.dispose()

    def numbers(chatbot: list[dict]) -> list[int]:
        return [int(re.search(r"message number (\d+)", str(bubble["content"])).group(1)) for bubble in chatbot]

    client = await asyncio.to_thread(api_client, server.url, "alice", PASSWORD)
    await asyncio.to_thread(client.predict, api_name="/load")  # a page, as the browser opens one
    opened = await asyncio.to_thread(client.predict, chat_id, api_name="/open")
    assert numbers(opened[0]) == list(range(PAGE_MESSAGES + 50, PAGE_MESSAGES * 2 + 50))  # the newest page only
    earlier = await asyncio.to_thread(client.predict, chat_id, api_name="/earlier")
    assert numbers(earlier[0]) == list(range(50, PAGE_MESSAGES * 2 + 50))
    everything = await asyncio.to_thread(client.predict, chat_id, api_name="/earlier")
    assert numbers(everything[0]) == list(range(PAGE_MESSAGES * 2 + 50))
    bob = await asyncio.to_thread(api_client, server.url, "bob", PASSWORD)  # and only for its owner
    refused = await asyncio.to_thread(bob.predict, chat_id, api_name="/earlier")
    assert "not found" in refused[-1].lower()
