"""One user can neither see nor touch another's conversations, and cannot tell them from unknown ids."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from storage.errors import NotFound
from storage.repository import NewMessage, Repository


async def not_found_message(call: Callable[[], Awaitable[Any]]) -> str:
    with pytest.raises(NotFound) as caught:
        await call()
    return str(caught.value)


def attempts(repository: Repository, user_id: int, conversation_id: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Every conversation operation, as ``user_id`` aimed at ``conversation_id``."""

    async def export() -> list[Any]:
        return [record async for record in repository.iter_conversations(user_id, conversation_id)]

    return {
        "get": lambda: repository.get_conversation(user_id, conversation_id),
        "rename": lambda: repository.rename_conversation(user_id, conversation_id, "taken over"),
        "delete": lambda: repository.delete_conversation(user_id, conversation_id),
        "append": lambda: repository.append_message(user_id, conversation_id, NewMessage("user", "hi B", [1])),
        "append_many": lambda: repository.append_messages(
            user_id, conversation_id, [NewMessage("user", "x"), NewMessage("assistant", "y")]
        ),
        "append_none": lambda: repository.append_messages(user_id, conversation_id, []),
        "delete_messages_from": lambda: repository.delete_messages_from(user_id, conversation_id, 0),
        "export": export,
    }


async def test_other_users_conversation_is_indistinguishable_from_unknown(repository, make_user):
    alice = await make_user("alice")
    bob = await make_user("bob")
    chat = await repository.create_conversation(alice.id, "Alice's secret", "m")
    await repository.append_messages(
        alice.id, chat.id, [NewMessage("user", "my secret", [1, 70_000]), NewMessage("assistant", "kept", [2])]
    )
    other = await repository.create_conversation(alice.id, "another", "m")
    bobs_own = await repository.create_conversation(bob.id, "Bob's", "m")
    before = await repository.get_conversation(alice.id, chat.id)
    alice_list_before = await repository.list_conversations(alice.id)

    unknown_messages = {
        name: await not_found_message(call)
        for name, call in attempts(repository, bob.id, str(uuid.uuid4())).items()
    }
    for name, call in attempts(repository, bob.id, chat.id).items():
        assert await not_found_message(call) == unknown_messages[name], name
    # nothing in the message names the conversation or its owner
    for message in unknown_messages.values():
        assert message == "conversation not found"
    # an unknown user id fares no better than bob
    for name, call in attempts(repository, 987_654, chat.id).items():
        assert await not_found_message(call) == unknown_messages[name], name

    assert [c.id for c in await repository.list_conversations(bob.id)] == [bobs_own.id]
    assert await repository.list_conversations(bob.id, search="secret") == []
    assert [c.id async for c in repository.iter_conversations(bob.id)] == [bobs_own.id]

    # alice's data is untouched by all of that
    assert await repository.get_conversation(alice.id, chat.id) == before
    assert await repository.list_conversations(alice.id) == alice_list_before
    assert {c.id for c in alice_list_before} == {chat.id, other.id}
    assert [c.id async for c in repository.iter_conversations(alice.id, chat.id)] == [chat.id]


@pytest.mark.parametrize(
    "garbage",
    ["", "not-a-uuid", "x" * 500, "\ud800", "nul\x00id", "' OR 1=1 --", "%"],
    ids=["empty", "not-uuid", "long", "surrogate", "nul", "sql", "percent"],
)
async def test_garbage_conversation_ids_are_simply_not_found(repository, make_user, garbage):
    alice = await make_user("alice")
    chat = await repository.create_conversation(alice.id, "mine", "m")
    for name, call in attempts(repository, alice.id, garbage).items():
        assert await not_found_message(call) == "conversation not found", name
    assert [c.id for c in await repository.list_conversations(alice.id)] == [chat.id]


async def test_deleting_a_conversation_removes_only_that_one(repository, make_user):
    alice = await make_user("alice")
    keep = await repository.create_conversation(alice.id, "keep", "m")
    drop = await repository.create_conversation(alice.id, "drop", "m")
    await repository.append_message(alice.id, keep.id, NewMessage("user", "stay"))
    await repository.append_message(alice.id, drop.id, NewMessage("user", "go"))
    await repository.delete_conversation(alice.id, drop.id)
    assert await not_found_message(lambda: repository.get_conversation(alice.id, drop.id)) == "conversation not found"
    assert [m.content for m in (await repository.get_conversation(alice.id, keep.id)).messages] == ["stay"]
    assert [c.id for c in await repository.list_conversations(alice.id)] == [keep.id]
