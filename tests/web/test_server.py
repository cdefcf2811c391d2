"""The real server (subprocess) driven by real clients: many users, isolation, bad input, restarts."""

from __future__ import annotations

import contextlib
import json
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from gradio_client import Client

from tests.models import SERVER_CONTEXT, build_tiny_llama, smollm2_folder
from tests.page_client import PASSWORD, bubble_texts, chat_titles, client_for, message_count, send, stored
from tests.support import ServerProcess, add_user, api_client, login_cookies, running_server


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_llama(tmp_path_factory.mktemp("server-model"), max_positions=SERVER_CONTEXT))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    data = tmp_path_factory.mktemp("server-data")
    with running_server(data, tiny_model, CHAT_MAX_INPUT_CHARS="2000", CHAT_MAX_NEW_TOKENS="1900") as process:
        for name in ("alice", "bob", *(f"user{i}" for i in range(8))):
            add_user(data, name, PASSWORD)
        yield process


def test_eight_users_chat_at_once_and_see_only_their_own_chats(server):
    def two_turns(index: int) -> tuple[str, str, int, int]:
        client = client_for(server, f"user{index}")
        updates, final = send(client, f"first message from user {index}")
        conversation_id = final[2]
        more, final = send(client, f"second message from user {index}", conversation_id)
        assert final[2] == conversation_id
        return f"user{index}", conversation_id, len(updates), len(more)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(two_turns, range(8)))
    for username, conversation_id, first_updates, second_updates in results:
        assert first_updates > 2 and second_updates > 2  # the replies streamed
        conversation = stored(server, username, conversation_id)
        assert [m.role for m in conversation.messages] == ["user", "assistant", "user", "assistant"]
        assert all(m.finish_reason in ("eos", "length") for m in conversation.messages[1::2])
        assert conversation.messages[2].content == f"second message from {username.replace('user', 'user ')}"
        assert all(m.token_ids for m in conversation.messages)
        titles = chat_titles(client_for(server, username))
        assert titles == [f"first message from {username.replace('user', 'user ')}"]


def test_stored_token_history_is_what_the_next_turn_continues(server):
    client = client_for(server, "alice")
    _, final = send(client, "remember the number 17", temperature=0.0)
    conversation_id = final[2]
    send(client, "what number?", conversation_id, temperature=0.0)
    conversation = stored(server, "alice", conversation_id)
    first_prompt = conversation.messages[0]
    assert first_prompt.prompt_tokens is None  # user turns carry their ids, replies carry counts
    reply = conversation.messages[1]
    assert reply.prompt_tokens == len(first_prompt.token_ids)
    second_reply = conversation.messages[3]
    history = [t for m in conversation.messages[:3] for t in m.token_ids]
    assert second_reply.prompt_tokens == len(history)
    # the second turn's prompt started with the first turn's prompt and reply: the engine reused their KV
    cache = httpx.get(f"{server.url}healthz", timeout=10).json()["engine"]["prefix_cache"]
    assert cache["hits"] >= 1 and cache["reused_tokens"] >= len(first_prompt.token_ids)


def test_another_users_conversation_is_not_found_everywhere(server):
    alice, bob = client_for(server, "alice"), client_for(server, "bob")
    _, final = send(alice, "alice's private chat")
    target = final[2]
    before = stored(server, "alice", target)

    def statuses(conversation_id: str) -> list[str]:
        return [
            bob.predict(conversation_id, api_name="/open")[2],
            bob.predict(conversation_id, "stolen title", "", api_name="/rename")[0],
            bob.predict(conversation_id, "", api_name="/delete")[2],
            bob.predict(conversation_id, "", api_name="/undo")[1],
            bob.predict(conversation_id, 0.7, 0.9, 16, "", api_name="/retry")[2],
            bob.predict("hello?", conversation_id, "", 0.7, 0.9, 16, "", api_name="/send")[3],
            *(download(server, bob_cookies, conversation_id, fmt).text for fmt in ("json", "markdown")),
        ]

    bob_cookies = login_cookies(server.url, "bob", PASSWORD)
    assert download(server, bob_cookies, target, "json").status_code == 404
    stolen, unknown = statuses(target), statuses(str(uuid.uuid4()))
    assert stolen == unknown
    assert all("not found" in status.lower() for status in stolen)
    assert stored(server, "alice", target) == before
    assert "alice's private chat" not in chat_titles(bob)


