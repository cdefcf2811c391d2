"""Two app replicas over one PostgreSQL and one llama.cpp server, as a team would scale out."""

from __future__ import annotations

import asyncio
import os
import subprocess

import httpx
import pytest
from gradio_client import Client

from storage.database import Database
from storage.repository import Repository
from tests.llama_support import LlamaServer, llama_server_binary
from tests.page_client import bubble_texts, send
from tests.support import POSTGRES_URL, PYTHON, ROOT, ServerProcess, login_cookies, reset_postgres

pytestmark = pytest.mark.skipif(
    POSTGRES_URL is None, reason="CHAT_TEST_POSTGRES_URL is not set: replicas share PostgreSQL"
)

PASSWORD = "password-123"


def cli(*args: str, password: str | None = None) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "CHAT_DATABASE_URL"}
    subprocess.run([PYTHON, "-m", "app", "--database-url", str(POSTGRES_URL), *args], cwd=ROOT, env=environment,
                   input=None if password is None else password + "\n", text=True, check=True, capture_output=True)


def logged_in(replica: ServerProcess, cookies: dict[str, str]) -> bool:
    response = httpx.get(replica.url, cookies=cookies, follow_redirects=False, timeout=10)
    return response.status_code == 200


def messages_of(conversation_id: str) -> list:
    async def read():
        database = Database(str(POSTGRES_URL))
        try:
            repository = Repository(database)
            user = await repository.get_user("tess")
            return (await repository.get_conversation(user.id, conversation_id)).messages
        finally:
            await database.dispose()

    return asyncio.run(read())


def test_two_replicas_share_logins_chats_and_signups_across_restarts(tmp_path):
    """Log in on replica 1, continue the chat on replica 2, restart both: still logged in, nothing lost.

    A password change ends the old logins on both replicas; a sign-up on one is an account on both.
    (The slow-down after failed logins is per replica, as the README says.)
    """
    asyncio.run(reset_postgres(str(POSTGRES_URL)))
    llama = LlamaServer(llama_server_binary(), tmp_path, parallel=4, context=4096).start()
    env = {"CHAT_DATABASE_URL": str(POSTGRES_URL), "CHAT_ENGINE_URL": llama.url,
           "CHAT_ADMIN_PASSWORD": "admin-password", "CHAT_SIGNUP": "open"}
    replicas = []
    for name in ("replica1", "replica2"):
        (tmp_path / name).mkdir()
        replicas.append(ServerProcess(tmp_path / name, "smollm2", env))
    try:
        for replica in replicas:  # one after the other: the first one migrates the database
            replica.start()
        one, two = replicas
        cli("users", "add", "tess", "--password-stdin", password=PASSWORD)
        cookies = dict(login_cookies(one.url, "tess", PASSWORD))
        assert logged_in(one, cookies) and logged_in(two, cookies)  # a login on one is a login on both

        first = Client(one.url, httpx_kwargs={"cookies": cookies}, verbose=False)
        _, final = send(first, "Hello from replica one", max_new_tokens=12, temperature=0.0)
        conversation_id = final[2]
        second = Client(two.url, httpx_kwargs={"cookies": cookies}, verbose=False)
        opened = bubble_texts(second.predict(conversation_id, api_name="/open")[0])
        assert opened[0] == ("user", "Hello from replica one")
        send(second, "And hello from replica two", conversation_id, max_new_tokens=12, temperature=0.0)

        for replica in replicas:
            replica.stop()
        for replica in replicas:
            replica.start()
        assert logged_in(one, cookies) and logged_in(two, cookies)  # still logged in after restarts
        messages = messages_of(conversation_id)
        assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
        assert all(m.token_ids for m in messages) and all(m.content for m in messages)
        reopened = bubble_texts(Client(one.url, httpx_kwargs={"cookies": cookies}, verbose=False)
                                .predict(conversation_id, api_name="/open")[0])
        assert [text for _, text in reopened][::2] == ["Hello from replica one", "And hello from replica two"]
        assert messages[3].prompt_tokens == sum(len(m.token_ids) for m in messages[:3])  # token-exact history

        cli("users", "set-password", "tess", "--password-stdin", password="another-password-456")
        assert not logged_in(one, cookies) and not logged_in(two, cookies)  # old logins end everywhere
        assert logged_in(two, dict(login_cookies(two.url, "tess", "another-password-456")))

        form = {"username": "newcomer", "password": "newcomer-password"}
        assert httpx.post(two.url + "signup", data=form).status_code == 303  # signed up on replica 2
        again = httpx.post(one.url + "signup", data=form)  # the name is taken on replica 1 too
        assert again.status_code == 400 and "already exists" in again.text
        assert logged_in(one, dict(login_cookies(one.url, "newcomer", "newcomer-password")))
    finally:
        for replica in replicas:
            replica.stop()
        llama.kill()
