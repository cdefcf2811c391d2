"""A blind battle in a real browser: Chromium on the real server with two tiny embedded models in the
arena pool. The tester sends a message, both replies stream into columns A and B with the names
hidden, votes once, sees the names, and the leaderboard lists both models with intervals."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.browser import ARTIFACTS, CHROMIUM, PHONE, browser_pages, wait_for
from tests.support import browser_login, login_cookies, two_model_server

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (apt-get install chromium)")

PASSWORD = "battle-password"
MODELS = """
[[models]]
name = "tiny-a"
label = "Tiny A"
source = "{a}"
arena = true
max_new_tokens = 12

[[models]]
name = "tiny-b"
label = "Tiny B"
source = "{b}"
arena = true
aliases = ["Bee"]
max_new_tokens = 12
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with two_model_server(tmp_path_factory, "battle-browser", MODELS, ["rater", "other"], PASSWORD) as process:
        yield process


def battles_of(server, username: str):
    from storage.database import Database
    from storage.repository import Repository

    async def read():
        database = Database(server.database_url)
        try:
            repository = Repository(database)
            return await repository.list_battles((await repository.get_user(username)).id)
        finally:
            await database.dispose()

    with ThreadPoolExecutor(1) as pool:  # off Playwright's thread: its sync API keeps a loop running
        return pool.submit(asyncio.run, read()).result()


def test_a_blind_battle_streams_both_sides_hides_the_names_until_the_vote(server):
    with browser_pages() as new_page:
        page = new_page(color_scheme="light")
        browser_login(page, server.url, "rater", PASSWORD)
        page.goto(server.url + "battle")
        page.locator("#prompt").fill("Which is the capital of France?")
        assert page.locator("#vote-a").is_disabled()  # nothing to judge yet
        page.locator("#prompt").press("Enter")
        wait_for(lambda: page.locator("#vote-a").is_enabled(), timeout=90)  # both replies are complete
        for side in ("a", "b"):
            turns = page.locator(f"#chat-{side} .turn")
            assert turns.count() == 2 and turns.nth(0).inner_text() == "Which is the capital of France?"
            assert turns.nth(1).inner_text().strip()  # the model's reply
        assert (page.locator("#label-a").inner_text(), page.locator("#label-b").inner_text()) == ("Model A", "Model B")
        page.screenshot(path=ARTIFACTS / "battle-before-vote.png", full_page=True)

        page.locator("#vote-a").click()
        wait_for(lambda: page.locator("#label-a").inner_text() != "Model A", timeout=15)
        shown = {page.locator("#label-a").inner_text(), page.locator("#label-b").inner_text()}
        battle = battles_of(server, "rater")[0]
        labels = {"tiny-a": "Tiny A", "tiny-b": "Tiny B"}
        assert shown == {f"A: {labels[battle.model_a]}", f"B: {labels[battle.model_b]}"}
        assert battle.winner == "model_a" and battle.flag is None
        assert page.locator("#vote-b").is_disabled() and page.locator("#send").is_disabled()
        assert "Your vote is in" in page.locator("#status").inner_text()
        page.screenshot(path=ARTIFACTS / "battle-after-vote.png", full_page=True)

        for name, viewport, scheme in (("dark", None, "dark"), ("phone", PHONE, "dark")):
            other = new_page(viewport=viewport, color_scheme=scheme)
            other.context.add_cookies(page.context.cookies())
            other.goto(server.url + "battle")
            other.locator("#prompt").fill("Tell me a joke")
            other.locator("#send").click()
            wait_for(lambda other=other: other.locator("#vote-tie").is_enabled(), timeout=90)
            overflow = other.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0
            other.screenshot(path=ARTIFACTS / f"battle-{name}.png", full_page=True)

    cookies = login_cookies(server.url, "rater", PASSWORD)
    again = httpx.post(server.url + f"battle/{battle.id}/vote", data={"choice": "b"}, cookies=cookies)
    assert again.status_code == 400 and "already has your vote" in again.json()["error"]
    stranger = httpx.post(server.url + f"battle/{battle.id}/vote", data={"choice": "b"},
                          cookies=login_cookies(server.url, "other", PASSWORD))
    assert stranger.status_code == 404 and "Battle not found" in stranger.json()["error"]
    assert battles_of(server, "rater")[-1].winner == "model_a"  # neither changed the vote
    board = httpx.get(server.url + "leaderboard?format=json", cookies=cookies).json()
    assert {s["label"] for s in board["standings"]} == {"Tiny A", "Tiny B"} and board["counted"] == 1
    assert board["unfinished"] == 2  # the dark and phone battles were never voted on
    assert all(s["lower"] <= s["score"] <= s["upper"] for s in board["standings"])
    page_text = httpx.get(server.url + "leaderboard", cookies=cookies).text
    assert "Tiny A" in page_text and "Tiny B" in page_text


def test_a_vote_before_both_replies_is_refused_and_a_foreign_post_too(server):
    cookies = login_cookies(server.url, "other", PASSWORD)
    with httpx.stream("POST", server.url + "battle/send", data={"text": "hello"}, cookies=cookies,
                      timeout=90) as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert any('"battle"' in line for line in lines) and lines[-1] == 'data: {"finished": true}'
    battle = battles_of(server, "other")[0]
    forged = httpx.post(server.url + f"battle/{battle.id}/vote", data={"choice": "a"}, cookies=cookies,
                        headers={"Sec-Fetch-Site": "cross-site"})
    assert forged.status_code == 403
    unknown = httpx.post(server.url + "battle/send", data={"text": "hi", "battle_id": "nope"}, cookies=cookies)
    assert unknown.status_code == 404 and "Battle not found" in unknown.json()["error"]
    empty = httpx.post(server.url + "battle/send", data={"text": "  "}, cookies=cookies, timeout=30)
    assert empty.status_code == 200  # the refusal travels in the stream, per side, in words
    assert "error" in empty.text
    assert battles_of(server, "other")[0].winner is None
    # until the vote, each side stays on the battle page: opened elsewhere it would show its model
    side = httpx.get(server.url + f"export/{battle.conversation_a}", cookies=cookies, timeout=30)
    assert side.status_code == 400 and "one side of a blind battle you have not voted on yet" in side.text
    assert httpx.post(server.url + f"battle/{battle.id}/vote", data={"choice": "tie"}, cookies=cookies,
                      timeout=30).status_code == 200
    side = httpx.get(server.url + f"export/{battle.conversation_a}", cookies=cookies, timeout=30)
    assert side.status_code == 200 and side.json()["conversations"][0]["model"] == battle.model_a
