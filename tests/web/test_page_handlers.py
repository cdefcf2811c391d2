"""The page's handlers called directly: no browser, no server, the real service under them.

Each answer goes through Gradio's own postprocessing for the event it is wired to,
so a handler that named a component outside its event's outputs fails here, and the
result is read by elem_id, as the page sees it. Under the handlers runs the real
``ChatService`` (tests/service_support.py) over a migrated SQLite repository and a
real tiny engine; chats are made by sending messages and letting the replies finish.
The branch rules the handlers share with the service (app/services/branch.py) are
tested first, on records built in memory (they are pure functions of them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.config import Settings
from app.engine import LoadedModel
from app.services.branch import (
    NOTHING_TO_RETRY,
    edit_base,
    has_exchange,
    last_user_index,
    message_id_at,
    retried_branch,
)
from app.services.chat import ChatOptions, ChatService
from app.services.errors import ChatError
from app.web.page.chat_list import NO_CHATS
from app.web.page.handlers.refusals import OPEN_A_CHAT_FIRST
from app.web.page.page_views import Views
from app.web.page.transcript import message_bubble, shown_as_text
from app.web.page.ui import ServiceHolder, build_ui
from storage.repository import ConversationRecord, MessageRecord, Repository
from tests.engine_support import Gate, gate_on, wait_until, within
from tests.service_support import GREEDY, events_of, running_service

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
USER = "ann"


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


class Page:
    """The built page, its events by API name (or handler name), and what the page would receive."""

    def __init__(self, tmp_path: Path) -> None:
        self.holder = ServiceHolder()
        settings = Settings(data_dir=tmp_path, database_url="sqlite+aiosqlite:///unused.db", cache_dir=tmp_path)
        self.demo = build_ui(self.holder, settings)
        self.context = self.event("load").fn.__self__.context

    def serving(self, service: ChatService) -> Page:
        """The same page over another service, with no page seen loading yet."""
        self.holder.service = service
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
        return await self.shown(fn, await within(fn.fn(*inputs, request)))

    async def frames(self, name: str, *inputs: Any, request: Any) -> AsyncIterator[dict[str, Any]]:
        """A streaming event's frames one at a time, so a test can act between two of them."""
        fn = self.event(name)
        async for frame in fn.fn(*inputs, request):
            yield await self.shown(fn, frame)

    async def stream(self, name: str, *inputs: Any, request: Any) -> list[dict[str, Any]]:
        """Every frame of a streaming event, to its end."""

        async def drain() -> list[dict[str, Any]]:
            return [frame async for frame in self.frames(name, *inputs, request=request)]

        return await within(drain())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Page:
    return Page(tmp_path_factory.mktemp("page"))


@contextlib.asynccontextmanager
async def serving(built: Page, repository: Repository, make_user: Any, loaded: LoadedModel,
                  tmp_path: Path) -> AsyncIterator[tuple[Page, ChatService]]:
    """The page over a real service for ``USER``, on a started engine of ``loaded``."""
    await make_user(USER)
    async with running_service(repository, loaded, tmp_path, rate_limit=10) as service:
        yield built.serving(service), service


@pytest.fixture
async def served(built, repository, make_user, tiny_llama, tmp_path) -> AsyncIterator[tuple[Page, ChatService]]:
    async with serving(built, repository, make_user, tiny_llama, tmp_path) as page_and_service:
        yield page_and_service


@pytest.fixture
async def gated(
    built, repository, make_user, fresh_tiny_llama, tmp_path
) -> AsyncIterator[tuple[Page, ChatService, Gate]]:
    """As ``served``, on a model of its own whose forward a test can hold (tests/engine_support.py's Gate)."""
    async with serving(built, repository, make_user, fresh_tiny_llama, tmp_path) as (page, service):
        with gate_on(fresh_tiny_llama.model) as gate:
            yield page, service, gate


