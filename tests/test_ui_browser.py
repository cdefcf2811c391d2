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


PROBE_PAGE = """<!doctype html><html><body><iframe id="framed" src="{target}"></iframe><script>
window.results = {{}};
async function probe(name, path, init) {{
  try {{
    const answer = await fetch("{target}" + path, Object.assign({{credentials: "include"}}, init || {{}}));
    window.results[name] = "read " + answer.status + ": " + (await answer.text()).slice(0, 200);
  }} catch (error) {{
    window.results[name] = "blocked";
  }}
}}
(async () => {{
  await probe("config", "config");
  await probe("token", "gradio_api/token");
  await probe("user", "gradio_api/user");
  await probe("chats", "gradio_api/queue/join", {{method: "POST", headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{fn_index: 0, data: [], session_hash: "probe"}})}});
  await probe("form", "logout", {{method: "POST", mode: "no-cors"}});
  window.done = true;
}})();
</script></body></html>"""


@pytest.fixture
def other_origin_site(server):
    """A page served from another port of the same host: same site, another origin."""
    import http.server
    import threading

    body = PROBE_PAGE.format(target=server.url).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}/"
    finally:
        site.shutdown()
        site.server_close()


def test_a_page_on_another_origin_reads_nothing_of_a_logged_in_user(server, page, other_origin_site):
    refused_by_policy: list[str] = []
    page.on("console", lambda message: refused_by_policy.append(message.text)
            if "Content Security Policy" in message.text else None)
    browser_login(page, server.url, "tester", "tester-password")
    assert page.evaluate("() => document.cookie") == ""  # the login cookie is HttpOnly: no script reads it
    assert refused_by_policy == []  # our own page works under its policy

    page.goto(other_origin_site)
    page.wait_for_function("() => window.done === true", timeout=30_000)
    results = page.evaluate("() => window.results")
    assert results and all(value == "blocked" for value in results.values()), results
    framed = next(frame for frame in page.frames if frame != page.main_frame)
    assert not framed.url.startswith(server.url)  # the chat page refused to be framed

    page.goto(server.url)  # the refused cross-origin logout did nothing: still logged in
    page.locator("#message textarea").wait_for(timeout=30_000)
    page.locator("#logout").click()  # and the page's own Log out ends the login
    page.wait_for_url("**/login", timeout=30_000)
    page.goto(server.url)
    assert "/login" in page.url and page.get_by_label("Username").is_visible()
