"""Users: create, look up, change password, delete (with everything they own)."""

from __future__ import annotations

from datetime import UTC

from sqlalchemy import func, select

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
