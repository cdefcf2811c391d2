"""A tester's session in a real browser (Debian's chromium, headless, driven by Playwright)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.support import ROOT, add_user, browser_login, build_tiny_llama, running_server

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = build_tiny_llama(tmp_path_factory.mktemp("browser-model"))
    data = tmp_path_factory.mktemp("browser-data")
    with running_server(data, str(model), CHAT_MAX_NEW_TOKENS="400") as process:
        add_user(data, "tester", "tester-password")
        yield process


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        yield context.new_page()
        browser.close()


def last_reply(page) -> str:
    bubbles = page.locator("#chat .message.bot, #chat .bot-row .message")
    return bubbles.last.inner_text() if bubbles.count() else ""


def test_a_tester_chats_reloads_reopens_and_exports(server, page):
    browser_login(page, server.url, "tester", "tester-password")
    page.screenshot(path=ARTIFACTS / "1-logged-in.png")

    page.locator("#message textarea").fill("Hello <script>window.__pwned = 1</script> browser")
    page.locator("#send").click()
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = last_reply(page)
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if page.locator("#chat-list label").count() and re.search(r"[?&]c=", page.url) and len(seen) > 3:
            break
        page.wait_for_timeout(30)
    page.wait_for_function("() => new URL(location.href).searchParams.get('c')", timeout=60_000)
    page.screenshot(path=ARTIFACTS / "2-replied.png")
    assert len(seen) >= 3, f"the reply did not stream: {seen}"  # several growing versions were shown
    settled, deadline = last_reply(page), time.monotonic() + 60
    while time.monotonic() < deadline:  # the reply is complete once it stops changing
        page.wait_for_timeout(1500)
        if last_reply(page) == settled:
            break
        settled = last_reply(page)
    assert "failed" not in settled
    assert page.evaluate("() => window.__pwned") is None
    user_bubble = page.locator("#chat .message.user, #chat .user-row .message").first.inner_text()
    assert "<script>window.__pwned = 1</script>" in user_bubble  # shown as text
    conversation_id = re.search(r"[?&]c=([0-9a-f-]+)", page.url).group(1)

    page.goto(server.url)  # reload without the chat in the address
    page.locator("#chat-list label").first.wait_for(timeout=30_000)
    title = page.locator("#chat-list label").first
    assert "Hello <script>" in title.inner_text()
    assert page.evaluate("() => window.__pwned") is None
    title.click()
    page.wait_for_function(
        "(id) => new URL(location.href).searchParams.get('c') === id", arg=conversation_id, timeout=30_000
    )
    page.locator("#chat .message.user, #chat .user-row .message").first.wait_for(timeout=30_000)
    assert page.locator("#chat .message.bot, #chat .bot-row .message").count() >= 1
    page.screenshot(path=ARTIFACTS / "3-reopened.png")

    page.get_by_text("Export", exact=True).click()
    page.locator("#export-json").click()
    link = page.locator("#export-file a").first
    link.wait_for(timeout=30_000)
    with page.expect_download() as download_info:
        link.click()
    document = json.loads(Path(download_info.value.path()).read_text())
    page.screenshot(path=ARTIFACTS / "4-exported.png")
    conversation = document["conversations"][0]
    assert conversation["id"] == conversation_id and conversation["user"] == "tester"
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]
    assert conversation["messages"][0]["content"] == "Hello <script>window.__pwned = 1</script> browser"

    page.goto(f"{server.url}?c={conversation_id}")  # a shared link opens the chat directly
    page.locator("#chat .message.user, #chat .user-row .message").first.wait_for(timeout=30_000)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=ARTIFACTS / "5-phone.png")