def request(session: str | None = None, **query: str) -> SimpleNamespace:
    """Gradio's request as a handler reads it: the login's username, the page session, the address's query."""
    return SimpleNamespace(username=USER, session_hash=session, query_params=query)


async def a_chat(service: ChatService, text: str, options: ChatOptions = GREEDY) -> str:
    """A chat made as a tester makes one: a message sent, its reply finished. Its id."""
    events = await events_of(service.send(USER, None, text, options))
    assert events[-1].kind == "done"
    return events[0].conversation_id


def bubbles(shown: dict[str, Any]) -> list[tuple[str, str]]:
    """The chat pane of a frame as (role, text) pairs, as Gradio sends them."""
    return [(m["role"], "".join(part["text"] for part in m["content"])) for m in shown["chat"]]


async def stored_title(service: ChatService, conversation_id: str) -> str:
    return next(c.title for c in await service.list_conversations(USER) if c.id == conversation_id)


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
    served: tuple[Page, ChatService], name: str, inputs: tuple[Any, ...]
) -> None:
    page, service = served
    if name in ("retry", "edit"):
        (shown,) = await page.stream(name, *inputs, request=request())
    else:
        shown = await page.call(name, *inputs, request=request())
    assert shown["status"] == f"⚠ {OPEN_A_CHAT_FIRST}"
    assert await service.list_conversations(USER) == []  # nothing was made either


async def test_loading_a_chats_address_opens_it_with_its_settings(served: tuple[Page, ChatService]) -> None:
    page, service = served
    brief = await a_chat(service, "Capital of France?", ChatOptions("Be brief.", 0.0, 0.5, 8))
    await a_chat(service, "Any news?", ChatOptions("Be kind.", 0.0, 0.8, 6))  # the latest chat
    shown = await page.call("load", "Europe/Paris", request=request("s1", c=brief))
    assert shown["greeting"] == f"Signed in as **{USER}** · model `{service.model_name}`"
    assert shown["conversation-id"] == brief
    assert shown["status"] == ""
    assert (shown["system-prompt"], shown["top-p"], shown["max-new-tokens"]) == ("Be brief.", 0.5, 8)
    assert shown["reply-actions"]["visible"] is True
    assert bubbles(shown)[:2] == [("assistant", "*System prompt:* Be brief."), ("user", "Capital of France?")]
    assert page.views.on_screen("s1") == brief
    missing = await page.call("load", "UTC", request=request("s2", c="gone"))
    assert missing["status"].startswith("⚠ Conversation not found.")
    assert not missing["conversation-id"] and bubbles(missing) == []
    # a new chat starts with the settings of the tester's last chat
    assert (missing["system-prompt"], missing["top-p"], missing["max-new-tokens"]) == ("Be kind.", 0.8, 6)


async def test_a_rename_changes_the_status_the_title_box_and_the_list_only(served: tuple[Page, ChatService]) -> None:
    page, service = served
    trip = await a_chat(service, "Capital of France?")
    shown = await page.call("rename", trip, "Trips", "", request=request())
    assert set(shown) == {"status", "chat-list-data", "row-title", "chat-list"}
    assert await stored_title(service, trip) == "Trips"
    assert shown["status"] == "Renamed."
    assert shown["row-title"] == ""
    assert "Trips" in shown["chat-list"] and "Capital of France?" not in shown["chat-list"]
    assert shown["chat-list-data"]["choices"][0][1] == trip
    refused = await page.call("rename", "gone", "Lost", "", request=request())
    assert refused["status"].startswith("⚠ Conversation not found.")
    assert unchanged(refused["row-title"])
    assert "Trips" in refused["chat-list"] and await stored_title(service, trip) == "Trips"


