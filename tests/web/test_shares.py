"""Share links through the real server (subprocess): make one, read it as another tester, continue it, revoke it.

One server for the module (a tiny random Llama with SmolLM2's tokenizer); clients are
httpx for the routes, gradio_client for the page's endpoints, and Chromium for the page
itself. What was stored is read back from the database, token ids included.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.browser import ARTIFACTS, DESKTOP, PHONE, browser_pages, log_in, row_menu, wait_for, wait_until_settled
from tests.support import api_client, login_cookies, read_stored, tiny_team_server

PASSWORD = "shares-password"
HTML = {"Accept": "text/html"}
LINK = re.compile(r"/share/([A-Za-z0-9_-]{16,64})")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    testers = ("alice", "bob", "carol")
    with tiny_team_server(tmp_path_factory, "shares", testers, PASSWORD, CHAT_RATE_LIMIT="200") as process:
        yield process


@pytest.fixture(scope="module")
def cookies(server) -> dict[str, httpx.Cookies]:
    logins = {name: login_cookies(server.url, name, PASSWORD) for name in ("alice", "bob", "carol")}
    logins["admin"] = login_cookies(server.url, "admin", "admin-password")
    return logins


def stored(server, username: str, conversation_id: str):
    """Read in a thread of its own: Playwright's sync API keeps an event loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read_stored(server.database_url, username, conversation_id)).result()


def send(client, text: str, conversation_id: str = "") -> str:
    result = client.predict(text, conversation_id, "Be brief.", 0.0, 0.9, 6, "", api_name="/send")
    assert result[3] == "", result[3]
    return result[2]


def http(server, cookies: httpx.Cookies | None = None) -> httpx.Client:
    return httpx.Client(base_url=server.url, cookies=cookies, timeout=30, follow_redirects=False)


def test_share_read_continue_exactly_and_revoke(server, cookies):
    alice, bob = api_client(server.url, "alice", PASSWORD), api_client(server.url, "bob", PASSWORD)
    chat = send(alice, "Tell me about <b>cats</b>")
    alice.predict(chat, 0.0, 0.9, 6, "", api_name="/retry")  # the reply on screen is version 2 of 2
    before = stored(server, "alice", chat)
    alice.predict(chat, str(before.messages[-1].id), "up", "the better one", api_name="/rate")
    status = alice.predict(chat, api_name="/share")  # the row menu's Share, as an API client calls it
    link_id = LINK.search(status).group(1)
    assert chat.replace("-", "")[:8] not in link_id and len(link_id) >= 22
    shared_ids = [m.token_ids for m in before.messages]

    send(alice, "A later message", chat)  # after sharing: the copy does not change
    with http(server, cookies["bob"]) as client:
        page = client.get(f"/share/{link_id}")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        assert "&lt;b&gt;cats&lt;/b&gt;" in page.text and "<b>cats</b>" not in page.text  # text, never HTML
        assert "version 2 of 2" in page.text and "👍" in page.text and "the better one" in page.text
        assert "A later message" not in page.text and "Continue in my chats" in page.text
        assert "Revoke this link" not in page.text  # for its owner and admins only
        copied = client.post(f"/share/{link_id}/continue", headers=HTML)
        assert copied.status_code == 303 and copied.headers["location"].startswith("/?c=")
    copy_id = copied.headers["location"].removeprefix("/?c=")
    copy = stored(server, "bob", copy_id)
    assert [m.token_ids for m in copy.messages] == shared_ids and copy.model == before.model
    assert [m.rating for m in copy.messages] == [None] * len(copy.messages)  # alice's rating stays hers

    send(bob, "And dogs?", copy_id)
    continued = stored(server, "bob", copy_id).messages
    new_turn, reply = continued[-2:]
    assert [m.token_ids for m in continued[:-2]] == shared_ids
    assert reply.prompt_tokens == sum(map(len, shared_ids)) + len(new_turn.token_ids)  # shared ids + the new turn

    # deleting the chat keeps the copy (and only it); the owner's list says the chat is gone
    alice.predict(chat, "", api_name="/delete")
    with http(server, cookies["bob"]) as client:
        assert client.get(f"/share/{link_id}").status_code == 200
    with http(server, cookies["alice"]) as client:
        mine = {link["id"]: link for link in client.get("/shares").json()}
        assert mine[link_id]["conversation_id"] is None and mine[link_id]["state"] == "active"

    # carol cannot revoke it (the same sentence as an unknown link), alice can
    with http(server, cookies["carol"]) as client:
        refused = client.post(f"/share/{link_id}/revoke")
        unknown = client.post(f"/share/{'x' * 24}/revoke")
        assert refused.status_code == unknown.status_code == 404 and refused.json() == unknown.json()
    with http(server, cookies["bob"]) as client:
        assert client.get(f"/share/{link_id}").status_code == 200
    with http(server, cookies["alice"]) as client:
        assert client.post(f"/share/{link_id}/revoke").json()["state"] == "revoked"
    with http(server, cookies["bob"]) as client:
        gone = client.get(f"/share/{link_id}")
        assert gone.status_code == 410 and "revoked" in gone.text
        assert client.post(f"/share/{link_id}/continue").status_code == 410


