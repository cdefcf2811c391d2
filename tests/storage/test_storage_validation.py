"""Bad input is refused with a clear storage error (never a driver error) and stores nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from storage.errors import Conflict, InvalidInput, NotFound, StorageError
from storage.repository import NewMessage, Repository


async def everything(repository: Repository) -> tuple:
    """A snapshot of every user, conversation and message in the database."""
    users = [(u.id, u.username, u.password_hash, u.is_admin) for u in await repository.list_users()]
    conversations = [record async for record in repository.iter_conversations(None)]
    return users, conversations


async def test_titles(repository, make_user):
    alice = await make_user()
    before = await everything(repository)
    with pytest.raises(InvalidInput, match="at most 200"):
        await repository.create_conversation(alice.id, "x" * 201, "m")
    with pytest.raises(InvalidInput, match="surrogate"):
        await repository.create_conversation(alice.id, "bad \ud800 title", "m")
    with pytest.raises(InvalidInput, match="NUL"):
        await repository.create_conversation(alice.id, "bad \x00 title", "m")
    with pytest.raises(InvalidInput, match="empty"):
        await repository.create_conversation(alice.id, "   ", "m")
    with pytest.raises(InvalidInput, match="surrogate"):
        await repository.create_conversation(alice.id, "fine", "model \udfff")
    assert await everything(repository) == before

    longest = await repository.create_conversation(alice.id, "y" * 200, "m")
    assert longest.title == "y" * 200
    stripped = await repository.create_conversation(alice.id, "  padded  ", "m")
    assert stripped.title == "padded"
    one_line = await repository.create_conversation(alice.id, "two\nlines\r\n\tand  ### a header", "m")
    assert one_line.title == "two lines and ### a header"  # cannot start a line of its own anywhere
    await repository.rename_conversation(alice.id, one_line.id, "renamed\n\n# over two lines")
    assert (await repository.get_conversation(alice.id, one_line.id)).title == "renamed # over two lines"

    snapshot = await everything(repository)
    with pytest.raises(InvalidInput, match="at most 200"):
        await repository.rename_conversation(alice.id, longest.id, "z" * 201)
    with pytest.raises(InvalidInput, match="surrogate"):
        await repository.rename_conversation(alice.id, longest.id, "\ud800")
    assert await everything(repository) == snapshot


async def test_unknown_user_cannot_own_a_conversation(repository, make_user):
    await make_user()
    before = await everything(repository)
    with pytest.raises(NotFound, match="no user"):
        await repository.create_conversation(999_999, "orphan", "m")
    assert await everything(repository) == before


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (NewMessage("user", "lone \ud800 surrogate"), "surrogate"),
        (NewMessage("user", "\udfff"), "surrogate"),
        (NewMessage("user", "nul \x00 byte"), "NUL"),
        (NewMessage("robot", "hi"), "role"),
        (NewMessage("USER", "hi"), "role"),
        (NewMessage("user", None), "must be a string"),  # type: ignore[arg-type]
        (NewMessage("assistant", "x", finish_reason="f" * 17), "finish reason"),
        (NewMessage("assistant", "x", prompt_tokens=2**31), "prompt_tokens"),
        (NewMessage("assistant", "x", latency_ms=1.5), "latency_ms"),  # type: ignore[arg-type]
        (NewMessage("assistant", "x", params={"temperature": float("nan")}), "JSON"),
        (NewMessage("assistant", "x", params={"seen": {1, 2}}), "JSON"),
        (NewMessage("assistant", "x", [1, 2**32]), "token id"),
    ],
    ids=[
        "surrogate", "low-surrogate", "nul", "role", "role-case", "none-text", "finish-reason",
        "int32-count", "float-latency", "nan-params", "set-params", "token-id",
    ],
)
async def test_bad_messages_are_refused_the_same_on_every_backend(repository, make_user, message, match):
    alice = await make_user()
    chat = await repository.create_conversation(alice.id, "ok", "m")
    await repository.append_message(alice.id, chat.id, NewMessage("user", "first"))
    before = await everything(repository)
    with pytest.raises(InvalidInput, match=match):
        await repository.append_message(alice.id, chat.id, message)
    # all or nothing: a good message next to the bad one is not stored either
    with pytest.raises(InvalidInput, match=match):
        await repository.append_messages(alice.id, chat.id, [NewMessage("user", "good"), message])
    assert await everything(repository) == before
    # and the conversation still takes good messages at the next seq
    record = await repository.append_message(alice.id, chat.id, NewMessage("assistant", "fine", finish_reason="eos"))
    assert record.seq == 1


async def test_usernames(repository, make_user):
    await make_user("alice")
    before = await everything(repository)
    with pytest.raises(Conflict, match="already exists"):
        await repository.create_user("alice", "hash")
    with pytest.raises(Conflict):
        await repository.create_user("  alice ", "hash")  # the same name once stripped
    for bad in ["", "   ", "has space", "-starts-with-dash", "x" * 65, "semi;colon", "tab\tname", "\ud800", "nul\x00"]:
        with pytest.raises(InvalidInput):
            await repository.create_user(bad, "hash")
    assert await everything(repository) == before
    assert await repository.count_users() == 1

    for good in ["b", "bob.smith", "carol_2", "dave-x", "erin@example.org", "F" * 64]:
        assert (await repository.create_user(good, "hash")).username == good


async def test_lookups_of_unstorable_names_are_not_found(repository, make_user):
    await make_user("alice")
    for name in ["\ud800", "nul\x00", "nobody", "x" * 300]:
        with pytest.raises(NotFound, match="no user"):
            await repository.get_user(name)
        with pytest.raises(NotFound, match="no user"):
            await repository.set_password(name, "hash")
        with pytest.raises(NotFound, match="no user"):
            await repository.delete_user(name)
    assert [u.username for u in await repository.list_users()] == ["alice"]


def test_storage_errors_are_storage_errors():
    assert issubclass(InvalidInput, StorageError) and issubclass(InvalidInput, ValueError)
    assert issubclass(NotFound, StorageError) and issubclass(Conflict, StorageError)


async def test_search_with_bad_unicode_is_refused(repository, make_user):
    alice = await make_user()
    with pytest.raises(InvalidInput, match="surrogate"):
        await repository.list_conversations(alice.id, search="\ud800")


async def test_import_refuses_bad_conversations_atomically(repository, make_user):
    alice = await make_user()
    when = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    good = dict(title="t", model="m", created_at=when, updated_at=when)
    before = await everything(repository)
    with pytest.raises(InvalidInput, match="conversation id"):
        await repository.import_conversation(alice.id, conversation_id="x" * 37, messages=[], **good)
    with pytest.raises(InvalidInput, match="surrogate"):
        await repository.import_conversation(alice.id, conversation_id="\ud800", messages=[], **good)
    with pytest.raises(InvalidInput, match="role"):
        await repository.import_conversation(
            alice.id, conversation_id="c1", messages=[NewMessage("user", "ok"), NewMessage("bot", "no")], **good
        )
    with pytest.raises(NotFound, match="no user"):
        await repository.import_conversation(999_999, conversation_id="c1", messages=[], **good)
    assert await everything(repository) == before


async def test_appending_no_messages_is_a_no_op(repository, make_user):
    alice = await make_user()
    chat = await repository.create_conversation(alice.id, "quiet", "m")
    await repository.append_message(alice.id, chat.id, NewMessage("user", "one"))
    before = await everything(repository)
    assert await repository.append_messages(alice.id, chat.id, []) == []
    assert await everything(repository) == before