def test_logged_out_and_wrong_password_are_refused(server):
    with pytest.raises(Exception):  # noqa: B017 (gradio_client raises different types per failure)
        Client(server.url, verbose=False)
    with pytest.raises(Exception):  # noqa: B017
        Client(server.url, auth=("alice", "wrong-password"), verbose=False)
    joined = httpx.post(server.url + "gradio_api/queue/join", json={"data": ["hi"], "fn_index": 0,
                                                                     "session_hash": "x"})
    assert joined.status_code in (401, 403)
    assert httpx.get(server.url + "gradio_api/run/send").status_code in (401, 403, 404, 405)


@pytest.mark.parametrize("text, expected", [
    ("", "empty"), ("   \n\t ", "empty"), ("x" * 1_000_000, "limit is 2,000"), ("bell \x07 here", "control character"),
])
def test_bad_messages_are_refused_and_nothing_is_stored(server, text, expected):
    client = client_for(server, "bob")
    before = message_count(server)
    _chatbot, box, _, status, _ = client.predict(text, "", "", 0.7, 0.9, 16, "", api_name="/send")
    assert status.startswith("⚠") and expected in status
    assert box == text  # the typed text is handed back, not lost
    assert message_count(server) == before


def test_out_of_range_settings_are_refused(server):
    from gradio_client.exceptions import AppError

    client = client_for(server, "bob")
    before = message_count(server)
    with pytest.raises(AppError, match="greater than maximum"):
        client.predict("hello", "", "", 7.0, 0.9, 16, "", api_name="/send")
    assert message_count(server) == before


def test_html_is_stored_verbatim_and_shown_as_text(server):
    client = client_for(server, "bob")
    script = "<script>alert(1)</script>"
    _, final = send(client, f"look {script} here")
    conversation_id = final[2]
    shown = bubble_texts(final[0])[0][1]
    assert "&lt;script>" in shown and "<script>" not in shown
    assert client.predict(conversation_id, script, "", api_name="/rename")[0] == "Renamed."
    conversation = stored(server, "bob", conversation_id)
    assert conversation.title == script and conversation.messages[0].content == f"look {script} here"


def download(server, cookies, conversation_id: str, fmt: str) -> httpx.Response:
    """An export as the page fetches it: ``GET /export/{id|all}?format=...`` with the login cookie."""
    return httpx.get(f"{server.url}export/{conversation_id}", params={"format": fmt}, cookies=cookies, timeout=60)


def test_export_downloads_hold_the_users_chats(server):
    client = client_for(server, "alice")
    _, final = send(client, "export me please")
    conversation_id = final[2]
    cookies = login_cookies(server.url, "alice", PASSWORD)
    answer = download(server, cookies, conversation_id, "json")
    assert answer.status_code == 200 and "attachment" in answer.headers["content-disposition"]
    document = answer.json()
    assert next(m["content"] for m in document["conversations"][0]["messages"]) == "export me please"
    markdown = download(server, cookies, conversation_id, "markdown").text
    assert "export me please" in markdown and "**User:** alice" in markdown
    lines = download(server, cookies, "all", "jsonl").text.splitlines()
    assert all(json.loads(line)["user"] == "alice" for line in lines) and len(lines) >= 2


def test_undo_retry_rename_delete(server):
    client = client_for(server, "bob")
    _, final = send(client, "one")
    conversation_id = final[2]
    send(client, "two", conversation_id)
    chatbot, _status, _, still_open = client.predict(conversation_id, "", api_name="/undo")
    assert still_open == conversation_id
    assert next(text for _, text in bubble_texts(chatbot)) == "one" and len(chatbot) == 2
    retried = client.predict(conversation_id, 0.7, 0.9, 8, "", api_name="/retry")
    assert len(retried[0]) == 2 and len(stored(server, "bob", conversation_id).messages) == 2
    assert client.predict(conversation_id, "Renamed chat", "", api_name="/rename")[0] == "Renamed."
    assert "Renamed chat" in chat_titles(client)
    assert client.predict(conversation_id, "", api_name="/delete")[2] == "Chat deleted."
    assert "Renamed chat" not in chat_titles(client)
    assert "not found" in client.predict(conversation_id, api_name="/open")[2].lower()


