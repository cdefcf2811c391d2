"""The leaderboard page on a real server: votes stored by the arena's rules, read over HTTP and in Chromium."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from app.services.arena import ArenaService
from storage.database import Database
from storage.repository import Repository
from tests.services.test_arena import POOL, battle_between
from tests.support import login_cookies, tiny_team_server

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_team_server(tmp_path_factory, "leaderboard", ["alice", "bob"], PASSWORD) as process:
        asyncio.run(vote_some(process.database_url))
        yield process


async def vote_some(database_url: str) -> None:
    """Ten votes in which "smol" mostly wins, one flagged vote and one battle left unvoted."""
    database = Database(database_url)
    try:
        repository = Repository(database)
        arena = ArenaService(repository, POOL, random.Random(8))
        alice, bob = await repository.get_user("alice"), await repository.get_user("bob")
        for index in range(10):
            user = (alice, bob)[index % 2]
            battle = await battle_between(arena, repository, user.id)
            smol_side = "a" if battle.model_a == "smol" else "b" if battle.model_b == "smol" else "tie"
            await arena.vote(user.id, battle.id, smol_side if index % 3 else "both bad")
        leaky = await battle_between(arena, repository, alice.id, reply_a="I am Qwen.", reply_b="I am Qwen too.")
        await arena.vote(alice.id, leaky.id, "a")
        await battle_between(arena, repository, bob.id)
    finally:
        await database.dispose()


def test_every_tester_reads_the_board_and_strangers_are_sent_to_log_in(server):
    cookies = login_cookies(server.url, "bob", PASSWORD)
    page = httpx.get(server.url + "leaderboard", cookies=cookies)
    assert page.status_code == 200
    assert page.text.count("<tr>") == 1 + 3  # the header and three models
    assert "10 vote(s) counted; left out: 1 flagged (a reply named a model), 1 battle(s) never voted on" in page.text
    assert 'id="chart"' in page.text and page.text.count('class="interval"') == 3
    board = httpx.get(server.url + "leaderboard?format=json", cookies=cookies).json()
    assert board["standings"][0]["model"] == "smol" and board["counted"] == 10
    assert all(s["lower"] <= s["score"] <= s["upper"] for s in board["standings"])
    assert httpx.get(server.url + "leaderboard?format=json", cookies=cookies).json() == board  # seeded: steady

    later = httpx.get(server.url + "leaderboard?since=2999-01-01", cookies=cookies)
    assert later.status_code == 200 and "No counted votes yet" in later.text
    bad = httpx.get(server.url + "leaderboard?since=last%20week", cookies=cookies)
    assert bad.status_code == 400 and "is not a date; use the form 2026-12-01" in bad.text
    lonely = httpx.post(server.url + "battle/send", data={"text": "hi"}, cookies=cookies)  # one model offered
    assert lonely.status_code == 400 and "at least two models in the arena pool" in lonely.json()["error"]
    stranger = httpx.get(server.url + "leaderboard", follow_redirects=False)
    assert stranger.status_code == 303 and stranger.headers["location"].startswith("/login?next=")


def test_the_board_in_chromium_light_dark_and_phone(server):
    from tests.browser import ARTIFACTS, PHONE, browser_pages, contrast

    cookies = None
    with browser_pages() as new_page:
        for name, viewport, scheme in (("light", None, "light"), ("dark", None, "dark"), ("phone", PHONE, "dark")):
            page = new_page(viewport=viewport, color_scheme=scheme)
            if cookies is None:
                page.goto(server.url + "login?next=/leaderboard")
                page.get_by_label("Username").fill("alice")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                page.locator("h1", has_text="Leaderboard").wait_for()
                cookies = page.context.cookies()
            else:
                page.context.add_cookies(cookies)
                page.goto(server.url + "leaderboard")
            first = page.locator("#board tbody tr").first
            assert first.locator("td").nth(1).inner_text() == "smol"
            assert page.locator("#chart circle.score").count() == 3
            for selector in ("#board td", "#left-out", "#chart .name"):
                ratio = contrast(page, selector)["ratio"]
                assert ratio >= 4.5, (name, selector, ratio)
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0
            page.screenshot(path=ARTIFACTS / f"leaderboard-{name}.png", full_page=True)
