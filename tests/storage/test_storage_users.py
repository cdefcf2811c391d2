"""Users: create, look up, change password, delete (with everything they own)."""

from __future__ import annotations

from datetime import UTC

import pytest
from sqlalchemy import func, select

from storage.errors import Conflict
from storage.models import Conversation, Message
from storage.repository import NewMessage


async def test_create_get_list_and_set_password(repository, make_user):
    alice = await make_user("alice")
    root = await make_user("root", admin=True)
    assert alice.id != root.id
    assert (alice.is_admin, root.is_admin) == (False, True)
    assert alice.created_at.tzinfo is not None and alice.created_at.utcoffset() == UTC.utcoffset(None)

    assert await repository.get_user("alice") == alice
    assert [u.username for u in await repository.list_users()] == ["alice", "root"]
    assert await repository.count_users() == 2

    await repository.set_password("alice", "new-hash")
    assert (await repository.get_user("alice")).password_hash == "new-hash"
    assert (await repository.get_user("root")).password_hash == root.password_hash


async def test_deleting_a_user_cascades_to_their_chats_only(repository, make_user):
    alice = await make_user("alice")
    bob = await make_user("bob")
    for owner in (alice, bob):
        chat = await repository.create_conversation(owner.id, f"{owner.username}'s", "m")
        await repository.append_messages(owner.id, chat.id, [NewMessage("user", "q"), NewMessage("assistant", "a")])

    await repository.delete_user("alice")

    assert [u.username for u in await repository.list_users()] == ["bob"]
    assert await repository.list_conversations(alice.id) == []
    async with repository.database.reader() as session:
        # the rows are really gone (SQLite only cascades with foreign_keys=ON)
        owners = set(await session.scalars(select(Conversation.user_id)))
        messages = await session.scalar(select(func.count()).select_from(Message))
    assert owners == {bob.id}
    assert messages == 2
    # the name can be reused afterwards, as a new account that sees nothing of the old one
    again = await make_user("alice")
    assert await repository.list_conversations(again.id) == []


async def test_names_are_one_whatever_their_case_or_width(repository, make_user):
    admin = await make_user("admin")
    for clash in ("Admin", "ADMIN", " aDmIn ", "\uff41\uff44\uff4d\uff49\uff4e", "\uff21dmin"):  # fullwidth too
        with pytest.raises(Conflict, match="already exists"):
            await repository.create_user(clash, "hash")
    for spelling in ("ADMIN", "Admin", "\uff41\uff44\uff4d\uff49\uff4e"):
        assert await repository.get_user(spelling) == admin  # a login in any case finds the account
    wide = await repository.create_user("\uff22\uff4f\uff42", "hash")  # stored as plain "Bob"
    assert wide.username == "Bob" and (await repository.get_user("bob")).id == wide.id
    await repository.set_password("BOB", "other-hash")
    assert (await repository.get_user("Bob")).password_hash == "other-hash"
    await repository.delete_user("bOb")
    assert [u.username for u in await repository.list_users()] == ["admin"]