def test_an_admin_revokes_any_link_and_links_are_listed(server, cookies):
    carol = api_client(server.url, "carol", PASSWORD)
    chat = send(carol, "Something to share")
    with http(server, cookies["carol"]) as client:
        made = client.post("/shares", data={"conversation_id": chat, "expires_in_days": "7"})
        assert made.status_code == 201 and made.json()["expires_at"]
        link_id = made.json()["id"]
        listed = client.get("/account/shares")
        assert listed.status_code == 200 and f"/share/{link_id}/revoke" in listed.text
    with http(server, cookies["admin"]) as client:
        assert "Revoke this link" in client.get(f"/share/{link_id}").text
        revoked = client.post(f"/share/{link_id}/revoke", headers=HTML)  # the button on the link's page
        assert revoked.status_code == 303 and revoked.headers["location"] == f"/share/{link_id}"
    with http(server, cookies["carol"]) as client:
        assert "revoked" in client.get(f"/share/{link_id}").text
        assert client.get("/shares").json()[0]["state"] == "revoked"


def test_bad_input_gets_a_sentence_and_changes_nothing(server, cookies):
    alice, bob = api_client(server.url, "alice", PASSWORD), api_client(server.url, "bob", PASSWORD)
    chat = send(alice, "Mine alone")
    with http(server, cookies["alice"]) as client:
        own_links = client.get("/shares").json()
    # bob shares alice's chat: the page's endpoint and the route say "not found", as for an unknown id
    assert "Conversation not found" in bob.predict(chat, api_name="/share")
    assert "Open a chat first" in bob.predict("", api_name="/share")
    with http(server, cookies["bob"]) as client:
        for target in (chat, "no-such-chat", "x" * 5000):
            refused = client.post("/shares", data={"conversation_id": target})
            assert refused.status_code == 404 and "Conversation not found" in refused.json()["detail"]
        assert client.get("/shares").json() == []
        for bad in ("a" * 10_000, "short", "..%2F..%2Fadmin", "%00" * 20, "é" * 30, "x" * 65):
            page = client.get(f"/share/{bad}")
            assert page.status_code == 404 and "does not exist" in page.text, (bad[:20], page.status_code)
            assert client.post(f"/share/{bad}/revoke").status_code == 404
        too_long = client.post("/shares", data={"conversation_id": chat, "expires_in_days": "9" * 5000})
        assert too_long.status_code == 400 and "whole number" in too_long.json()["detail"]
    with http(server, cookies["alice"]) as client:
        assert client.get("/shares").json() == own_links
        link_id = client.post("/shares", data={"conversation_id": chat}).json()["id"]
        assert client.post("/shares", data={"conversation_id": chat, "expires_in_days": "0"}).status_code == 400
        # a form posted from another site is refused before anything happens
        assert client.post(f"/share/{link_id}/revoke", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    with http(server) as anonymous:  # no login, CHAT_PUBLIC_SHARES off: the login page, nothing shown
        read = anonymous.get(f"/share/{link_id}")
        assert read.status_code == 303 and read.headers["location"].startswith("/login?next=")
        assert anonymous.post(f"/share/{link_id}/continue").status_code == 303
        assert anonymous.post(f"/share/{link_id}/revoke").status_code == 401
        assert anonymous.get("/shares").status_code == 401
        assert anonymous.get(f"/share/{link_id}/../../config").status_code in (401, 404)
    with http(server, cookies["bob"]) as client:
        assert client.get(f"/share/{link_id}").status_code == 200  # still active


def test_share_in_the_browser_then_continue_and_revoke(server):
    """alice shares from the row menu, bob reads (light, dark, phone), continues and sends; alice revokes."""
    with browser_pages() as new_page:
        # the chat is written through the API (6 new tokens: quick); its settings come with the copy
        send(api_client(server.url, "alice", PASSWORD), "Show me some **bold** and `code`")
        alice = new_page()
        log_in(alice, server.url, "alice", PASSWORD)
        row_menu(alice, "Show me some", "Share (read-only link)")
        link = wait_for(lambda: LINK.search(alice.locator("#status").inner_text()))
        path = link.group(0)

        bob = new_page()
        log_in(bob, server.url, "bob", PASSWORD)
        bob.goto(server.url.rstrip("/") + path)
        bob.get_by_role("button", name="Continue in my chats").wait_for()
        assert "bold" in bob.locator("li.message.user").inner_text()
        bob.screenshot(path=str(ARTIFACTS / "shared-chat.png"), full_page=True)
        bob.emulate_media(color_scheme="dark")
        assert bob.evaluate("() => getComputedStyle(document.body).backgroundColor") == "rgb(15, 17, 21)"
        bob.screenshot(path=str(ARTIFACTS / "shared-chat-dark.png"), full_page=True)
        bob.set_viewport_size(PHONE)
        assert bob.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]  # nothing sideways
        bob.screenshot(path=str(ARTIFACTS / "shared-chat-phone-dark.png"), full_page=True)
        bob.emulate_media(color_scheme="light")
        bob.set_viewport_size(DESKTOP)

        bob.get_by_role("button", name="Continue in my chats").click()
        bob.locator("#message textarea").wait_for()
        copy_id = wait_for(lambda: re.search(r"[?&]c=([0-9a-f-]{36})", bob.evaluate("() => location.href")))
        copy_id = copy_id.group(1)
        wait_for(lambda: "bold" in bob.locator("#chat").inner_text())
        shared_ids = [m.token_ids for m in stored(server, "bob", copy_id).messages]
        bob.locator("#message textarea").fill("Go on")
        bob.locator("#send").click()
        wait_until_settled(bob)
        continued = stored(server, "bob", copy_id).messages
        assert [m.token_ids for m in continued[: len(shared_ids)]] == shared_ids
        assert continued[-1].prompt_tokens == sum(map(len, shared_ids)) + len(continued[-2].token_ids)

        alice.goto(server.url.rstrip("/") + "/account")
        alice.get_by_role("link", name="Your share links").click()
        alice.locator(f'tr[data-link="{link.group(1)}"]').get_by_role("button", name="Revoke").click()
        alice.get_by_text("Revoked the link").wait_for()
        alice.screenshot(path=str(ARTIFACTS / "share-links.png"), full_page=True)
        bob.goto(server.url.rstrip("/") + path)
        assert "revoked by its owner" in bob.locator("body").inner_text()


