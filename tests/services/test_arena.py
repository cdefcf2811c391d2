"""Blind battles on the real repository: balanced pairs, one vote on finished replies, the leak
guard, and the leaderboard and export built from what is stored."""

from __future__ import annotations

import json
import random
import subprocess
import uuid
from datetime import timedelta

import pytest

from app.services.arena import ArenaModel, ArenaService, BattleNotFound, battle_line
from app.services.errors import ChatError
from storage.models import utcnow
from storage.repository import NewMessage, Repository
from tests.support import PYTHON, ROOT

POOL = [
    ArenaModel("smol", "SmolLM2 135M", ("SmolLM",)),
    ArenaModel("qwen", "Qwen 0.5B", ("Qwen", "Tongyi")),
    ArenaModel("llama", "Llama 1B"),
]


async def chat(repository: Repository, user_id: int, model: str, turns: list[tuple[str, str | None]]) -> str:
    """A stored chat of ``turns`` (prompt, reply); a None reply = still being written (none stored yet)."""
    chat_id = str(uuid.uuid4())
    messages = []
    for prompt, reply in turns:
        messages.append(NewMessage("user", prompt))
        if reply is not None:
            messages.append(
                NewMessage("assistant", reply, token_ids=[1, 2, 3], params={"temperature": 0.7},
                           finish_reason="eos", completion_tokens=3)
            )
    now = utcnow()
    await repository.import_conversation(
        user_id, conversation_id=chat_id, title="battle", model=model, created_at=now, updated_at=now,
        messages=messages,
    )
    return chat_id


async def battle_between(arena: ArenaService, repository: Repository, user_id: int, reply_a: str | None = "Paris.",
                         reply_b: str | None = "It is Paris."):
    model_a, model_b = await arena.pick_pair()
    side_a = await chat(repository, user_id, model_a, [("Capital of France?", reply_a)])
    side_b = await chat(repository, user_id, model_b, [("Capital of France?", reply_b)])
    return await arena.open_battle(user_id, model_a, model_b, side_a, side_b)


async def test_pairs_stay_balanced_and_sides_are_random(repository, make_user):
    alice = await make_user("alice")
    arena = ArenaService(repository, POOL, random.Random(4))
    seen = []
    for _ in range(12):
        battle = await battle_between(arena, repository, alice.id)
        seen.append((battle.model_a, battle.model_b))
    counts = await repository.battle_pair_counts()
    assert sorted(counts.values()) == [4, 4, 4] and len(counts) == 3  # every pair as often
    assert len(set(seen)) > 3  # the same pair appears on both sides


async def test_a_pool_of_one_model_cannot_battle_and_says_so(repository):
    arena = ArenaService(repository, POOL[:1])
    with pytest.raises(ChatError, match="at least two models in the arena pool; this server offers 1"):
        await arena.pick_pair()


async def test_one_vote_on_finished_replies_reveals_the_names(repository, make_user):
    alice, bob = await make_user("alice"), await make_user("bob")
    arena = ArenaService(repository, POOL, random.Random(1))
    battle = await battle_between(arena, repository, alice.id, reply_b=None)  # B still writing
    with pytest.raises(ChatError, match="Wait until both replies are complete"):
        await arena.vote(alice.id, battle.id, "a")
    assert (await arena.battle(alice.id, battle.id)).winner is None

    battle = await battle_between(arena, repository, alice.id)
    for refused, why in [
        ((bob.id, battle.id, "a"), BattleNotFound),  # someone else's battle: as if unknown
        ((alice.id, str(uuid.uuid4()), "a"), BattleNotFound),
        ((alice.id, "x" * 10_000, "a"), BattleNotFound),
        ((alice.id, battle.id, "A is great"), ChatError),
    ]:
        with pytest.raises(why):
            await arena.vote(*refused)
    reveal = await arena.vote(alice.id, battle.id, "A")
    labels = {m.name: m.label for m in POOL}
    assert (reveal.label_a, reveal.label_b) == (labels[battle.model_a], labels[battle.model_b])
    assert reveal.battle.winner == "model_a" and reveal.flag is None
    assert [m["content"] for m in reveal.battle.sides["b"]] == ["Capital of France?", "It is Paris."]
    with pytest.raises(ChatError, match="already has your vote"):
        await arena.vote(alice.id, battle.id, "b")
    assert (await arena.battle(alice.id, battle.id)).winner == "model_a"  # the second vote changed nothing


async def test_a_reply_that_names_a_model_flags_the_battle_and_leaves_it_off_the_board(repository, make_user):
    alice = await make_user("alice")
    arena = ArenaService(repository, POOL, random.Random(2))
    clean = await battle_between(arena, repository, alice.id)
    await arena.vote(alice.id, clean.id, "b")
    leaky = await battle_between(arena, repository, alice.id, reply_a="As Tongyi, I say Paris.")
    reveal = await arena.vote(alice.id, leaky.id, "a")
    assert reveal.flag is not None and "'Tongyi'" in reveal.flag and "left out of the leaderboard" in reveal.flag
    assert arena.leak_in("a smolder of smoke") is None  # whole words only
    assert arena.leak_in("I am SMOLLM") is not None

    view = await arena.leaderboard()
    assert (view.board.counted, view.board.flagged, view.unfinished) == (1, 1, 0)
    assert {s.model for s in view.board.standings} == {clean.model_a, clean.model_b}


