"""The page's handlers called directly: no browser, no server, a fake service.

Each answer goes through Gradio's own postprocessing for the event it is wired to,
so a handler that named a component outside its event's outputs fails here, and the
result is read by elem_id, as the page sees it. The branch rules the handlers share
with the service (app/services/branch.py) are tested first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.config import Settings
from app.services.branch import (
    NOTHING_TO_RETRY,
    edit_base,
    has_exchange,
    last_user_index,
    message_id_at,
    retried_branch,
)
from app.services.chat import ChatEvent, ChatOptions
from app.services.errors import ChatError, ConversationNotFound
from app.web.page.handlers.refusals import OPEN_A_CHAT_FIRST
from app.web.page.page_views import Views
from app.web.page.ui import ServiceHolder, build_ui
from storage.repository import ConversationRecord, MessageRecord

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def unchanged(value: Any) -> bool:
    """An output the event leaves as it is (an update without a value; the HTML rows add their props)."""
    return isinstance(value, dict) and value.get("__type__") == "update" and "value" not in value


def message(id: int, role: str, content: str, parent_id: int | None = None) -> MessageRecord:
    return MessageRecord(id=id, seq=id, role=role, content=content, token_ids=[], params=None, finish_reason=None,
                         prompt_tokens=None, completion_tokens=None, latency_ms=None, created_at=NOW,
                         parent_id=parent_id)


def chat(*messages: MessageRecord, id: str = "c1", tree: tuple[MessageRecord, ...] = ()) -> ConversationRecord:
    return ConversationRecord(id=id, user_id=1, username="ann", title=f"chat {id}", model="tiny", created_at=NOW,
                              updated_at=NOW, messages=list(messages), tree=list(tree))


SYSTEM = message(1, "system", "Be brief.")
Q1 = message(2, "user", "Capital of France?", parent_id=1)
A1 = message(3, "assistant", "Paris.", parent_id=2)
Q2 = message(4, "user", "And Italy?", parent_id=3)
A2 = message(5, "assistant", "Rome.", parent_id=4)
Q1_EDITED = message(6, "user", "Capital of Spain?", parent_id=1)


# ------------------------------------------------------------------ branch rules


def test_an_exchange_needs_a_message_of_the_testers() -> None:
    assert not has_exchange(None)
    assert not has_exchange(chat(SYSTEM))
    assert has_exchange(chat(SYSTEM, Q1))


def test_retry_keeps_the_branch_down_to_the_last_user_message() -> None:
    assert last_user_index([SYSTEM, Q1, A1, Q2, A2]) == 3
    assert retried_branch(chat(SYSTEM, Q1, A1, Q2, A2)) == [SYSTEM, Q1, A1, Q2]
    assert retried_branch(chat(SYSTEM, Q1)) == [SYSTEM, Q1]  # an interrupted reply
    assert last_user_index([SYSTEM]) is None
    with pytest.raises(ChatError, match=NOTHING_TO_RETRY):
        retried_branch(chat(SYSTEM))


def test_an_edit_continues_from_the_edited_messages_parent() -> None:
    conversation = chat(SYSTEM, Q1, A1, Q2, A2, tree=(SYSTEM, Q1, A1, Q2, A2, Q1_EDITED))
    assert edit_base(conversation, Q1) == [SYSTEM]
    assert edit_base(conversation, Q2) == [SYSTEM, Q1, A1]
    assert edit_base(chat(Q1), message(2, "user", "first")) == []


def test_a_bubble_position_names_a_message_of_the_branch_only() -> None:
    conversation = chat(SYSTEM, Q1, A1)
    assert message_id_at(conversation, 1) == Q1.id
    assert message_id_at(conversation, 3) is None
    assert message_id_at(conversation, -1) is None


# ------------------------------------------------------------------ handlers


class FakeService:
    """The few ChatService methods these handlers call, over chats held in memory."""

    model_name = "tiny-model"

    def __init__(self, *chats: ConversationRecord) -> None:
        self.chats = {c.id: c for c in chats}
        self.renamed: dict[str, str] = {}
        self.events: list[ChatEvent | Callable[[], None]] = []

    async def open(self, username: str | None, conversation_id: str) -> ConversationRecord:
        if conversation_id not in self.chats:
            raise ConversationNotFound()
        return self.chats[conversation_id]

    async def list_conversations(self, username: str | None, search: str, limit: int) -> list[Any]:
        return []

    async def last_options(self, username: str | None) -> ChatOptions | None:
        return ChatOptions("Be kind.", 0.3, 0.8, 100)

    def live_text(self, conversation: ConversationRecord) -> str | None:
        return None

    async def rename(self, username: str | None, conversation_id: str, title: str) -> None:
        await self.open(username, conversation_id)
        self.renamed[conversation_id] = title

    async def stop(self, username: str | None, conversation_id: str | None) -> bool:
        return conversation_id in self.chats

    async def send(self, username: str | None, conversation_id: str | None, text: str,
                   options: ChatOptions) -> AsyncIterator[ChatEvent]:
        for event in self.events:
            if callable(event):  # something the tester does meanwhile
                event()
            else:
                yield event


class Page:
    """The built page, its events by API name (or handler name), and what the page would receive."""

    def __init__(self, tmp_path: Path) -> None:
        self.holder = ServiceHolder()
        settings = Settings(data_dir=tmp_path, database_url="sqlite+aiosqlite:///unused.db", cache_dir=tmp_path)
        self.demo = build_ui(self.holder, settings)
        self.context = self.event("load").fn.__self__.context

    def serving(self, service: FakeService) -> Page:
        """The same page over another service, with no page seen loading yet."""
        self.holder.service = service  # type: ignore[assignment]
        self.context.views = Views()
        return self

    @property
    def views(self) -> Views:
        return self.context.views

    def event(self, name: str) -> Any:
        return next(f for f in self.demo.fns.values() if name in (f.api_name, getattr(f.fn, "__name__", None)))

    async def shown(self, fn: Any, answer: Any) -> dict[str, Any]:
        """The answer as Gradio sends it, by elem_id; Gradio refuses a component outside the outputs."""
        values = await self.demo.postprocess_data(fn, answer, None)
        return {block.elem_id: value for block, value in zip(fn.outputs, values, strict=True)}

    async def call(self, name: str, *inputs: Any, request: Any) -> dict[str, Any]:
        fn = self.event(name)
        return await self.shown(fn, await fn.fn(*inputs, request))

    async def stream(self, name: str, *inputs: Any, request: Any) -> list[dict[str, Any]]:
        fn = self.event(name)
        return [await self.shown(fn, frame) async for frame in fn.fn(*inputs, request)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Page:
    return Page(tmp_path_factory.mktemp("page"))


def request(session: str | None = None, **query: str) -> SimpleNamespace:
    return SimpleNamespace(username="ann", session_hash=session, query_params=query)


@pytest.mark.parametrize(("name", "inputs"), [
    ("rename", ("", "a title", "")),
    ("pin", ("", True, "")),
    ("delete", ("", "")),
    ("undo", ("", "")),
    ("switch_version", ("", "5")),
    ("rate", ("", "5", "up", "")),
    ("retry", ("", 0.7, 0.9, 16, "")),
    ("edit", ("", "5", "new text", 0.7, 0.9, 16, "")),
])
async def test_every_action_needs_an_open_chat_and_says_so_in_one_sentence(
    built: Page, name: str, inputs: tuple[Any, ...]
) -> None:
    page = built.serving(FakeService())
    if name in ("retry", "edit"):
        (shown,) = await page.stream(name, *inputs, request=request())
    else:
        shown = await page.call(name, *inputs, request=request())
    assert shown["status"] == f"⚠ {OPEN_A_CHAT_FIRST}"


async def test_loading_a_chats_address_opens_it_with_its_settings(built: Page) -> None:
    page = built.serving(FakeService(chat(SYSTEM, Q1, A1)))
    shown = await page.call("load", "Europe/Paris", request=request("s1", c="c1"))
    assert shown["greeting"] == "Signed in as **ann** · model `tiny-model`"
    assert shown["conversation-id"] == "c1"
    assert shown["status"] == ""
    assert shown["system-prompt"] == "Be brief."
    assert shown["reply-actions"]["visible"] is True
    assert page.views.on_screen("s1") == "c1"
    missing = await page.call("load", "UTC", request=request("s2", c="gone"))
    assert missing["status"].startswith("⚠ Conversation not found.")
    assert missing["system-prompt"] == "Be kind."  # a new chat starts with the last chat's settings


async def test_a_rename_changes_the_status_the_title_box_and_the_list_only(built: Page) -> None:
    service = FakeService(chat(SYSTEM, Q1, A1))
    page = built.serving(service)
    shown = await page.call("rename", "c1", "Trips", "", request=request())
    assert service.renamed == {"c1": "Trips"}
    assert shown["status"] == "Renamed."
    assert shown["row-title"] == ""
    assert "No chats yet" in shown["chat-list"]
    refused = await page.call("rename", "gone", "Trips", "", request=request())
    assert refused["status"].startswith("⚠ Conversation not found.")
    assert unchanged(refused["row-title"])


async def test_stop_puts_send_back(built: Page) -> None:
    page = built.serving(FakeService(chat(SYSTEM, Q1)))
    shown = await page.call("stop", "c1", request=request())
    assert shown["status"] == "Stopped."
    assert (shown["send"]["visible"], shown["stop"]["visible"], shown["reply-actions"]["visible"]) == (
        True, False, True)


async def test_a_sent_message_leaves_the_box_once_stored_and_streams_its_reply(built: Page) -> None:
    service = FakeService()
    service.events = [ChatEvent("conversation", "c9"), ChatEvent("text", "c9", "Hel"), ChatEvent("text", "c9", "Hello")]
    page = built.serving(service)
    stored, first, second = await page.stream("send", "Hi!", "", "", 0.7, 0.9, 16, "", request=request())
    assert (stored["message"], stored["conversation-id"]) == ("", "c9")
    assert "No chats yet" in stored["chat-list"]
    assert unchanged(first["message"]) and unchanged(first["chat-list"])
    assert second["conversation-id"] == "c9"


async def test_a_reply_whose_chat_left_the_screen_shows_that_chat_once_then_nothing(built: Page) -> None:
    other = chat(SYSTEM, message(7, "user", "Other chat?"), id="c2")
    service = FakeService(chat(SYSTEM, Q1, A1), other)
    page = built.serving(service)
    page.views.open_page("s1")
    page.views.show("s1", "c1")
    service.events = [ChatEvent("conversation", "c1"), ChatEvent("text", "c1", "Par"),
                      lambda: page.views.show("s1", "c2"),
                      ChatEvent("text", "c1", "Paris"), ChatEvent("text", "c1", "Paris!")]
    frames = await page.stream("send", "Again?", "c1", "", 0.7, 0.9, 16, "", request=request("s1"))
    own, text, switched, later = frames
    assert own["conversation-id"] == text["conversation-id"] == "c1"
    assert switched["conversation-id"] == "c2"
    assert unchanged(switched["message"])
    assert all(unchanged(value) for value in later.values())