@pytest.mark.parametrize("public", [True, False])
async def test_anonymous_readers_only_with_public_shares(repository, make_user, public):
    """CHAT_PUBLIC_SHARES decides about readers without a login; continuing always needs one.

    The share routes and the security middleware in front of them, in process over a real
    SQLite database (a second server only to flip one setting would cost a model load).
    """
    from fastapi import FastAPI

    from app.accounts.sessions import LoginSessions
    from app.services.shares import ShareService
    from app.web.login_cookie import COOKIE_NAME, SessionManager
    from app.web.security import SecurityMiddleware
    from app.web.share_routes import SHARE_PATHS, build_share_router
    from storage.repository import NewMessage

    alice = await make_user("alice")
    chat = await repository.create_conversation(alice.id, "Public or not", "m")
    await repository.append_messages(alice.id, chat.id, [NewMessage("user", "hello", [1, 2]),
                                                         NewMessage("assistant", "hi", [3])])
    link = await ShareService(repository).share("alice", chat.id)
    sessions = SessionManager(LoginSessions(repository))

    async def login_of(request) -> str | None:
        login = await sessions.current(request)
        return None if login is None else str(login.user.id)

    app = FastAPI()
    app.include_router(build_share_router(lambda: ShareService(repository), lambda: sessions, public=public))
    app.add_middleware(SecurityMiddleware, login_of=login_of, own_login_check=SHARE_PATHS)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as anonymous:
        read = await anonymous.get(f"/share/{link.id}")
        if public:
            assert read.status_code == 200 and "hello" in read.text and "Log in to continue" in read.text
        else:
            assert read.status_code == 303 and read.headers["location"].startswith("/login?next=%2Fshare%2F")
        assert (await anonymous.post(f"/share/{link.id}/continue")).status_code == 303
        assert (await anonymous.get("/shares")).status_code == 401  # everything else still needs a login
        assert (await anonymous.get(f"/share/{link.id}/x/y")).status_code == 401
    token = await LoginSessions(repository).begin(alice, None)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver",
                                 cookies={COOKIE_NAME: token}) as client:
        assert "Continue in my chats" in (await client.get(f"/share/{link.id}")).text


async def test_an_expired_link_says_so_and_revoking_keeps_the_first_time(repository, make_user):
    from datetime import UTC, datetime, timedelta

    from app.services.shares import EXPIRED, REVOKED, ShareGone, ShareService
    from storage.repository import NewMessage

    alice = await make_user("alice")
    chat = await repository.create_conversation(alice.id, "Short-lived", "m")
    await repository.append_messages(alice.id, chat.id, [NewMessage("user", "hello", [1, 2])])
    past = datetime.now(UTC) - timedelta(seconds=1)
    expired = await repository.create_share(alice.id, chat.id, "e" * 24, expires_at=past)
    service = ShareService(repository)
    with pytest.raises(ShareGone, match=EXPIRED):
        await service.view(expired.id)
    link = await service.share("alice", chat.id, expires_in_days=1)
    assert (await service.view(link.id)).messages[0].token_ids == [1, 2]
    first = await service.revoke("alice", link.id)
    assert (await service.revoke("alice", link.id)).revoked_at == first.revoked_at
    with pytest.raises(ShareGone, match=REVOKED):
        await service.view(link.id)
