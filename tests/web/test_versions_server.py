"""Versions, edits and ratings through the real server (subprocess) with gradio_client, as an API user would.

One server for the module (a tiny random Llama with SmolLM2's real tokenizer and chat
template); the stored token ids are read back from the database and decoded with
that tokenizer.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.models import smollm2_folder
from tests.support import PYTHON, ROOT, api_client, login_cookies, read_stored, tiny_team_server

PASSWORD = "versions-password"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    testers = ("alice", "bob", "carol")
    with tiny_team_server(tmp_path_factory, "versions", testers, PASSWORD, CHAT_RATE_LIMIT="200") as process:
        yield process


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder(), local_files_only=True)


def stored(server, username: str, conversation_id: str):
    return asyncio.run(read_stored(server.database_url, username, conversation_id))


def send(client, text: str, conversation_id: str = "", temperature: float = 0.0) -> str:
    result = client.predict(text, conversation_id, "", temperature, 0.9, 8, "", api_name="/send")
    assert result[3] == "", result[3]
    return result[2]


def retry(client, conversation_id: str, temperature: float = 1.0) -> tuple[Any, ...]:
    return client.predict(conversation_id, temperature, 0.9, 8, "", api_name="/retry")


def prefix_cache(server) -> dict[str, int]:
    return httpx.get(f"{server.url}healthz", timeout=10).json()["engine"]["prefix_cache"]


def test_retry_twice_edit_once_and_the_next_prompt_is_the_stored_path(server, tokenizer):
    client = api_client(server.url, "alice", PASSWORD)
    chat = send(client, "Tell me about cats")
    retry(client, chat)
    retry(client, chat)
    conversation = stored(server, "alice", chat)
    question, latest = conversation.messages
    assert latest.version_count == 3 and latest.version == 3 and len(conversation.tree) == 4
    first_reply = next(m for m in conversation.tree if m.id == latest.versions[0])

    # edit the question: a second version of it, with its own reply; the old branch stays
    result = client.predict(chat, str(question.id), "Tell me about dogs", 0.0, 0.9, 8, "", api_name="/edit")
    assert result[2] == "", result[2]
    conversation = stored(server, "alice", chat)
    edited, edited_reply = conversation.messages
    assert (edited.content, edited.version, edited.version_count) == ("Tell me about dogs", 2, 2)
    assert len(conversation.tree) == 6
    assert "<|im_start|>user\nTell me about dogs<|im_end|>" in tokenizer.decode(edited.token_ids)
    assert edited_reply.prompt_tokens == len(edited.token_ids)  # the prompt: the edited turn alone

    # back to the first question (its last shown reply returns), then to the first reply
    chatbot, status = client.predict(chat, str(question.id), api_name="/switch_version")
    assert status == "" and "cats" in json.dumps(chatbot)
    assert [m.id for m in stored(server, "alice", chat).messages] == [question.id, latest.id]
    client.predict(chat, str(first_reply.id), api_name="/switch_version")
    path = stored(server, "alice", chat).messages
    assert [m.id for m in path] == [question.id, first_reply.id]

    before = prefix_cache(server)
    send(client, "And more?", chat)
    path = stored(server, "alice", chat).messages
    assert [m.id for m in path[:2]] == [question.id, first_reply.id]
    history = [t for m in path[:3] for t in m.token_ids]
    assert path[3].prompt_tokens == len(history)
    text = tokenizer.decode(history)
    assert "Tell me about cats" in text and "dogs" not in text and text.endswith("And more?<|im_end|>\n"
                                                                              "<|im_start|>assistant\n")
    assert tokenizer.decode(first_reply.token_ids) in text
    # the engine found the shown branch's ids in its prefix cache (the question and the first reply's
    # generated tokens but its last, whose keys were never computed): the prompt began with exactly them
    after = prefix_cache(server)
    assert after["hits"] > before["hits"]
    reused = after["reused_tokens"] - before["reused_tokens"]
    assert reused >= len(question.token_ids) + first_reply.completion_tokens - 1


def test_concurrent_retries_keep_the_tree_consistent(server):
    client = api_client(server.url, "carol", PASSWORD)
    chat = send(client, "Count to three")

    def one_retry(_: int) -> str:
        return api_client(server.url, "carol", PASSWORD).predict(chat, 1.0, 0.9, 8, "", api_name="/retry")[2]

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(one_retry, range(4)))
    refused = [s for s in statuses if s]
    assert all("still being written" in s for s in refused), statuses
    conversation = stored(server, "carol", chat)
    replies = [m for m in conversation.tree if m.role == "assistant"]
    assert len(replies) == 1 + len(statuses) - len(refused)
    ids = {m.id for m in conversation.tree}
    assert all(m.parent_id is None or m.parent_id in ids for m in conversation.tree)
    active_children = Counter(m.parent_id for m in conversation.tree if m.active)
    assert all(count == 1 for count in active_children.values())
    assert [m.role for m in conversation.messages] == ["user", "assistant"]
    assert conversation.messages[1].version_count == len(replies)
    assert {m.seq for m in conversation.tree} == set(range(len(conversation.tree)))


def test_ratings_through_the_api_are_the_owners_alone(server, tmp_path):
    alice = api_client(server.url, "alice", PASSWORD)
    bob = api_client(server.url, "bob", PASSWORD)
    chat = send(alice, "Rate this reply")
    retry(alice, chat)
    question, second = stored(server, "alice", chat).messages
    first_id = second.versions[0]

    _, status = alice.predict(chat, str(second.id), "up", "short and right", api_name="/rate")
    assert status.startswith("Rated 👍")
    _, status = alice.predict(chat, str(first_id), "down", "", api_name="/rate")
    assert status.startswith("Rated 👎")
    rating = stored(server, "alice", chat).messages[1].rating
    assert (rating.value, rating.comment) == ("up", "short and right")
    chatbot, status = alice.predict(chat, str(second.id), "down", "too long", api_name="/rate")  # changed
    assert "too long" in json.dumps(chatbot)  # the comment shows under the reply
    assert stored(server, "alice", chat).messages[1].rating.value == "down"
    _, status = alice.predict(chat, str(second.id), "", "", api_name="/rate")  # cleared
    assert status == "Rating removed." and stored(server, "alice", chat).messages[1].rating is None
    alice.predict(chat, str(second.id), "up", "", api_name="/rate")
    _, status = alice.predict(chat, str(second.id), "better than the first", api_name="/comment")
    assert status == "Comment saved."
    assert stored(server, "alice", chat).messages[1].rating.comment == "better than the first"

    # bad ratings get a clear sentence
    assert "Only the model's replies" in alice.predict(chat, str(question.id), "up", "", api_name="/rate")[1]
    assert "at most 200" in alice.predict(chat, str(second.id), "up", "x" * 201, api_name="/rate")[1]

    # bob: every new endpoint treats alice's chat and messages as unknown, whatever chat id he names
    bobs_chat = send(bob, "my own chat")
    for conversation_id in (chat, bobs_chat):
        answers = [
            bob.predict(conversation_id, str(second.id), "down", "", api_name="/rate")[1],
            bob.predict(conversation_id, str(second.id), "nope", api_name="/comment")[1],
            bob.predict(conversation_id, str(first_id), api_name="/switch_version")[1],
            bob.predict(conversation_id, str(question.id), "hijack", 0.0, 0.9, 8, "", api_name="/edit")[2],
        ]
        assert all("not found" in answer.lower() for answer in answers), answers
    assert stored(server, "alice", chat).messages[1].rating.value == "up"
    assert len(stored(server, "alice", chat).tree) == 3  # bob's edit stored nothing

    # bob's preference export holds nothing of alice's; the admin's CLI export has her pair
    bob_cookies = login_cookies(server.url, "bob", PASSWORD)
    bobs_pairs = httpx.get(server.url + "export/all", params={"format": "preferences"}, cookies=bob_cookies, timeout=60)
    assert bobs_pairs.status_code == 200 and bobs_pairs.text == ""
    theirs = httpx.get(server.url + f"export/{chat}", params={"format": "preferences"}, cookies=bob_cookies, timeout=60)
    assert theirs.status_code == 404
    out = tmp_path / "prefs.jsonl"
    environment = {**os.environ, "CHAT_DATA_DIR": str(server.data_dir)}
    environment.pop("CHAT_DATABASE_URL", None)
    done = subprocess.run(
        [PYTHON, "-m", "app", "export", "--format", "preferences", "--all-users", "--out", str(out)],
        cwd=ROOT, env=environment, capture_output=True, text=True, check=True,
    )
    assert "exported" in done.stderr
    pairs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    mine = [p for p in pairs if p["conversation_id"] == chat]
    assert len(mine) == 1 and mine[0]["rater"] == "alice"
    assert mine[0]["chosen"][0]["content"] == second.content
    assert mine[0]["rejected_rating"] == "down" and mine[0]["prompt"] == [{"role": "user",
                                                                          "content": "Rate this reply"}]
    print("\nsample preference line:", out.read_text(encoding="utf-8").splitlines()[0])
