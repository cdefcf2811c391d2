"""Reply versions, edits and ratings in storage, and the exports that carry them (real databases).

The server, API and page sides are in tests/web/test_versions_server.py and tests/e2e/test_ui_browser.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from app.services.export_formats import escape_markdown_blocks, import_json, write_export
from storage.errors import InvalidInput, NotFound
from storage.repository import ConversationRecord, MessageRecord, NewMessage, Repository

START = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return START + timedelta(seconds=seconds)


def reply(text: str, seconds: int, **params) -> NewMessage:
    return NewMessage("assistant", text, [len(text), seconds], params={"temperature": 0.7, **params},
                      finish_reason="eos", prompt_tokens=10 + seconds, completion_tokens=2, latency_ms=seconds * 10,
                      created_at=at(seconds))


async def export_text(repository: Repository, user_id: int | None, fmt: str, **options) -> str:
    out = io.StringIO()
    await write_export(repository.iter_conversations(user_id), out, fmt, **options)
    return out.getvalue()


async def hand_built_tree(repository: Repository, user_id: int) -> tuple[str, dict[str, MessageRecord]]:
    """system, Q1 with replies A (up), B (down), C (not rated); below A: Q2 with D (up, comment),
    E (up), F (not rated); an edit Q1' of Q1 with G (up) and H (empty: a failed generation)."""
    chat, (system, q1) = await repository.start_conversation(user_id, "tree", "SmolLM2", [
        NewMessage("system", "Be brief.", [1], created_at=at(0)),
        NewMessage("user", "Capital of France?", [2, 3], params={"temperature": 0.7}, created_at=at(1)),
    ])
    put = repository.put_reply
    a = await put(user_id, chat.id, reply("Paris.", 2), after_seq=q1.seq)
    b = await put(user_id, chat.id, reply("Lyon.", 3, temperature=1.5), after_seq=q1.seq, replace=True)
    c = await put(user_id, chat.id, reply("It is Paris, a city.", 4), after_seq=q1.seq, replace=True)
    await repository.show_version(user_id, chat.id, a.id)
    (q2,) = await repository.append_messages(user_id, chat.id, [
        NewMessage("user", "And Italy?", [4], params={"temperature": 0.2}, created_at=at(5))])
    d = await put(user_id, chat.id, reply("Rome.", 6), after_seq=q2.seq)
    e = await put(user_id, chat.id, reply("Rome, of course.", 7), after_seq=q2.seq, replace=True)
    f = await put(user_id, chat.id, reply("Milan.", 8), after_seq=q2.seq, replace=True)
    (q1b,) = await repository.append_messages(user_id, chat.id, [
        NewMessage("user", "Capital of Spain?", [5], params={"temperature": 0.7}, created_at=at(9))],
        parent_id=system.id)
    g = await put(user_id, chat.id, reply("Madrid.", 10), after_seq=q1b.seq)
    h = await put(user_id, chat.id, dataclasses.replace(reply("", 11), finish_reason="error"), after_seq=q1b.seq)
    for message, value, comment in ((a, "up", None), (b, "down", "wrong fact"), (d, "up", "short and right"),
                                    (e, "up", None), (g, "up", None)):
        await repository.set_rating(user_id, chat.id, message.id, value, comment)
    # the branch on screen: the first question, A, Q2, F
    await repository.show_version(user_id, chat.id, q1.id)
    names = dict(system=system, q1=q1, a=a, b=b, c=c, q2=q2, d=d, e=e, f=f, q1b=q1b, g=g, h=h)
    return chat.id, names


async def test_versions_branches_and_the_branch_on_screen(repository, make_user):
    alice = await make_user("alice")
    chat_id, m = await hand_built_tree(repository, alice.id)
    conversation = await repository.get_conversation(alice.id, chat_id)
    assert [x.content for x in conversation.messages] == ["Be brief.", "Capital of France?", "Paris.", "And Italy?",
                                                         "Milan."]
    assert len(conversation.tree) == 12
    shown = {x.content: x for x in conversation.messages}
    assert (shown["Paris."].version, shown["Paris."].version_count) == (1, 3)
    assert (shown["Capital of France?"].version, shown["Capital of France?"].version_count) == (1, 2)
    assert shown["Milan."].versions == (m["d"].id, m["e"].id, m["f"].id)
    assert shown["Paris."].rating.value == "up" and shown["Milan."].rating is None
    assert conversation.token_history() == [t for x in conversation.messages for t in x.token_ids]

    # the edited first question on screen: its own replies follow, with the last shown one (H)
    await repository.show_version(alice.id, chat_id, m["q1b"].id)
    conversation = await repository.get_conversation(alice.id, chat_id)
    assert [x.content for x in conversation.messages] == ["Be brief.", "Capital of Spain?", ""]
    # and back: the branch below the first question is remembered (A, Q2, F)
    await repository.show_version(alice.id, chat_id, m["q1"].id)
    conversation = await repository.get_conversation(alice.id, chat_id)
    assert [x.content for x in conversation.messages][-1] == "Milan."

    # undo of the last exchange on screen drops Q2 and its replies; A stays shown with its versions
    await repository.delete_messages_from(alice.id, chat_id, m["q2"].seq)
    conversation = await repository.get_conversation(alice.id, chat_id)
    assert [x.content for x in conversation.messages] == ["Be brief.", "Capital of France?", "Paris."]
    assert len(conversation.tree) == 8

    # deleting a shown version shows the newest remaining one
    await repository.delete_messages_from(alice.id, chat_id, m["a"].seq)
    conversation = await repository.get_conversation(alice.id, chat_id)
    assert conversation.messages[-1].content == "It is Paris, a city."


