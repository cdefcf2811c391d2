"""The chat service in process: a real SQLite repository, a real tiny engine, no server and no page.

Each test drives ``ChatService`` as the web layer does (username from the login, ids
from the client) and checks what the database holds afterwards, so a broken rule
(ownership, refusal before storing, durability order, versions) fails here at once.
The server and page sides are in tests/web/test_server.py and tests/e2e/test_ui_browser.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from itertools import pairwise

import pytest

from app.engine import Engine
from app.services.chat import ChatEvent, ChatOptions, ChatService, interrupted, title_from
from app.services.errors import Busy, ChatError, ConversationNotFound, MessageNotFound, RateLimited
from storage.errors import StorageUnavailable
from storage.repository import NewMessage
from tests.engine_support import prompt_format, running_engine
from tests.service_support import GREEDY, RATE_LIMIT, events_of, make_service, running_service

NOT_FOUND = ConversationNotFound().args[0]


@pytest.fixture
async def users(make_user) -> None:
    await make_user("alice")
    await make_user("bob")


@pytest.fixture
async def service(repository, users, tiny_llama, tmp_path) -> AsyncIterator[ChatService]:
    async with running_service(repository, tiny_llama, tmp_path) as service:
        yield service


async def send(service: ChatService, username: str, text: str, chat_id: str | None = None) -> list[ChatEvent]:
    return await events_of(service.send(username, chat_id, text, GREEDY))


@contextlib.contextmanager
def refused(kind: type[ChatError], sentence: str, *, prefix: bool = False) -> Iterator[None]:
    """The call is refused with exactly ``sentence`` (or a sentence starting with it)."""
    with pytest.raises(kind) as caught:
        yield
    assert str(caught.value).startswith(sentence) if prefix else str(caught.value) == sentence


async def chat_count(service: ChatService, username: str) -> int:
    return len(await service.list_conversations(username))


# ---------------------------------------------------------------- sending


async def test_send_stores_the_message_and_then_the_reply_with_their_token_ids(service, tiny_llama):
    options = ChatOptions(system_prompt="Be brief.", temperature=0.0, top_p=0.5, max_new_tokens=8)
    events = await events_of(service.send("alice", None, "Hello   there,\nmodel", options))

    assert events[0].kind == "conversation" and events[-1].kind == "done"
    chat_id = events[0].conversation_id
    assert {event.conversation_id for event in events} == {chat_id}
    alice = await service.repository.get_user("alice")
    stored = await service.repository.get_conversation(alice.id, chat_id)
    assert stored.title == title_from("Hello   there,\nmodel") == "Hello there, model"
    assert stored.model == tiny_llama.name
    system, user, reply = stored.messages
    formats = prompt_format(tiny_llama)
    assert (system.role, system.content, system.token_ids) == ("system", "Be brief.", formats.system_turn("Be brief."))
    assert user.role == "user" and user.token_ids == formats.user_turn([("system", "Be brief.")], user.content)
    assert user.params["top_p"] == 0.5 and user.params["max_new_tokens"] == 8
    assert reply.role == "assistant" and reply.finish_reason in ("eos", "length")
    assert 1 <= reply.completion_tokens <= 8 and reply.token_ids
    assert reply.id == events[-1].message.id and reply.content == events[-1].text
    assert not interrupted(stored)
    # the next message's prompt is built from those stored ids, and lands below the reply
    more = await send(service, "alice", "and again", chat_id)
    again = await service.open("alice", chat_id)
    assert [m.role for m in again.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert again.messages[3].parent_id == reply.id and more[-1].message.id == again.messages[4].id


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("", "Type a message first: it is empty."),
        (" \n\t ", "Type a message first: it is empty."),
        ("x" * 201, "The message is 201 characters long; the limit is 200. Shorten it."),
        ("bell\x07", "The message contains a control character (U+0007); remove it."),
        ("half \ud800 pair", "The message contains invalid Unicode (an unpaired surrogate)."),
        (42, "The message must be text."),
    ],
)
async def test_a_bad_message_is_refused_with_its_sentence_and_nothing_is_stored(service, text, sentence):
    for _ in range(RATE_LIMIT + 1):  # refusals before storing cost nothing from the rate either
        with pytest.raises(ChatError) as caught:
            await send(service, "alice", text)
        assert str(caught.value) == sentence
    assert await chat_count(service, "alice") == 0
    events = await send(service, "alice", "a fine message")
    assert events[-1].kind == "done" and await chat_count(service, "alice") == 1


async def test_bad_settings_are_refused_in_words_before_anything_is_stored(service):
    for options, sentence in (
        (ChatOptions(temperature=float("nan"), max_new_tokens=8), "Temperature must be a finite number; got 'nan'."),
        (ChatOptions(max_new_tokens=65), "Max new tokens must be between 1 and 64."),
        (
            ChatOptions(system_prompt="a\x00b", max_new_tokens=8),
            "The message contains a control character (U+0000); remove it.",
        ),
    ):
        with pytest.raises(ChatError) as caught:
            await events_of(service.send("alice", None, "hello", options))
        assert str(caught.value) == sentence
    assert await chat_count(service, "alice") == 0


async def test_the_rate_limit_refuses_the_message_over_it_and_stores_nothing_of_it(service):
    first = await send(service, "alice", "one")
    chat_id = first[0].conversation_id
    await send(service, "alice", "two", chat_id)
    await events_of(service.retry("alice", chat_id, GREEDY))  # a retry counts as a message too
    with pytest.raises(RateLimited) as caught:
        await send(service, "alice", "four", chat_id)
    assert str(caught.value) == (
        f"Slow down: at most {RATE_LIMIT} messages per 60 seconds. Your message was not sent; try again shortly."
    )
    chat = await service.open("alice", chat_id)
    assert [m.content for m in chat.messages if m.role == "user"] == ["one", "two"]
    assert (await send(service, "bob", "my own rate"))[-1].kind == "done"  # per user


# ---------------------------------------------------------------- ownership


async def test_someone_elses_chat_is_not_found_for_every_action(service):
    events = await send(service, "alice", "alice's secret")
    chat_id, reply = events[0].conversation_id, events[-1].message
    refusals = {
        "open": service.open("bob", chat_id),
        "rename": service.rename("bob", chat_id, "mine now"),
        "pin": service.pin("bob", chat_id, True),
        "delete": service.delete("bob", chat_id),
        "undo": service.undo("bob", chat_id),
        "rate": service.rate("bob", chat_id, reply.id, "down"),
        "show_version": service.show_version("bob", chat_id, reply.id),
        "export": service.export("bob", "json", chat_id),
        "send": events_of(service.send("bob", chat_id, "hi", GREEDY)),
        "retry": events_of(service.retry("bob", chat_id, GREEDY)),
        "edit": events_of(service.edit("bob", chat_id, reply.id, "hi", GREEDY)),
    }
    for action, call in refusals.items():
        with pytest.raises(ConversationNotFound) as caught:
            await call
        assert str(caught.value) == NOT_FOUND, action
    assert not await service.stop("bob", chat_id)
    chat = await service.open("alice", chat_id)
    summary = (await service.list_conversations("alice"))[0]
    assert (summary.title, summary.pinned) == ("alice's secret", False)
    assert [m.id for m in chat.messages][-1] == reply.id and chat.messages[-1].rating is None


async def test_a_message_id_from_another_chat_is_message_not_found(service):
    alice_chat = (await send(service, "alice", "mine"))[0].conversation_id
    bob_events = await send(service, "bob", "his")
    bob_chat, bob_reply = bob_events[0].conversation_id, bob_events[-1].message
    for call in (
        service.rate("alice", alice_chat, bob_reply.id, "up"),
        service.show_version("alice", alice_chat, bob_reply.id),
        events_of(service.edit("alice", alice_chat, bob_reply.id, "changed", GREEDY)),
    ):
        with pytest.raises(MessageNotFound) as caught:
            await call
        assert str(caught.value) == "Message not found. It may have been deleted; reopen the chat."
    assert (await service.open("bob", bob_chat)).messages[-1].rating is None
    assert [m.content for m in (await service.open("alice", alice_chat)).all_messages() if m.role == "user"] == ["mine"]


async def test_nobody_logged_in_or_a_removed_account_is_refused(service):
    with refused(ChatError, "Please log in."):
        await service.list_conversations(None)
    with refused(ChatError, "Your account no longer exists; ask an admin."):
        await service.open("carol", "anything")


# ---------------------------------------------------------------- the engine refusing


async def test_a_full_queue_refuses_before_anything_is_stored_or_counted(repository, users, tiny_llama, tmp_path):
    async with running_engine(tiny_llama, max_queue=0) as engine:
        service = make_service(repository, engine, tiny_llama, tmp_path)
        for _ in range(RATE_LIMIT + 1):
            with pytest.raises(Busy) as caught:
                await send(service, "alice", "hello")
            assert str(caught.value) == (
                "The model is busy (0 replies running, 0 waiting). Your message was not sent; try again in a moment."
            )
        assert await chat_count(service, "alice") == 0
    with refused(Busy, "The server is shutting down; try again in a minute."):
        await send(service, "alice", "hello")  # the engine stopped: no longer accepting


async def test_an_engine_refusing_at_submit_leaves_nothing_half_done(service, tiny_llama, tmp_path):
    first = await send(service, "alice", "first question")
    chat_id = first[0].conversation_id
    before = await service.open("alice", chat_id)
    user_message = before.messages[0]
    # an engine that was never started takes no request: the capacity check passes, submit refuses
    refusing = make_service(service.repository, Engine(tiny_llama), tiny_llama, tmp_path, rate_limit=10)
    busy = "The model is busy right now (the generation engine is not running). "

    with pytest.raises(Busy) as caught:
        await send(refusing, "alice", "a new chat")
    assert str(caught.value) == busy + "Your message was kept; send it again."
    assert await chat_count(service, "alice") == 1  # the new chat was taken back

    with pytest.raises(Busy) as caught:
        await send(refusing, "alice", "a follow-up", chat_id)
    assert str(caught.value) == busy + "Your message was kept; send it again."
    with pytest.raises(Busy) as caught:
        await events_of(refusing.retry("alice", chat_id, GREEDY))
    assert str(caught.value) == busy + "Press Retry again in a moment."
    with pytest.raises(Busy) as caught:
        await events_of(refusing.edit("alice", chat_id, user_message.id, "edited", GREEDY))
    assert str(caught.value) == busy + "Your edit was not kept; try again."

    after = await service.open("alice", chat_id)
    assert [m.id for m in after.all_messages()] == [m.id for m in before.all_messages()]


async def test_a_prompt_that_cannot_fit_is_refused_in_the_engines_words(service):
    chat_id = (await send(service, "alice", "short"))[0].conversation_id
    long_text = " ".join(["word"] * 190)
    with pytest.raises(ChatError) as caught:
        await events_of(service.send("alice", chat_id, long_text, ChatOptions(temperature=0.0, max_new_tokens=64)))
    assert type(caught.value) is ChatError and str(caught.value)
    assert [m.content for m in (await service.open("alice", chat_id)).messages if m.role == "user"] == ["short"]


# ---------------------------------------------------------------- versions, edits, undo, ratings


async def test_retry_keeps_the_old_reply_as_an_earlier_version(service):
    events = await send(service, "alice", "tell me")
    chat_id, old = events[0].conversation_id, events[-1].message
    retried = await events_of(service.retry("alice", chat_id, ChatOptions(temperature=1.0, max_new_tokens=8, seed=7)))
    new = retried[-1].message
    assert retried[0].kind == "conversation" and new.id != old.id

    chat = await service.open("alice", chat_id)
    shown = chat.messages[-1]
    assert shown.id == new.id and (shown.version, shown.version_count) == (2, 2)
    assert shown.versions == (old.id, new.id)
    back = await service.show_version("alice", chat_id, str(old.id))  # ids from the page arrive as text
    assert back.messages[-1].id == old.id and back.messages[-1].content == old.content


async def test_edit_keeps_the_old_branch_and_answers_the_new_message(service):
    first = await send(service, "alice", "first")
    chat_id = first[0].conversation_id
    await send(service, "alice", "second", chat_id)
    chat = await service.open("alice", chat_id)
    second = chat.messages[2]
    edited = await events_of(service.edit("alice", chat_id, second.id, "second, edited", GREEDY))
    assert edited[-1].kind == "done"

    chat = await service.open("alice", chat_id)
    assert [m.content for m in chat.messages if m.role == "user"] == ["first", "second, edited"]
    assert chat.messages[2].parent_id == second.parent_id and chat.messages[2].version_count == 2
    assert second.id in {m.id for m in chat.all_messages()}  # the old branch stays
    with refused(ChatError, "Only your own messages can be edited."):
        await events_of(service.edit("alice", chat_id, chat.messages[1].id, "not mine", GREEDY))


async def test_undo_removes_the_last_exchange_and_the_only_one_deletes_the_chat(service):
    chat_id = (await send(service, "alice", "one"))[0].conversation_id
    await send(service, "alice", "two", chat_id)
    chat = await service.undo("alice", chat_id)
    assert [m.content for m in chat.messages if m.role == "user"] == ["one"]
    assert await service.undo("alice", chat_id) is None
    with pytest.raises(ConversationNotFound):
        await service.open("alice", chat_id)


async def test_ratings_and_comments_belong_to_replies_of_ones_own_chat(service):
    events = await send(service, "alice", "rate me")
    chat_id, reply = events[0].conversation_id, events[-1].message
    chat = await service.open("alice", chat_id)
    with refused(ChatError, "Rate the reply first", prefix=True):
        await service.comment("alice", chat_id, reply.id, "nice")
    with refused(ChatError, "Only the model's replies can be rated."):
        await service.rate("alice", chat_id, chat.messages[0].id, "up")
    assert (await service.rate("alice", chat_id, reply.id, "up")).value == "up"
    assert (await service.comment("alice", chat_id, reply.id, "short and right")).comment == "short and right"
    shown = (await service.open("alice", chat_id)).messages[-1]
    assert (shown.rating.value, shown.rating.comment) == ("up", "short and right")
    assert service.shown_message(chat, 1).id == reply.id
    with pytest.raises(MessageNotFound):
        service.shown_message(chat, 5)
    assert await service.rate("alice", chat_id, reply.id, None) is None
    assert (await service.open("alice", chat_id)).messages[-1].rating is None


# ---------------------------------------------------------------- Stop, interrupted chats, the journal


async def test_stop_ends_the_reply_at_once_and_stores_what_was_on_screen(service):
    replies = service.send("alice", None, "go on and on", ChatOptions(temperature=1.0, max_new_tokens=64, seed=1))
    seen: list[ChatEvent] = []
    async for event in replies:
        seen.append(event)
        if event.kind == "text" and len(seen) == 2:
            chat_id = event.conversation_id
            chat = await service.open("alice", chat_id)
            assert service.live_text(chat) == event.text
            with refused(ChatError, "A reply is still being written in this chat", prefix=True):
                await send(service, "alice", "me too", chat_id)
            assert not await service.stop("bob", chat_id)
            assert await service.stop("alice", chat_id)
    done = seen[-1]
    on_screen = [e for e in seen if e.kind in ("text", "stopped")][-1].text
    assert done.kind == "done" and done.message.finish_reason == "stopped"
    assert done.message.content == on_screen
    chat = await service.open("alice", chat_id)
    assert chat.messages[-1].content == on_screen and service.live_text(chat) is None
    assert not await service.stop("alice", chat_id)  # nothing runs any more
    assert await service.replies_settled(1.0)


async def test_an_interrupted_chat_is_closed_before_the_next_message(service, tiny_llama):
    alice = await service.repository.get_user("alice")
    ids = prompt_format(tiny_llama).user_turn([], "lost reply")
    lost = NewMessage("user", "lost reply", ids, params=GREEDY.sampling(64).to_dict())
    summary, _ = await service.repository.start_conversation(alice.id, "crashed", tiny_llama.name, [lost])
    assert interrupted(await service.open("alice", summary.id))
    await send(service, "alice", "anyone there?", summary.id)
    chat = await service.open("alice", summary.id)
    assert [(m.role, m.content, m.finish_reason) for m in chat.messages[:3]] == [
        ("user", "lost reply", None), ("assistant", "", "interrupted"), ("user", "anyone there?", None),
    ]
    assert chat.messages[-1].role == "assistant" and not interrupted(chat)


async def test_a_reply_the_database_refuses_is_journaled_shown_and_stored_before_the_next_message(
    service, monkeypatch: pytest.MonkeyPatch
):
    chat_id = (await send(service, "alice", "first"))[0].conversation_id
    real_put_reply: Callable = service.repository.put_reply

    async def refuse(*args, **kwargs):
        raise StorageUnavailable("disk full")

    monkeypatch.setattr(service.repository, "put_reply", refuse)
    events = await send(service, "alice", "second", chat_id)
    kept = events[-1].message
    assert kept.pending and service.journal.backlog == 1
    shown = await service.open("alice", chat_id)
    assert shown.messages[-1].content == kept.content and shown.messages[-1].pending

    monkeypatch.setattr(service.repository, "put_reply", real_put_reply)
    await send(service, "alice", "third", chat_id)
    assert service.journal.backlog == 0
    chat = await service.open("alice", chat_id)
    assert [m.role for m in chat.messages] == ["user", "assistant"] * 3
    assert chat.messages[3].content == kept.content and not chat.messages[3].pending
    assert chat.messages[4].parent_id == chat.messages[3].id  # the new message came after the journaled reply


# ---------------------------------------------------------------- exports


async def test_export_writes_the_owners_chats_only(service):
    chat_id = (await send(service, "alice", "exported words"))[0].conversation_id
    await send(service, "bob", "bob's words")
    one = await service.export("alice", "md", chat_id)
    everything = await service.export("alice", "jsonl")
    assert one.parent.parent == service.export_dir and "exported words" in one.read_text(encoding="utf-8")
    assert "bob's words" not in everything.read_text(encoding="utf-8")
    with refused(ChatError, "Unknown export format 'xml'."):
        await service.export("alice", "xml")


async def test_text_events_are_coalesced_into_frames_at_most_every_frame_interval(service):
    """The tiny model makes a token every few milliseconds; the page must not get a frame for each."""
    from app.services.reply_stream import FRAME_INTERVAL_SECONDS

    options = ChatOptions(temperature=0.0, max_new_tokens=48)
    arrivals: list[tuple[float, ChatEvent]] = []
    async for event in service.send("alice", None, "Tell me a long story", options):
        arrivals.append((time.perf_counter(), event))
    texts = [(at, event) for at, event in arrivals if event.kind == "text"]
    done = arrivals[-1][1]
    assert done.kind == "done" and done.message is not None
    assert done.message.completion_tokens > len(texts)  # several tokens per frame
    gaps = [later - earlier for (earlier, _), (later, _) in pairwise(texts)]
    assert all(gap >= FRAME_INTERVAL_SECONDS * 0.9 for gap in gaps), gaps
    assert all(b.text.startswith(a.text) for (_, a), (_, b) in pairwise(texts))
    assert done.message.content.startswith(texts[-1][1].text)  # nothing shown that was not stored
