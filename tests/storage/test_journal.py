"""The local journal of replies the database refused: replayed exactly once, in order, after any crash."""

from __future__ import annotations

import shutil

from storage.journal import Journal, PendingReply
from storage.models import utcnow
from storage.repository import NewMessage


def reply(text: str) -> NewMessage:
    return NewMessage("assistant", text, [1, 2, 3], params={"temperature": 0.0}, finish_reason="length",
                      completion_tokens=3, created_at=utcnow())


async def a_chat(repository, make_user):
    user = await make_user()
    summary, stored = await repository.start_conversation(user.id, "chat", "model", [NewMessage("user", "hello")])
    return user, summary.id, stored[-1].seq


async def test_a_replay_after_a_crash_between_commit_and_done_mark_stores_once(repository, make_user, tmp_path):
    user, chat, user_seq = await a_chat(repository, make_user)
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    assert await journal.add(PendingReply(user.id, chat, user_seq, reply("the reply the tester saw")))
    crashed_copy = tmp_path / "before-done.jsonl"
    shutil.copy(path, crashed_copy)  # the file as a crash right after the database commit leaves it

    assert await journal.replay(repository) == 0
    assert path.read_text() == ""  # nothing pending: emptied
    restarted = Journal(crashed_copy)
    assert restarted.load() == 1
    assert await restarted.replay(repository) == 0

    messages = (await repository.get_conversation(user.id, chat)).messages
    assert [(m.role, m.content) for m in messages] == [("user", "hello"), ("assistant", "the reply the tester saw")]


async def test_replies_replay_in_order_and_a_torn_last_line_is_skipped(repository, make_user, tmp_path):
    user, chat, user_seq = await a_chat(repository, make_user)
    other, _ = await repository.start_conversation(user.id, "other", "model", [NewMessage("user", "hi")])
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    await journal.add(PendingReply(user.id, chat, user_seq, reply("first")))
    await journal.add(PendingReply(user.id, other.id, 0, reply("second")))
    with path.open("a") as out:
        out.write('{"add": {"key": "torn", "user_id"')  # a crash in the middle of an append

    restarted = Journal(path)
    assert restarted.load() == 2
    assert [e.message.content for e in restarted.pending_for(chat)] == ["first"]
    assert await restarted.replay(repository) == 0
    for chat_id, expected in ((chat, ["hello", "first"]), (other.id, ["hi", "second"])):
        assert [m.content for m in (await repository.get_conversation(user.id, chat_id)).messages] == expected


async def test_a_retry_adds_a_version_keeps_the_old_one_and_is_stored_only_once(repository, make_user):
    user, chat, user_seq = await a_chat(repository, make_user)
    old = await repository.put_reply(user.id, chat, reply("old reply"), after_seq=user_seq)
    new = reply("new reply")
    first = await repository.put_reply(user.id, chat, new, after_seq=user_seq, replace=True)
    again = await repository.put_reply(user.id, chat, new, after_seq=user_seq, replace=True)  # a replay
    assert again.id == first.id and again.seq == first.seq
    conversation = await repository.get_conversation(user.id, chat)
    assert [(m.role, m.content) for m in conversation.messages] == [("user", "hello"), ("assistant", "new reply")]
    assert [m.content for m in conversation.tree] == ["hello", "old reply", "new reply"]
    assert conversation.messages[-1].versions == (old.id, first.id)
    assert conversation.messages[-1].version == 2


async def test_a_pending_reply_of_a_deleted_chat_is_dropped(repository, make_user, tmp_path):
    user, chat, user_seq = await a_chat(repository, make_user)
    journal = Journal(tmp_path / "journal.jsonl")
    await journal.add(PendingReply(user.id, chat, user_seq, reply("orphan")))
    await repository.delete_conversation(user.id, chat)
    assert await journal.replay(repository) == 0
    assert journal.backlog == 0