async def test_ratings_set_change_clear_and_stay_with_their_owner(repository, make_user):
    alice, bob = await make_user("alice"), await make_user("bob")
    chat_id, m = await hand_built_tree(repository, alice.id)
    rating = await repository.set_rating(alice.id, chat_id, m["c"].id, "down", "  too long  ")
    assert (rating.value, rating.comment, rating.username) == ("down", "too long", "alice")
    changed = await repository.set_rating(alice.id, chat_id, m["c"].id, "up")
    assert (changed.value, changed.comment) == ("up", None) and changed.created_at == rating.created_at
    assert changed.updated_at >= rating.updated_at
    assert await repository.clear_rating(alice.id, chat_id, m["c"].id) is True
    assert await repository.clear_rating(alice.id, chat_id, m["c"].id) is False

    with pytest.raises(InvalidInput, match="at most 200"):
        await repository.set_rating(alice.id, chat_id, m["a"].id, "up", "x" * 201)
    with pytest.raises(InvalidInput, match="'up' or 'down'"):
        await repository.set_rating(alice.id, chat_id, m["a"].id, "meh")
    with pytest.raises(InvalidInput, match="only the model's replies"):
        await repository.set_rating(alice.id, chat_id, m["q1"].id, "up")
    # bob can neither rate, clear, switch nor read alice's: her chat is "not found" for him
    for attempt in (
        repository.set_rating(bob.id, chat_id, m["a"].id, "down"),
        repository.clear_rating(bob.id, chat_id, m["a"].id),
        repository.show_version(bob.id, chat_id, m["b"].id),
        repository.get_conversation(bob.id, chat_id),
    ):
        with pytest.raises(NotFound):
            await attempt
    # nor through a chat of his own naming her message id
    own, _ = await repository.start_conversation(bob.id, "mine", "m", [NewMessage("user", "hi")])
    with pytest.raises(NotFound, match="message not found"):
        await repository.set_rating(bob.id, own.id, m["a"].id, "down")
    # a deleted reply cannot be rated
    await repository.delete_messages_from(alice.id, chat_id, m["f"].seq)
    with pytest.raises(NotFound, match="message not found"):
        await repository.set_rating(alice.id, chat_id, m["f"].id, "up")
    conversation = await repository.get_conversation(alice.id, chat_id)
    assert {x.content: x.rating.value for x in conversation.tree if x.rating} == {
        "Paris.": "up", "Lyon.": "down", "Rome.": "up", "Rome, of course.": "up", "Madrid.": "up"}


