"""A model per chat in a real browser: Chromium on the real server with a models file of two tiny
embedded models and a variant. The tester picks a model for a new chat, sees it in the chat's model
control after a reload, picking a variant fills in its temperature, and the export names the model
of every message; with one model offered the control is not shown.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.browser import (
    ARTIFACTS,
    CHROMIUM,
    PHONE,
    browser_pages,
    conversation_in_address,
    log_in,
    open_row,
    row_menu,
    wait_for,
    wait_until_loaded,
    wait_until_settled,
)
from tests.models import SERVER_CONTEXT, build_tiny_llama
from tests.support import add_user, read_stored, running_server, two_model_server

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (apt-get install chromium)")

PASSWORD = "browser-password"
MODELS = """
[[models]]
name = "tiny-a"
label = "Tiny A"
source = "{a}"

[[models]]
name = "tiny-b"
label = "Tiny B"
source = "{b}"

[[models]]
name = "tiny-a-warm"
label = "Tiny A, warm"
base = "tiny-a"
temperature = 1.25
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with two_model_server(tmp_path_factory, "models-browser", MODELS, ["picker"], PASSWORD) as process:
        yield process


@pytest.fixture(scope="module")
def pages():
    with browser_pages() as new_page:
        yield new_page


def stored(server, username: str, conversation_id: str):
    """Read the database off Playwright's thread (its sync API keeps an event loop running here)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read_stored(server.database_url, username, conversation_id)).result()


def model_shown(page) -> str:
    return page.locator("#model-choice input").input_value()


def pick_model(page, label: str) -> None:
    page.locator("#model-choice input").click()
    page.get_by_role("option", name=label, exact=True).click()


def send(page, text: str) -> None:
    box = page.locator("#message textarea")
    box.click()
    box.fill(text)
    box.press("Enter")


def test_pick_a_model_for_a_new_chat_see_it_after_reload_and_in_the_export(server, pages):
    page = pages()
    log_in(page, server.url, "picker", PASSWORD)
    wait_for(lambda: model_shown(page) == "Tiny A")  # the default first
    pick_model(page, "Tiny B")
    send(page, "Hello model B")
    wait_until_settled(page)
    chat_id = wait_for(lambda: conversation_in_address(page))
    record = stored(server, "picker", chat_id)
    assert record.model == "tiny-b" and [m.model for m in record.messages] == ["tiny-b", "tiny-b"]
    page.screenshot(path=ARTIFACTS / "models-1-picked.png")

    page.goto(server.url)  # a new chat after a reload: the default again
    wait_until_loaded(page)
    wait_for(lambda: model_shown(page) == "Tiny A")
    open_row(page, "Hello model B")  # reopened: the control shows the chat's own model
    wait_for(lambda: conversation_in_address(page) == chat_id)
    wait_for(lambda: model_shown(page) == "Tiny B")
    with page.expect_download(timeout=10_000) as download_info:
        row_menu(page, "Hello model B", "Export JSON")
    document = json.loads(Path(download_info.value.path()).read_text())
    assert [m["model"] for m in document["conversations"][0]["messages"]] == ["tiny-b", "tiny-b"]


def test_picking_a_variant_fills_in_its_temperature(server, pages):
    page = pages()
    log_in(page, server.url, "picker", PASSWORD)
    page.locator("#new-chat").click()
    wait_for(lambda: model_shown(page) == "Tiny A")
    pick_model(page, "Tiny A, warm")
    page.locator("#settings-sidebar").get_by_role("button").first.click()  # open the settings panel
    wait_for(lambda: page.locator("#temperature input[type=number]").input_value() == "1.25")
    send(page, "Hello warm")
    wait_until_settled(page)
    chat_id = wait_for(lambda: conversation_in_address(page))
    record = stored(server, "picker", chat_id)
    assert record.model == "tiny-a-warm"
    assert [(m.model, m.variant) for m in record.messages] == [("tiny-a", "tiny-a-warm")] * 2
    assert record.messages[0].params["temperature"] == 1.25


def test_a_model_that_is_down_is_marked_in_the_control_and_refused_with_its_sentence(server, pages):
    pid = httpx.get(server.url + "healthz", timeout=30).json()["models"]["tiny-b"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not httpx.get(server.url + "healthz", timeout=30).json()["models"]["tiny-b"]["healthy"])
    page = pages()
    log_in(page, server.url, "picker", PASSWORD)
    page.locator("#model-choice input").click()
    page.get_by_role("option", name="Tiny B (unavailable)", exact=True).click()
    send(page, "Hello while B is down")
    status = page.locator("#status")
    wait_for(lambda: "The model Tiny B is unavailable right now" in status.inner_text())
    assert page.locator("#message textarea").input_value() == "Hello while B is down"  # nothing lost
    wait_for(lambda: page.locator("#send").is_visible())  # Send is back: nothing is being written
    page.screenshot(path=ARTIFACTS / "models-3-unavailable.png")
    # the engine process is started again; the next page shows it available
    wait_for(lambda: httpx.get(server.url + "healthz", timeout=30).json()["models"]["tiny-b"]["healthy"], 120)
    page.goto(server.url)
    wait_until_loaded(page)
    page.locator("#model-choice input").click()
    page.get_by_role("option", name="Tiny B", exact=True).wait_for(timeout=10_000)


def test_on_a_phone_the_model_control_is_in_the_chat_list(server, pages):
    page = pages(viewport=PHONE, color_scheme="dark")
    log_in(page, server.url, "picker", PASSWORD)
    page.screenshot(path=ARTIFACTS / "models-2-phone-dark.png")
    assert page.locator("#model-choice").count() == 1


def test_with_one_model_the_control_is_hidden(tmp_path, pages):
    model = build_tiny_llama(tmp_path / "only", max_positions=SERVER_CONTEXT)
    (tmp_path / "data").mkdir()
    with running_server(tmp_path / "data", str(model)) as one:
        add_user(tmp_path / "data", "picker", PASSWORD)
        page = pages()
        log_in(page, one.url, "picker", PASSWORD)
        assert not page.locator("#model-choice").is_visible()
