"""Driving the chat page in headless Chromium (Debian's, through Playwright), as a person would.

The login steps live in ``tests.support.browser_login`` only, so a change of the login page changes one place.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import ROOT, browser_login

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
USER_BUBBLES = "#chat .message.user, #chat .user-row .message"
BOT_BUBBLES = "#chat .message.bot, #chat .bot-row .message"
ROWS = "#chat-list .chat-row"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 860}


@contextmanager
def browser_pages() -> Iterator[Callable[..., Any]]:
    """Yields ``new_page(viewport=..., color_scheme=...)``; everything is closed afterwards."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)

        def new_page(viewport: dict[str, int] | None = None, color_scheme: str = "light") -> Any:
            context = browser.new_context(
                viewport=viewport or DESKTOP, color_scheme=color_scheme, accept_downloads=True
            )
            return context.new_page()

        try:
            yield new_page
        finally:
            browser.close()


def log_in(page: Any, url: str, username: str, password: str) -> None:
    """Our login page (``tests.support.browser_login``, the one place with the login steps), then the chat page."""
    browser_login(page, url, username, password)
    wait_until_loaded(page)


def wait_until_loaded(page: Any) -> None:
    """The page's load event has filled the greeting (the chat list and settings come with it)."""
    page.locator("#greeting").get_by_text("Signed in as").wait_for(timeout=30_000)


def row_texts(page: Any) -> list[str]:
    """The chat list as shown: each row's title and time (``"title 14:32"``)."""
    return [" ".join(text.replace("⋯", "").split()) for text in page.locator(ROWS).all_inner_texts()]


def open_row(page: Any, text: str) -> None:
    """Click the first chat whose row shows ``text``."""
    page.locator(ROWS, has_text=text).first.locator(".chat-open").click()


def row_menu(page: Any, text: str, item: str) -> None:
    """Open the ⋯ menu of the first row showing ``text`` and pick ``item``."""
    page.locator(ROWS, has_text=text).first.locator(".chat-menu-button").click()
    page.locator("#chat-row-menu").get_by_role("menuitem", name=item).click()


def last_reply(page: Any) -> str:
    bubbles = page.locator(BOT_BUBBLES)
    return bubbles.last.inner_text() if bubbles.count() else ""


def conversation_in_address(page: Any) -> str | None:
    """The chat id in the address bar, read from the page itself (``page.url`` lags behind replaceState)."""
    match = re.search(r"[?&]c=([0-9a-f-]+)", page.evaluate("() => location.href"))
    return match.group(1) if match else None


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def wait_until_settled(page: Any, quiet: float = 1.5, timeout: float = 90.0) -> str:
    """The last reply once it has stopped changing for ``quiet`` seconds."""
    settled, deadline = last_reply(page), time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.wait_for_timeout(quiet * 1000)
        now = last_reply(page)
        if now == settled and not page.locator("#stop").is_visible():
            return now
        settled = now
    raise AssertionError("the reply never settled")


CONTRAST_JS = """
(selector) => {
  const parse = (c) => { const m = c.match(/[\\d.]+/g).map(Number); return m.length > 3 ? m : [...m, 1]; };
  const luminance = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const element = document.querySelector(selector);
  const textElement = element.querySelector('p') || element;
  const fg = parse(getComputedStyle(textElement).color);
  let bg = null, node = textElement;
  while (node && node.nodeType === 1) {
    const c = parse(getComputedStyle(node).backgroundColor);
    if (c[3] > 0.5) { bg = c; break; }
    node = node.parentElement;
  }
  bg = bg || parse(getComputedStyle(document.body).backgroundColor);
  const [a, b] = [luminance(fg), luminance(bg)].sort((x, y) => y - x);
  return {ratio: (a + 0.05) / (b + 0.05), fg: fg.slice(0, 3), bg: bg.slice(0, 3)};
}
"""


def contrast(page: Any, selector: str) -> dict[str, Any]:
    """WCAG contrast ratio of the text in ``selector`` against what is painted behind it."""
    return page.evaluate(CONTRAST_JS, selector)
