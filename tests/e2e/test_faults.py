"""Faults a new operator meets, on the real server with real clients.

The database's disk fills up or the database stops while replies stream; the
server is killed in the middle of a Retry or of creating a chat; Ctrl-C arrives
during long replies. Whatever happens, a reply a tester saw finish is stored with
the text seen, exactly once, and the tester reads one plain sentence, never a
driver's message.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

from app.config import sqlite_url
from app.web.page.ui import PENDING_NOTE, message_bubble
from tests.models import SERVER_CONTEXT, build_tiny_llama
from tests.page_client import PASSWORD, bubble_texts, send, stored
from tests.support import ServerProcess, free_port, running_server

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# words of driver errors, SQL and addresses that must never reach a tester
LEAKS = ("sqlite", "operationalerror", "interfaceerror", "dbapi", "asyncpg", "sqlalchemy", "errno", "traceback",
         "background on this error", "insert into", "update ", "select ", "connect call failed", "127.0.0.1",
         "disk is full", "readonly")
REPLY_TOKENS = 300  # ~4 s on the tiny model: long enough to fill the disk or stop PostgreSQL meanwhile


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_llama(tmp_path_factory.mktemp("faults-model"), max_positions=SERVER_CONTEXT))


def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    return folder


def sign_up(server: ServerProcess, name: str) -> Client:
    """Open sign-up (the CLI would use the default database, not the test's own)."""
    created = httpx.post(server.url + "signup", data={"username": name, "password": PASSWORD})
    assert created.status_code == 303, created.text
    return Client(server.url, auth=(name, PASSWORD), verbose=False)


def health(server: ServerProcess) -> tuple[int, dict[str, Any]]:
    response = httpx.get(server.url + "healthz", timeout=30)
    return response.status_code, response.json()


def wait_for_health(server: ServerProcess, status: int, seconds: float = 40.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        code, report = health(server)
        if code == status or time.monotonic() > deadline:
            assert code == status, report
            return report
        time.sleep(0.3)


def start_long_replies(clients: dict[str, Client], chats: dict[str, str]) -> dict[str, Any]:
    """One long reply per tester; returns once every reply is streaming (so its message is stored)."""
    jobs = {name: client.submit(f"tell me a long story, {name}", chats[name], "", 1.0, 1.0, REPLY_TOKENS, "",
                                api_name="/send") for name, client in clients.items()}
    deadline = time.monotonic() + 60
    while not all(streaming(job) for job in jobs.values()):
        assert time.monotonic() < deadline, "the replies did not start"
        time.sleep(0.05)
    return jobs


def without_figures(text: str) -> str:
    """A reply bubble without its figures line (tokens, timings), which the page adds under stored replies."""
    return text.split('\n\n<small class="reply-stats">')[0]


def reply_text(bubble: str) -> str:
    """The reply's own text in a bubble: without the figures line and the italic notes after it.

    The last update a client holds may be the streamed text (when the page looked at
    another chat as the reply ended) or the stored bubble with its notes; the text is
    what must match.
    """
    paragraphs = without_figures(bubble).strip().split("\n\n")
    while paragraphs and re.fullmatch(r"\*[^*].*\*", paragraphs[-1].strip()):
        paragraphs.pop()
    return "\n\n".join(paragraphs).strip()


def streaming(job: Any) -> bool:
    outputs = job.outputs()
    return bool(outputs) and len(bubble_texts(outputs[-1][0])[-1][1]) > 3


class Findings:
    """Every expectation of a fault scenario is checked and all misses are reported together."""

    def __init__(self) -> None:
        self.missed: list[str] = []

    def check(self, ok: bool, finding: str, detail: Any = "") -> None:
        if not ok:
            self.missed.append(f"{finding}: {detail}"[:600])

    def assert_none(self) -> None:
        assert not self.missed, "\n".join(self.missed)


def leaks(*texts: str) -> list[str]:
    return [text for text in texts if any(word in text.lower() for word in LEAKS)]


def try_send(client: Client, text: str, chat: str) -> tuple[str, str]:
    """Send during a fault: (text handed back in the box, status line or the error the client got)."""
    try:
        _chatbot, box, _, status, _ = client.predict(text, chat, "", 0.7, 0.9, 4, "", api_name="/send")
    except Exception as error:  # whatever reached the client is what a tester would read
        return "", str(error)
    return box, status


def try_open(client: Client, chat: str) -> tuple[list, str]:
    try:
        outputs = client.predict(chat, api_name="/open")
        chatbot, status = outputs[0], outputs[2]
    except Exception as error:
        return [], str(error)
    return chatbot, status


def check_seen_replies_stored_once(findings: Findings, server: ServerProcess, finals: dict[str, tuple],
                                   chats: dict[str, str]) -> None:
    """Each final reply a tester saw is the stored one, once, with the text seen."""
    for name, final in finals.items():
        shown = bubble_texts(final[0])[-1][1]
        seen = reply_text(shown)
        messages = stored(server, name, chats[name]).messages
        roles = [m.role for m in messages]
        findings.check(roles == ["user", "assistant", "user", "assistant"], "1. a seen reply is not stored once",
                       f"{name}: {roles}")
        if roles[-1:] == ["assistant"]:
            # Gradio's Chatbot shows a text message through inspect.cleandoc (tabs expanded, common
            # indentation and edge whitespace removed), so the stored bubble is compared as the page shows it.
            # When the finished reply reached the page (its figures line shows it), its text is the stored one;
            # a page that looked at another chat as the reply ended holds only a streamed update.
            if 'class="reply-stats"' in shown:
                stored_as_shown = reply_text(inspect.cleandoc(message_bubble(messages[-1])["content"]))
                findings.check(stored_as_shown == seen, "1. the stored reply is not the text seen",
                               f"{name}: seen {seen[-80:]!r}, stored {stored_as_shown[-80:]!r}")
            findings.check(messages[-1].finish_reason == "length" and messages[-1].completion_tokens == REPLY_TOKENS,
                           "1. the stored reply is not complete", f"{name}: {messages[-1].finish_reason}")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


def test_sqlite_disk_full_loses_no_reply_a_tester_saw(tmp_path, tiny_model):
    findings = Findings()
    with tmpfs(tmp_path / "disk", "8m") as disk:
        env = {"CHAT_DATABASE_URL": sqlite_url(disk / "chat.db"), "CHAT_SIGNUP": "open",
               "CHAT_MAX_NEW_TOKENS": "1900"}
        with running_server(data_dir(tmp_path), tiny_model, **env) as server:
            names = ["ann", "ben", "cat"]
            clients = {name: sign_up(server, name) for name in names}
            late = sign_up(server, "dan")
            chats = {name: send(client, f"hello from {name}", max_new_tokens=4)[1][2] for name, client in
                     clients.items()}
            jobs = start_long_replies(clients, chats)
            filler = fill(disk)

            code, report = health(server)
            findings.check(code == 503 and "disk full" in str(report.get("database")), "3. /healthz says ok", report)
            box, refusal = try_send(late, "a message while the disk is full", "")
            findings.check(box == "a message while the disk is full", "4. the refused text is not handed back", box)
            findings.check(refusal == "⚠ The server cannot save right now; your message was kept. Try again in a "
                           "moment.", "4. the refusal is not the sentence", refusal)
            finals = {name: job.result() for name, job in jobs.items()}
            statuses = [final[3] for final in finals.values()]
            findings.check(all(PENDING_NOTE in status for status in statuses), "1. no note on the page", statuses)
            reopened, opened_status = try_open(clients["ann"], chats["ann"])
            findings.check(bool(reopened) and PENDING_NOTE in bubble_texts(reopened)[-1][1],
                           "1. the reopened chat does not show the kept reply", opened_status)
            findings.check(not leaks(refusal, opened_status, *statuses), "4. driver text reached a tester",
                           leaks(refusal, opened_status, *statuses))
            findings.check("database or disk is full" in server.log(), "4. the details are not in the log")

            filler.unlink()
            freed = time.monotonic()
            wait_for_health(server, 200)
            print(f"\ndisk full: {len(finals)} replies kept in the journal, stored "
                  f"{time.monotonic() - freed:.1f} s after the disk had room again")
            check_seen_replies_stored_once(findings, server, finals, chats)
            # the chats go on in order
            send(clients["ann"], "and after the fault?", chats["ann"], max_new_tokens=4)
            messages = stored(server, "ann", chats["ann"]).messages
            findings.check(messages[-2].content == "and after the fault?" and len(messages) == 6,
                           "1. the chat does not go on in order", [m.content[:20] for m in messages])
    findings.assert_none()


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[dict[str, Any]]:
    """A PostgreSQL cluster of our own on a free port, so stopping it harms nobody."""
    if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None or os.geteuid() != 0:
        pytest.skip("PostgreSQL 15 binaries (and root, to run them as postgres) are needed")
    base = Path(tempfile.mkdtemp(prefix="chat-pg-"))
    shutil.chown(base, "postgres", "postgres")
    port = free_port()
    data = base / "data"

    def as_postgres(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True,
                              check=check, cwd=base)

    def start() -> None:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop() -> None:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop", check=False)

    def psql(sql: str) -> str:
        return as_postgres("psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "chat", "-tAc",
                           sql).stdout.strip()

    try:
        as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        start()
        as_postgres("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "chat")
        yield {"url": f"postgresql+asyncpg://postgres@127.0.0.1:{port}/chat", "port": port, "stop": stop,
               "start": start, "psql": psql}
    finally:
        stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, Any]]:
    with throwaway_postgres() as instance:
        yield instance


def test_postgres_stopped_mid_reply_loses_nothing_and_says_so_in_words(tmp_path, tiny_model, postgres):
    findings = Findings()
    env = {"CHAT_DATABASE_URL": postgres["url"], "CHAT_SIGNUP": "open", "CHAT_MAX_NEW_TOKENS": "1900"}
    with running_server(data_dir(tmp_path), tiny_model, **env) as server:
        names = ["eve", "fay"]
        clients = {name: sign_up(server, name) for name in names}
        other = sign_up(server, "gil")  # acts during the outage without touching the streaming pages
        chats = {name: send(client, f"hello from {name}", max_new_tokens=4)[1][2] for name, client in
                 [*clients.items(), ("gil", other)]}
        jobs = start_long_replies(clients, {name: chats[name] for name in names})
        postgres["stop"]()
        try:
            code, report = health(server)
            findings.check(code == 503 and report.get("database") != "ok", "3. /healthz says ok", report)
            login = httpx.post(server.url + "login", data={"username": "eve", "password": PASSWORD})
            findings.check(login.status_code == 503 and "cannot reach its database" in login.text,
                           "4. login does not say the server is unavailable", f"{login.status_code} {login.text}")
            _, refusal = try_send(other, "while the database is down", chats["gil"])
            # the login check in front of the page may refuse first (HTTP 503, which gradio_client words
            # as "Queue is full"); if the message reaches the chat, the answer is our sentence
            findings.check(refusal.startswith("⚠ The server cannot") or "queue is full" in refusal.lower(),
                           "4. the refusal is not the sentence", refusal)
            _, opened = try_open(other, chats["gil"])
            finals = {name: job.result() for name, job in jobs.items()}
            statuses = [final[3] for final in finals.values()]
            findings.check(all(PENDING_NOTE in status for status in statuses), "1. no note on the page", statuses)
            findings.check(not leaks(login.text, refusal, opened, *statuses), "4. driver text reached a tester",
                           leaks(login.text, refusal, opened, *statuses))
        finally:
            postgres["start"]()
            restarted = time.monotonic()
        wait_for_health(server, 200)
        print(f"\nPostgreSQL stopped: {len(finals)} replies kept in the journal, stored "
              f"{time.monotonic() - restarted:.1f} s after it started again")
        check_seen_replies_stored_once(findings, server, finals, chats)
    findings.assert_none()


def test_a_crash_while_a_new_chat_is_stored_leaves_no_empty_chat(tmp_path, tiny_model, postgres):
    """The first message is held back by a table lock; the server dies while waiting for it."""
    postgres["psql"]("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    env = {"CHAT_DATABASE_URL": postgres["url"], "CHAT_SIGNUP": "open", "CHAT_ADMIN_PASSWORD": "admin-password"}
    server = ServerProcess(data_dir(tmp_path), tiny_model, env).start()
    locker = None
    try:
        client = sign_up(server, "gus")
        locker = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", "psql", "-h", "127.0.0.1", "-p", str(postgres["port"]), "-U",
             "postgres", "-d", "chat", "-tAq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert locker.stdin is not None and locker.stdout is not None
        locker.stdin.write("BEGIN; LOCK TABLE messages IN EXCLUSIVE MODE; SELECT 'locked';\n")
        locker.stdin.flush()
        assert locker.stdout.readline().strip() == "locked"
        job = client.submit("a first message", "", "", 0.7, 0.9, 4, "", api_name="/send")
        deadline = time.monotonic() + 30
        while postgres["psql"]("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'") == "0":
            assert time.monotonic() < deadline, "the server never reached the locked table"
            time.sleep(0.05)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
        with contextlib.suppress(Exception):
            job.cancel()
    finally:
        if locker is not None:
            with contextlib.suppress(Exception):
                locker.communicate("COMMIT;\n", timeout=10)
        server.kill()
    server = ServerProcess(data_dir(tmp_path), tiny_model, env).start()
    try:
        empty = postgres["psql"]("SELECT count(*) FROM conversations c WHERE NOT EXISTS "
                                 "(SELECT 1 FROM messages m WHERE m.conversation_id = c.id)")
        assert empty == "0"
        client = Client(server.url, auth=("gus", PASSWORD), verbose=False)
        assert client.predict(api_name="/load")[1]["choices"] == []
    finally:
        server.stop()


def test_retry_then_a_crash_keeps_the_old_reply(tmp_path, tiny_model):
    env = {"CHAT_SIGNUP": "open", "CHAT_MAX_NEW_TOKENS": "1900", "CHAT_ADMIN_PASSWORD": "admin-password"}
    server = ServerProcess(tmp_path, tiny_model, env).start()
    try:
        client = sign_up(server, "hal")
        _, final = send(client, "answer me", max_new_tokens=8)
        chat = final[2]
        before = stored(server, "hal", chat).messages
        job = client.submit(chat, 1.0, 1.0, 1800, "", api_name="/retry")
        deadline = time.monotonic() + 30
        while not streaming(job):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
    server = ServerProcess(tmp_path, tiny_model, env).start()
    try:
        assert stored(server, "hal", chat).messages == before  # the reply the tester had is still there
    finally:
        server.stop()


def test_ctrl_c_lets_replies_finish_then_stores_the_rest_as_stopped_by_the_server(tmp_path, tiny_model):
    env = {"CHAT_SIGNUP": "open", "CHAT_MAX_NEW_TOKENS": "1900", "CHAT_ADMIN_PASSWORD": "admin-password"}
    server = ServerProcess(tmp_path, tiny_model, env).start()
    try:
        names = ["ida", "jon", "kim"]
        clients = {name: sign_up(server, name) for name in names}
        chats = {name: send(client, f"hi from {name}", max_new_tokens=4)[1][2] for name, client in clients.items()}
        lengths = {"ida": 1800, "jon": 1800, "kim": 60}  # kim's reply fits in the grace period
        jobs = {name: clients[name].submit("go on", chats[name], "", 1.0, 1.0, lengths[name], "", api_name="/send")
                for name in names}
        deadline = time.monotonic() + 30
        while not all(streaming(job) for job in jobs.values()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        assert server.stop(timeout=60) == 0
        took = time.monotonic() - started
        with ThreadPoolExecutor(3) as pool:
            finals = dict(zip(names, pool.map(lambda job: job.outputs()[-1], jobs.values()), strict=True))
    finally:
        server.kill()
    assert took < 30, took  # the engine's 5 s grace, then storing; not uvicorn's cut-off
    print(f"\nCtrl-C with 3 replies streaming: the server exited after {took:.1f} s")
    for name in ("ida", "jon"):
        assert without_figures(bubble_texts(finals[name][0])[-1][1]).endswith("*(stopped by the server)*")
    server = ServerProcess(tmp_path, tiny_model, env).start()
    try:
        replies = {name: stored(server, name, chats[name]).messages[-1] for name in names}
        assert replies["kim"].finish_reason == "length" and replies["kim"].completion_tokens == 60
        for name in ("ida", "jon"):
            assert replies[name].finish_reason == "shutdown"
            assert 0 < replies[name].completion_tokens < 1800
        client = Client(server.url, auth=("ida", PASSWORD), verbose=False)
        reopened = without_figures(bubble_texts(client.predict(chats["ida"], api_name="/open")[0])[-1][1])
        assert reopened.endswith("*(stopped by the server)*")
    finally:
        server.stop()
