"""The sidebar query: newest activity first, paged, searchable (with LIKE wildcards taken literally)."""

from __future__ import annotations

from storage.repository import NewMessage


async def ids(repository, user_id, **kwargs) -> list[str]:
    return [summary.id for summary in await repository.list_conversations(user_id, **kwargs)]


async def test_newest_activity_first_and_appending_moves_to_top(repository, make_user):
    alice = await make_user()
    first = await repository.create_conversation(alice.id, "first", "m")
    second = await repository.create_conversation(alice.id, "second", "m")
    third = await repository.create_conversation(alice.id, "third", "m")
    assert await ids(repository, alice.id) == [third.id, second.id, first.id]

    await repository.append_message(alice.id, first.id, NewMessage("user", "back to the oldest"))
    assert await ids(repository, alice.id) == [first.id, third.id, second.id]

    await repository.rename_conversation(alice.id, second.id, "renamed")
    await repository.delete_messages_from(alice.id, second.id, 0)  # undo is activity
    assert await ids(repository, alice.id) == [second.id, first.id, third.id]

    summaries = await repository.list_conversations(alice.id)
    assert [s.title for s in summaries] == ["renamed", "first", "third"]
    assert [s.message_count for s in summaries] == [0, 1, 0]
    assert all(s.updated_at >= s.created_at for s in summaries)


async def test_paging_with_limit_and_offset(repository, make_user):
    alice = await make_user()
    chats = [await repository.create_conversation(alice.id, f"chat {i}", "m") for i in range(7)]
    newest_first = [chat.id for chat in reversed(chats)]
    assert await ids(repository, alice.id) == newest_first
    assert await ids(repository, alice.id, limit=3) == newest_first[:3]
    assert await ids(repository, alice.id, limit=3, offset=3) == newest_first[3:6]
    assert await ids(repository, alice.id, limit=3, offset=6) == newest_first[6:]
    assert await ids(repository, alice.id, limit=3, offset=7) == []
    pages = [await ids(repository, alice.id, limit=2, offset=offset) for offset in range(0, 7, 2)]
    assert [chat for page in pages for chat in page] == newest_first


async def test_search_matches_titles_and_message_text_case_insensitively(repository, make_user):
    alice = await make_user("alice")
    bob = await make_user("bob")
    trip = await repository.create_conversation(alice.id, "Trip to Lisbon", "m")
    pasta = await repository.create_conversation(alice.id, "Dinner", "m")
    other = await repository.create_conversation(alice.id, "Unrelated", "m")
    await repository.append_messages(
        alice.id, pasta.id, [NewMessage("user", "How do I cook PASTA al dente?"), NewMessage("assistant", "Boil it.")]
    )
    await repository.append_message(alice.id, other.id, NewMessage("user", "nothing to see"))
    bobs = await repository.create_conversation(bob.id, "Lisbon too", "m")

    assert await ids(repository, alice.id, search="lisbon") == [trip.id]
    assert await ids(repository, alice.id, search="LISBON") == [trip.id]
    assert await ids(repository, alice.id, search="pasta al") == [pasta.id]
    assert await ids(repository, alice.id, search="boil") == [pasta.id]  # assistant text too
    assert await ids(repository, alice.id, search="  dinner  ") == [pasta.id]
    assert await ids(repository, alice.id, search="zzz") == []
    assert await ids(repository, bob.id, search="lisbon") == [bobs.id]
    # an empty search is no filter
    assert len(await ids(repository, alice.id, search="")) == 3
    assert len(await ids(repository, alice.id, search="   ")) == 3
    # a conversation with several matching messages is listed once, with its real count
    await repository.append_message(alice.id, pasta.id, NewMessage("user", "more pasta please"))
    found = await repository.list_conversations(alice.id, search="pasta")
    assert [(s.id, s.message_count) for s in found] == [(pasta.id, 3)]


async def test_search_treats_like_wildcards_literally(repository, make_user):
    alice = await make_user()
    percent = await repository.create_conversation(alice.id, "100% sure", "m")
    underscore = await repository.create_conversation(alice.id, "snake_case names", "m")
    backslash = await repository.create_conversation(alice.id, "C:\\temp", "m")
    plain = await repository.create_conversation(alice.id, "snakeXcase 1000 sure", "m")
    await repository.append_message(alice.id, plain.id, NewMessage("user", "50 percent, a b"))
    in_text = await repository.create_conversation(alice.id, "text only", "m")
    await repository.append_message(alice.id, in_text.id, NewMessage("user", "a_b and 50%"))

    assert await ids(repository, alice.id, search="%") == [percent.id]  # under 3 characters: titles only
    assert await ids(repository, alice.id, search="100%") == [percent.id]
    assert await ids(repository, alice.id, search="_") == [underscore.id]
    assert await ids(repository, alice.id, search="d 50%") == [in_text.id]
    assert await ids(repository, alice.id, search="snake_case") == [underscore.id]
    assert await ids(repository, alice.id, search="a_b") == [in_text.id]
    assert await ids(repository, alice.id, search="50%") == [in_text.id]
    assert await ids(repository, alice.id, search="\\") == [backslash.id]
    assert await ids(repository, alice.id, search="%%") == []
    assert await ids(repository, alice.id, search="0_s") == []
