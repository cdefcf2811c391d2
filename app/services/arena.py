"""Blind battles: which two models meet, when a vote counts, and what the team's votes say.

A battle is two chats of one tester, one per model, shown as "A" and "B" until the vote.
The rules live here, apart from any page:

- **Pairs stay balanced.** The next battle takes the pair of the arena pool that has had
  the fewest battles so far (ties broken at random), on random sides, so every pair
  gathers votes at the same pace and no model is always on the left.
- **A vote counts once, on finished replies.** Voting needs both sides' last replies
  complete and the same number of turns on each side; a second vote, someone else's
  battle or an unknown one is refused in words and changes nothing.
- **Leak guard.** A reply that writes a model's name, label or one of its aliases gives
  the game away: the battle is flagged, its vote kept and exported, and left out of the
  leaderboard, and the tester is told why.
- **The leaderboard** is ``leaderboard.build_leaderboard`` over the votes since a date,
  with how many were left out (flagged) or never finished.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.services.errors import CANNOT_READ, CANNOT_SAVE, ChatError, database_faults
from app.services.leaderboard import A_WINS, B_WINS, BOTH_BAD, TIE, Leaderboard, Vote, build_leaderboard
from storage.errors import Conflict, NotFound
from storage.repository import BattleRecord, MessageRecord, Repository
from storage.repository.convert import message_json

# what a tester may press, and the winner it stores (FastChat's clean-battle spelling)
CHOICES = {"a": A_WINS, "b": B_WINS, "tie": TIE, "both bad": BOTH_BAD}
# a reply ended this way is not an answer to judge (Stop, a closed tab, a fault)
UNFINISHED_ENDINGS = frozenset({"stopped", "disconnected", "error", "shutdown", "interrupted", None})
ALREADY_VOTED = "This battle already has your vote; start a new one."
MIN_ALIAS_CHARS = 3  # shorter names would flag ordinary words


@dataclass(frozen=True)
class ArenaModel:
    """A registry entry that takes part in battles."""

    name: str
    label: str
    aliases: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.name, self.label, *self.aliases) if len(n.strip()) >= MIN_ALIAS_CHARS)


@dataclass(frozen=True)
class LeaderboardView:
    board: Leaderboard
    unfinished: int  # battles in the window never voted on


@dataclass
class Reveal:
    """What the page shows once the vote is in."""

    battle: BattleRecord
    label_a: str
    label_b: str
    flag: str | None = field(default=None)


class BattleNotFound(ChatError):
    def __init__(self) -> None:
        super().__init__("Battle not found. It may have been deleted; start a new one.")


class ArenaService:
    """Starts battles from the pool, takes votes, and reads the leaderboard."""

    def __init__(self, repository: Repository, pool: Sequence[ArenaModel], rng: random.Random | None = None) -> None:
        self.repository = repository
        self.pool = {model.name: model for model in pool}
        self.rng = rng or random.Random()

    def pool_problem(self) -> str | None:
        """Why no battle can start, in a sentence; None when one can."""
        if len(self.pool) < 2:
            return (
                "Battles need at least two models in the arena pool; "
                f"this server offers {len(self.pool)}. Ask the admin to add one (arena = true in the registry)."
            )
        return None

    async def pick_pair(self) -> tuple[str, str]:
        """The pair with the fewest battles so far (ties at random), on random sides."""
        if (problem := self.pool_problem()) is not None:
            raise ChatError(problem)
        with database_faults(CANNOT_READ):
            counts = await self.repository.battle_pair_counts()
        names = sorted(self.pool)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        fewest = min(counts.get(pair, 0) for pair in pairs)
        pair = list(self.rng.choice([p for p in pairs if counts.get(p, 0) == fewest]))
        self.rng.shuffle(pair)
        return pair[0], pair[1]

    async def open_battle(
        self, user_id: int, model_a: str, model_b: str, conversation_a: str, conversation_b: str
    ) -> BattleRecord:
        """Record a battle over two chats the caller made, one per model (the page's A and B)."""
        for model in (model_a, model_b):
            if model not in self.pool:
                raise ChatError(f"The model {model!r} is not in the arena pool.")
        if model_a == model_b:
            raise ChatError("A battle needs two different models.")
        with database_faults(CANNOT_SAVE):
            try:
                return await self.repository.create_battle(user_id, model_a, model_b, conversation_a, conversation_b)
            except NotFound:
                raise ChatError("Conversation not found. Start the battle again.") from None

    async def battle(self, user_id: int, battle_id: str) -> BattleRecord:
        with database_faults(CANNOT_READ):
            try:
                return await self.repository.get_battle(user_id, battle_id)
            except NotFound:
                raise BattleNotFound() from None

    async def check_reply(self, user_id: int, battle_id: str, text: str) -> str | None:
        """Flag the battle when a reply names a model; returns the sentence for the tester."""
        flag = self.leak_in(text)
        if flag is not None:
            with database_faults(CANNOT_SAVE):
                await self.repository.flag_battle(user_id, battle_id, flag)
        return flag

    def leak_in(self, text: str) -> str | None:
        """Why ``text`` gives a model away, or None. Whole words, any case."""
        for model in self.pool.values():
            for name in model.names():
                if re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text, re.IGNORECASE):
                    return f"a reply names a model ({name!r}): this vote is kept but left out of the leaderboard"
        return None

    async def vote(self, user_id: int, battle_id: str, choice: str) -> Reveal:
        """Take the tester's one vote ("a", "b", "tie", "both bad") and reveal the names."""
        winner = CHOICES.get(choice.strip().lower()) if isinstance(choice, str) else None
        if winner is None:
            raise ChatError("Vote for A, B, tie or both bad.")
        battle = await self.battle(user_id, battle_id)
        if battle.winner is not None:
            raise ChatError(ALREADY_VOTED)
        side_a = await self._side(user_id, battle.conversation_a)
        side_b = await self._side(user_id, battle.conversation_b)
        if not (_finished(side_a) and _finished(side_b)) or _turns(side_a) != _turns(side_b):
            raise ChatError("Wait until both replies are complete, then vote.")
        flag = battle.flag or next(
            (leak for m in (*side_a, *side_b) if m.role == "assistant" and (leak := self.leak_in(m.content))), None
        )
        sides = {"a": [message_json(m) for m in side_a], "b": [message_json(m) for m in side_b]}
        with database_faults(CANNOT_SAVE):
            try:
                voted = await self.repository.vote_battle(user_id, battle_id, winner, sides, flag)
            except Conflict:
                raise ChatError(ALREADY_VOTED) from None
        return Reveal(voted, self._label(voted.model_a), self._label(voted.model_b), voted.flag)

    async def _side(self, user_id: int, conversation_id: str | None) -> list[MessageRecord]:
        if conversation_id is None:
            raise ChatError("One side of this battle was deleted; it can no longer be voted on.")
        with database_faults(CANNOT_READ):
            try:
                return list((await self.repository.get_conversation(user_id, conversation_id)).messages)
            except NotFound:
                raise ChatError("One side of this battle was deleted; it can no longer be voted on.") from None

    def _label(self, name: str) -> str:
        model = self.pool.get(name)
        return model.label if model is not None else name

    async def leaderboard(self, since: datetime | None = None, resamples: int = 500) -> LeaderboardView:
        """Every rater's votes since ``since`` (all when None), fitted; flagged and unfinished counted."""
        with database_faults(CANNOT_READ):
            battles = await self.repository.all_battles(since)
        voted = [b for b in battles if b.winner is not None and (since is None or b.voted_at >= since)]
        unfinished = sum(1 for b in battles if b.winner is None)
        votes = [Vote(b.model_a, b.model_b, b.winner, flagged=b.flag is not None) for b in voted]  # type: ignore[arg-type]
        return LeaderboardView(build_leaderboard(votes, resamples=resamples), unfinished)