def test_stop_keeps_the_partial_reply_marked_stopped(server):
    client = client_for(server, "alice")
    job = client.submit("a long answer please", "", "", 1.0, 1.0, 1800, "", api_name="/send")
    conversation_id = None
    for update in job:
        conversation_id = update[2] or conversation_id
        if conversation_id and len(bubble_texts(update[0])[-1][1]) > 20:
            break
    job.cancel()  # what the Stop button does: cancel the running event
    assert conversation_id, job.outputs()[-3:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        messages = stored(server, "alice", conversation_id).messages
        if messages[-1].role == "assistant":
            break
        time.sleep(0.2)
    reply = messages[-1]
    assert reply.role == "assistant" and reply.finish_reason in ("stopped", "disconnected")
    assert 0 < reply.completion_tokens < 1800 and reply.content
    chatbot = client.predict(conversation_id, api_name="/open")[0]
    assert "(stopped" in bubble_texts(chatbot)[-1][1]


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory, tiny_model):
    data = tmp_path_factory.mktemp("strict-data")
    env = dict(CHAT_RATE_LIMIT="3", CHAT_RATE_PERIOD="60", CHAT_MAX_BATCH_SIZE="1", CHAT_MAX_QUEUE="1",
               CHAT_MAX_NEW_TOKENS="3000", CHAT_SIGNUP="open")
    with running_server(data, tiny_model, **env) as process:
        for name in ("carol", *(f"queue{i}" for i in range(6))):
            add_user(data, name, PASSWORD)
        yield process


def test_rate_limit_burst_is_refused_clearly(strict_server):
    client = client_for(strict_server, "carol")
    for index in range(3):
        assert send(client, f"message {index}", max_new_tokens=2)[1][3] == ""
    before = message_count(strict_server)
    _chatbot, box, _, status, _ = client.predict("one too many", "", "", 0.7, 0.9, 2, "", api_name="/send")
    assert "Slow down" in status and box == "one too many"
    assert message_count(strict_server) == before


def test_full_queue_says_busy_and_keeps_the_text(strict_server):
    """One reply running and one waiting fill this server; everyone else must hear "busy"."""
    names = [f"queue{i}" for i in range(6)]
    clients = {name: client_for(strict_server, name) for name in names}  # all connected first
    before = message_count(strict_server)

    waiting_notes: list[str] = []

    def send_long(name: str) -> tuple[str, str, str]:
        job = clients[name].submit(f"long reply for {name}", "", "", 1.0, 1.0, 1800, "", api_name="/send")
        waiting_notes.extend(update[3] for update in job if update[3].startswith("⏳"))
        _, box, conversation_id, status, _ = job.result()
        return box, conversation_id, status

    with ThreadPoolExecutor(len(names)) as pool:
        outcomes = dict(zip(names, pool.map(send_long, names), strict=True))
    busy = {name for name, (_, _, status) in outcomes.items() if "busy" in status.lower()}
    served = set(names) - busy
    assert len(busy) >= 4 and served
    for name in busy:
        box, _conversation_id, status = outcomes[name]
        assert status.startswith("⚠") and box == f"long reply for {name}"
    assert message_count(strict_server) == before + 2 * len(served)  # nothing stored for the refused
    # the one that waited was told the truth: one reply running, nobody else ahead of it
    assert "⏳ The model is busy with 1 reply; yours is next and starts as soon as one finishes." in waiting_notes
    assert send(clients[names[0]], "now there is room", max_new_tokens=4)[1][3] == ""