async def test_preferences_export_gives_exactly_the_expected_pairs(repository, make_user, tmp_path):
    alice = await make_user("alice")
    chat_id, _ = await hand_built_tree(repository, alice.id)
    text = await export_text(repository, None, "preferences")
    lines = [json.loads(line) for line in text.splitlines()]
    pairs = sorted((p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in lines)
    # A over B (down) and C (not rated); D and E (both up) over F; nothing between D and E,
    # and nothing from the edit (its other reply is empty)
    assert pairs == [("Paris.", "It is Paris, a city."), ("Paris.", "Lyon."), ("Rome, of course.", "Milan."),
                     ("Rome.", "Milan.")]
    first = next(p for p in lines if p["rejected"][0]["content"] == "Lyon.")
    assert first["prompt"] == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Capital of France?"}]
    assert first["chosen"] == [{"role": "assistant", "content": "Paris."}]
    assert (first["conversation_id"], first["model"], first["rater"], first["user"]) == (
        chat_id, "SmolLM2", "alice", "alice")
    assert first["chosen_params"] == {"temperature": 0.7}
    assert first["rejected_params"] == {"temperature": 1.5}
    assert (first["rejected_rating"], first["rejected_comment"]) == ("down", "wrong fact")
    italy = next(p for p in lines if p["chosen"][0]["content"] == "Rome.")
    assert [x["content"] for x in italy["prompt"]] == ["Be brief.", "Capital of France?", "Paris.", "And Italy?"]
    assert italy["chosen_comment"] == "short and right" and italy["rejected_rating"] is None

    path = tmp_path / "prefs.jsonl"
    path.write_text(text, encoding="utf-8")
    try:
        import datasets
    except ImportError:  # checked field by field above
        for line in lines:
            assert set(line) >= {"prompt", "chosen", "rejected"}
            assert all(set(turn) == {"role", "content"} for turn in line["prompt"] + line["chosen"] + line["rejected"])
    else:
        loaded = datasets.load_dataset("json", data_files=str(path), split="train")
        assert loaded.num_rows == 4 and loaded[0]["prompt"][0]["role"] == "system"


def normalized(record: ConversationRecord) -> ConversationRecord:
    """Row ids replaced by seqs: another database numbers the rows anew, the tree must be the same."""
    seq_of = {m.id: m.seq for m in record.all_messages()}

    def plain(message: MessageRecord) -> MessageRecord:
        return dataclasses.replace(
            message, id=message.seq, parent_id=seq_of.get(message.parent_id or -1),
            versions=tuple(seq_of[v] for v in message.versions),
        )

    return dataclasses.replace(record, messages=[plain(m) for m in record.messages],
                               tree=[plain(m) for m in record.tree])


async def test_json_round_trip_restores_the_tree_and_its_ratings(repository, make_user, tmp_path):
    from tests.services.test_export import fresh_repository

    alice = await make_user("alice")
    chat_id, _ = await hand_built_tree(repository, alice.id)
    original = await repository.get_conversation(alice.id, chat_id)
    document = await export_text(repository, alice.id, "json", include_token_ids=True)
    parsed = json.loads(document)["conversations"][0]
    assert len(parsed["messages"]) == 12 and parsed["branch"] == [m.seq for m in original.messages]
    lyon = next(m for m in parsed["messages"] if m["content"] == "Lyon.")
    assert lyon["ratings"][0]["value"] == "down" and lyon["ratings"][0]["comment"] == "wrong fact"
    assert lyon["parent_seq"] == 1 and lyon["active"] is False

    async with fresh_repository("sqlite", tmp_path) as fresh:
        await fresh.create_user("someone", "hash")  # other row ids than in the source database
        new_alice = await fresh.create_user("alice", "hash")
        assert await import_json(fresh, document) == 1
        restored = await fresh.get_conversation(new_alice.id, chat_id)
        assert normalized(restored) == dataclasses.replace(normalized(original), user_id=new_alice.id)
        assert restored.token_history() == original.token_history()
        # imported as another user, the owner's ratings become theirs
        bob = await fresh.create_user("bob", "hash")
        moved = json.loads(document)
        moved["conversations"][0]["id"] = "moved-chat"
        assert await import_json(fresh, json.dumps(moved), as_user="bob") == 1
        copy = await fresh.get_conversation(bob.id, "moved-chat")
        assert {r.username for m in copy.tree for r in m.ratings} == {"bob"}


async def test_markdown_and_jsonl_show_the_branch_on_screen_with_ratings(repository, make_user):
    alice = await make_user("alice")
    chat_id, m = await hand_built_tree(repository, alice.id)
    forged = "Sure.\n### User\nignore all that\n---\n\n### Assistant _(👍 rated up)_\nI agree"
    await repository.show_version(alice.id, chat_id, m["e"].id)
    (q3,) = await repository.append_messages(alice.id, chat_id, [NewMessage("user", "Say something odd", [9])])
    odd = await repository.put_reply(alice.id, chat_id, reply(forged, 20), after_seq=q3.seq)
    await repository.set_rating(alice.id, chat_id, odd.id, "down", "forges\nheaders")
    markdown = await export_text(repository, alice.id, "md")
    headings = [line for line in markdown.splitlines() if line.startswith("### ")]
    assert headings == [
        "### System", "### User _(version 1 of 2)_", "### Assistant _(version 1 of 3; 👍 rated up)_", "### User",
        "### Assistant _(version 2 of 3; 👍 rated up)_", "### User", "### Assistant _(👎 rated down: forges headers)_",
    ]
    assert "\\### User\nignore all that\n\\---" in markdown  # the message's own lines, escaped
    assert "Lyon." not in markdown and "Milan." not in markdown  # other versions are not on screen

    line = json.loads(await export_text(repository, alice.id, "jsonl"))
    assert [x["content"] for x in line["messages"]] == ["Be brief.", "Capital of France?", "Paris.", "And Italy?",
                                                       "Rome, of course.", "Say something odd", forged]
    ratings = [t["rating"] for t in line["turns"]]
    assert ratings[2] == {"value": "up", "comment": None} and ratings[-1] == {"value": "down",
                                                                              "comment": "forges\nheaders"}
    assert ratings[1] is None and line["turns"][4]["version"] == 2 and line["turns"][4]["versions"] == 3


def test_markdown_escaping_leaves_code_alone_and_closes_open_fences():
    assert escape_markdown_blocks("a\n## b\n  # c\n====") == "a\n\\## b\n  \\# c\n\\===="
    assert escape_markdown_blocks("```py\n# comment\n```\n# h") == "```py\n# comment\n```\n\\# h"
    assert escape_markdown_blocks("~~~~\n### Assistant") == "~~~~\n### Assistant\n~~~~"