async def test_stop_puts_send_back(gated: tuple[Page, ChatService, Gate]) -> None:
    page, service, gate = gated
    trip = await a_chat(service, "Capital of France?")
    opened = await service.open(USER, trip)
    gate.close()
    frames = page.frames("send", "And Italy?", trip, "", 0.0, 0.9, 8, "", request=request())
    await within(anext(frames))  # the message is stored

    async def drain() -> list[dict[str, Any]]:
        return [frame async for frame in frames]

    rest = asyncio.ensure_future(within(drain()))
    await gate.parked()  # the model is on this reply and cannot finish it meanwhile
    await wait_until(lambda: service.live_text(opened) is not None, what="the reply to be under way")
    shown = await page.call("stop", trip, request=request())
    assert shown["status"] == "Stopped."
    assert (shown["send"]["visible"], shown["stop"]["visible"], shown["reply-actions"]["visible"]) == (
        True, False, True)
    gate.open()
    replies = [bubbles(frame)[-1] for frame in await rest]
    assert replies[0] == ("assistant", "*(stopped)*")  # at once, nothing more after the click
    assert replies[-1][1].startswith("*(stopped)*")  # and so it is stored
    assert (await service.open(USER, trip)).messages[-1].finish_reason == "stopped"


async def test_a_sent_message_leaves_the_box_once_stored_and_streams_its_reply(
    served: tuple[Page, ChatService],
) -> None:
    page, service = served
    frames = page.frames("send", "Hi!", "", "", 0.0, 0.9, 8, "", request=request())
    stored = await within(anext(frames))
    chat_id = stored["conversation-id"]
    assert [(m.role, m.content) for m in (await service.open(USER, chat_id)).messages] == [("user", "Hi!")]
    assert stored["message"] == ""
    assert "Hi!" in stored["chat-list"] and NO_CHATS not in stored["chat-list"]
    assert bubbles(stored) == [("user", "Hi!"), ("assistant", "…")]
    streamed = await within(anext(frames))
    rest = [streamed] + [frame async for frame in frames]
    assert len(rest) >= 2  # at least one piece of text, then the stored reply
    for frame in rest:
        assert unchanged(frame["message"]) and unchanged(frame["chat-list"])
        assert frame["conversation-id"] == chat_id
    reply = (await service.open(USER, chat_id)).messages[-1]
    assert reply.role == "assistant" and reply.content
    texts = [bubbles(frame)[-1][1] for frame in rest]
    assert all(later.startswith(earlier) for earlier, later in pairwise(texts))  # it grew
    assert texts[-2] == shown_as_text(reply.content).strip()  # streamed to its end (Gradio strips the ends)
    assert texts[-1] == message_bubble(reply)["content"].strip()  # then shown as stored


async def test_a_reply_whose_chat_left_the_screen_shows_that_chat_once_then_nothing(
    served: tuple[Page, ChatService],
) -> None:
    page, service = served
    first = await a_chat(service, "Capital of France?")
    other = await a_chat(service, "Other chat?")
    on_page = request("s1", c=first)
    assert (await page.call("load", "UTC", request=on_page))["conversation-id"] == first
    frames = page.frames("send", "Again?", first, "", 0.0, 0.9, 8, "", request=on_page)
    own = await within(anext(frames))
    text = await within(anext(frames))
    assert own["conversation-id"] == text["conversation-id"] == first
    assert bubbles(text)[-2] == ("user", "Again?")
    opened = await page.call("open", other, request=on_page)  # the tester opens another chat meanwhile
    assert opened["conversation-id"] == other
    switched = await within(anext(frames))
    later = [frame async for frame in frames]
    assert switched["conversation-id"] == other
    assert bubbles(switched) == bubbles(opened)
    assert all(unchanged(value) for key, value in switched.items() if key not in ("chat", "conversation-id"))
    assert later and all(unchanged(value) for frame in later for value in frame.values())
    # the reply went on in its own chat, and is stored there
    assert [m.content for m in (await service.open(USER, first)).messages if m.role == "user"] == [
        "Capital of France?", "Again?"]
    assert (await service.open(USER, first)).messages[-1].role == "assistant"