def test_open_signup_creates_an_account_that_can_chat(strict_server, server):
    form = {"username": "newcomer", "password": "newcomer-password"}
    assert httpx.get(server.url + "signup").status_code == 404  # closed by default
    created = httpx.post(strict_server.url + "signup", data=form)
    assert created.status_code == 303
    again = httpx.post(strict_server.url + "signup", data=form)
    assert again.status_code == 400 and "already exists" in again.text
    weak = httpx.post(strict_server.url + "signup", data={"username": "weak", "password": "short"})
    assert weak.status_code == 400 and "at least 8" in weak.text
    client = api_client(strict_server.url, "newcomer", "newcomer-password")
    assert send(client, "hello from a newcomer", max_new_tokens=2)[1][3] == ""


def test_restart_keeps_every_chat_and_a_crash_mid_reply_can_be_retried(tmp_path, tiny_model):
    data = tmp_path / "data"
    data.mkdir()
    env = {"CHAT_ADMIN_PASSWORD": "admin-password", "CHAT_MAX_NEW_TOKENS": "3000"}
    first = ServerProcess(data, tiny_model, env).start()
    try:
        add_user(data, "alice", PASSWORD)
        client = client_for(first, "alice")
        _, final = send(client, "before the restart")
        conversation_id = final[2]
        send(client, "second turn", conversation_id)
        before = stored(first, "alice", conversation_id)
        session_cookie = dict(login_cookies(first.url, "alice", PASSWORD))
    finally:
        assert first.stop() == 0  # Ctrl-C ends cleanly

    second = ServerProcess(data, tiny_model, env).start()
    try:
        # the login made before the restart still works: no new login here
        client = Client(second.url, httpx_kwargs={"cookies": session_cookie}, verbose=False)
        assert chat_titles(client) == ["before the restart"]
        chatbot = client.predict(conversation_id, api_name="/open")[0]
        assert [text for role, text in bubble_texts(chatbot) if role == "user"] == ["before the restart", "second turn"]
        assert stored(second, "alice", conversation_id) == before
        send(client, "third turn", conversation_id)
        after = stored(second, "alice", conversation_id)
        assert after.messages[:4] == before.messages and len(after.messages) == 6
        assert after.messages[5].prompt_tokens == sum(len(m.token_ids) for m in after.messages[:5])

        job = client.submit("a very long reply please", conversation_id, "", 1.0, 1.0, 1800, "", api_name="/send")
        for _ in job:
            if len(stored(second, "alice", conversation_id).messages) == 7:
                break
    finally:
        second.process.send_signal(signal.SIGKILL)
        second.process.wait(10)
        with contextlib.suppress(Exception):
            job.cancel()

    third = ServerProcess(data, tiny_model, env).start()
    try:
        client = client_for(third, "alice")
        crashed = stored(third, "alice", conversation_id)
        assert crashed.messages[-1].role == "user" and crashed.messages[-1].content == "a very long reply please"
        chatbot = client.predict(conversation_id, api_name="/open")[0]
        assert "interrupted" in bubble_texts(chatbot)[-1][1]
        client.predict(conversation_id, 0.7, 0.9, 8, "", api_name="/retry")
        retried = stored(third, "alice", conversation_id)
        assert retried.messages[-1].role == "assistant" and len(retried.messages) == 8
    finally:
        third.stop()


@pytest.mark.slow
def test_real_smollm2_serves_several_users(tmp_path):
    smollm2_folder()
    with running_server(tmp_path, "smollm2") as process:
        for name in ("ann", "ben", "cat"):
            add_user(tmp_path, name, PASSWORD)

        def chat(name: str) -> list[str]:
            client = client_for(process, name)
            _, final = send(client, "What is the capital of France?", max_new_tokens=24, temperature=0.0)
            _, final = send(client, "And of Italy?", final[2], max_new_tokens=24, temperature=0.0)
            # the reply without its figures line (tokens, timings), which differs between users
            return [text.split('\n\n<small class="reply-stats">')[0] for role, text in bubble_texts(final[0])
                    if role == "assistant"]

        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(chat, ("ann", "ben", "cat")))
    assert replies[0] == replies[1] == replies[2]  # greedy: the same answer whoever shares the batch
    assert "Paris" in replies[0][0]
    assert all(len(reply.split()) >= 3 for reply in replies[0])