def _finished(messages: Sequence[MessageRecord]) -> bool:
    return bool(messages) and messages[-1].role == "assistant" and messages[-1].finish_reason not in UNFINISHED_ENDINGS


def _turns(messages: Sequence[MessageRecord]) -> int:
    return sum(1 for m in messages if m.role == "user")


def battle_line(battle: BattleRecord) -> dict[str, Any]:
    """One vote as a line of the battles export: FastChat's clean-battle fields, then ours."""
    sides = battle.sides or {"a": [], "b": []}
    return {
        "question_id": battle.id,
        "model_a": battle.model_a,
        "model_b": battle.model_b,
        "winner": battle.winner,
        "judge": battle.username,
        "turn": sum(1 for m in sides["a"] if m["role"] == "user"),
        "anony": True,
        "tstamp": battle.voted_at.timestamp() if battle.voted_at else None,
        "conversation_a": [{"role": m["role"], "content": m["content"]} for m in sides["a"]],
        "conversation_b": [{"role": m["role"], "content": m["content"]} for m in sides["b"]],
        "rater": battle.username,
        "flag": battle.flag,
        "counted": battle.flag is None,
        "params_a": [m["params"] for m in sides["a"] if m["role"] == "assistant"],
        "params_b": [m["params"] for m in sides["b"] if m["role"] == "assistant"],
        "tokens_a": sum(m["completion_tokens"] or 0 for m in sides["a"] if m["role"] == "assistant"),
        "tokens_b": sum(m["completion_tokens"] or 0 for m in sides["b"] if m["role"] == "assistant"),
        "messages_a": sides["a"],
        "messages_b": sides["b"],
    }