async def test_the_leaderboard_counts_every_raters_votes_since_a_date(repository, make_user):
    alice, bob = await make_user("alice"), await make_user("bob")
    arena = ArenaService(repository, POOL, random.Random(3))
    for user in (alice, bob):
        for _ in range(3):
            battle = await battle_between(arena, repository, user.id)
            await arena.vote(user.id, battle.id, "tie")
    await battle_between(arena, repository, bob.id)  # never voted on
    view = await arena.leaderboard()
    assert (view.board.counted, view.unfinished) == (6, 1)
    assert sum(s.votes for s in view.board.standings) == 12 and all(s.rank == 1 for s in view.board.standings)
    later = await arena.leaderboard(since=utcnow() + timedelta(minutes=1))
    assert (later.board.counted, later.board.standings) == (0, [])


async def test_a_battle_exports_as_a_fastchat_clean_battle_line(repository, make_user):
    alice = await make_user("alice")
    arena = ArenaService(repository, POOL, random.Random(5))
    battle = await battle_between(arena, repository, alice.id)
    voted = (await arena.vote(alice.id, battle.id, "both bad")).battle
    line = json.loads(json.dumps(battle_line(voted)))
    assert line["model_a"] == battle.model_a and line["model_b"] == battle.model_b
    assert line["winner"] == "tie (bothbad)" and line["turn"] == 1 and line["judge"] == "alice"
    assert line["conversation_a"] == [{"role": "user", "content": "Capital of France?"},
                                      {"role": "assistant", "content": "Paris."}]
    assert line["tokens_b"] == 3 and line["messages_a"][1]["token_ids"] == [1, 2, 3]
    assert line["counted"] is True and isinstance(line["tstamp"], float)


async def test_the_cli_prints_the_leaderboard_and_exports_the_votes(repository, make_user, tmp_path):
    alice = await make_user("alice")
    arena = ArenaService(repository, POOL, random.Random(6))
    for choice in ("a", "b", "a", "tie"):
        battle = await battle_between(arena, repository, alice.id)
        await arena.vote(alice.id, battle.id, choice)
    await battle_between(arena, repository, alice.id)  # unfinished

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [PYTHON, "-m", "app", "--database-url", repository.database.url, *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    table = cli("leaderboard")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.split("\n\n")[0].splitlines()
    assert header.split()[:4] == ["rank", "model", "score", "95%"] and len(rows) == 3
    assert "4 vote(s) counted; left out: 0 flagged" in table.stdout and "1 battle(s) never voted on" in table.stdout
    as_json = json.loads(cli("leaderboard", "--format", "json").stdout)
    assert sum(s["votes"] for s in as_json["standings"]) == 8
    assert as_json["standings"] == sorted(as_json["standings"], key=lambda s: -s["score"])
    assert "not 'yesterday'" in cli("leaderboard", "--since", "yesterday").stderr

    out = tmp_path / "battles.jsonl"
    exported = cli("export", "--all-users", "--format", "battles", "--out", str(out))
    assert exported.returncode == 0 and "exported 4 battle vote(s)" in exported.stderr
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    stored = {b.id: b for b in await repository.all_battles()}
    assert [(line["model_a"], line["model_b"], line["winner"]) for line in lines] == [
        (stored[line["question_id"]].model_a, stored[line["question_id"]].model_b, stored[line["question_id"]].winner)
        for line in lines
    ]
    assert sorted(line["winner"] for line in lines) == ["model_a", "model_a", "model_b", "tie"]
    print("\nbattles export line:", json.dumps({k: lines[0][k] for k in ("model_a", "model_b", "winner", "turn")}))

    prefs = tmp_path / "preferences.jsonl"
    exported = cli("export", "--all-users", "--format", "preferences", "--out", str(prefs))
    assert exported.returncode == 0 and "and 3 battle vote pair(s)" in exported.stderr, exported.stderr
    pairs = [json.loads(line) for line in prefs.read_text(encoding="utf-8").splitlines()]
    battle_pairs = [p for p in pairs if p.get("source") == "battle"]
    assert len(battle_pairs) == 3  # the tie gives none
    for pair in battle_pairs:
        battle = stored[pair["battle_id"]]
        winner_reply = "Paris." if battle.winner == "model_a" else "It is Paris."
        assert pair["prompt"] == [{"role": "user", "content": "Capital of France?"}]
        assert pair["chosen"] == [{"role": "assistant", "content": winner_reply}]
        assert pair["rejected"][0]["content"] != winner_reply
        assert pair["chosen_model"] == (battle.model_a if battle.winner == "model_a" else battle.model_b)
