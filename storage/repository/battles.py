"""Blind battles and their votes (the ``battles`` table).

A battle belongs to its rater: every lookup and the vote are scoped by owner, and
someone else's battle answers exactly like one that does not exist. The vote is one
conditional UPDATE (``winner IS NULL``), so two votes racing on one battle cannot both
count. The leaderboard and the battles export read all raters' votes: they are the
team's shared figures, and carry no one's chats beyond what the export is for (admin, CLI).
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from storage.errors import Conflict, NotFound
from storage.models import BATTLE_FLAG_MAX, Battle, User, utcnow
from storage.repository.base import RepositoryBase
from storage.repository.checks import storable

BATTLES_LISTED = 200


@dataclass(frozen=True)
class BattleRecord:
    id: str
    user_id: int
    username: str
    model_a: str
    model_b: str
    conversation_a: str | None
    conversation_b: str | None
    created_at: datetime
    winner: str | None  # None until the vote
    voted_at: datetime | None
    flag: str | None
    sides: dict[str, Any] | None  # {"a": [message JSON...], "b": [...]} as voted on


def battle_record(battle: Battle, username: str) -> BattleRecord:
    return BattleRecord(
        id=battle.id,
        user_id=battle.user_id,
        username=username,
        model_a=battle.model_a,
        model_b=battle.model_b,
        conversation_a=battle.conversation_a,
        conversation_b=battle.conversation_b,
        created_at=battle.created_at,
        winner=battle.winner,
        voted_at=battle.voted_at,
        flag=battle.flag,
        sides=battle.sides,
    )


class BattleStore(RepositoryBase):
    """Open a battle over two of the rater's chats, vote once, flag, and read votes back."""

    async def create_battle(
        self, user_id: int, model_a: str, model_b: str, conversation_a: str, conversation_b: str
    ) -> BattleRecord:
        """Both chats must be the rater's own (someone else's is "not found", as ever)."""
        async with self.database.writer() as session, session.begin():
            for conversation_id in (conversation_a, conversation_b):
                await self._owned(session, user_id, conversation_id)
            battle = Battle(
                id=str(uuid.uuid4()),
                user_id=user_id,
                model_a=model_a,
                model_b=model_b,
                conversation_a=conversation_a,
                conversation_b=conversation_b,
                created_at=utcnow(),
            )
            session.add(battle)
            await session.flush()
            username = await session.scalar(select(User.username).where(User.id == user_id))
            return battle_record(battle, username or "")

    async def get_battle(self, user_id: int, battle_id: str) -> BattleRecord:
        async with self.database.reader() as session:
            found = await self._battle_of(session, user_id, battle_id)
            return battle_record(*found)

    async def _battle_of(self, session: Any, user_id: int, battle_id: Any) -> tuple[Battle, str]:
        if not isinstance(battle_id, str) or not storable(battle_id) or len(battle_id) > 36:
            raise NotFound("battle not found")
        row = (
            await session.execute(
                select(Battle, User.username)
                .join(User, User.id == Battle.user_id)
                .where(Battle.id == battle_id, Battle.user_id == user_id)
            )
        ).first()
        if row is None:
            raise NotFound("battle not found")
        return row[0], row[1]

    async def vote_battle(
        self, user_id: int, battle_id: str, winner: str, sides: dict[str, Any], flag: str | None = None
    ) -> BattleRecord:
        """Record the one vote; a second vote is a :class:`Conflict` and changes nothing."""
        async with self.database.writer() as session, session.begin():
            await self._battle_of(session, user_id, battle_id)
            values: dict[str, Any] = {"winner": winner, "voted_at": utcnow(), "sides": sides}
            if flag:
                values["flag"] = func.coalesce(Battle.flag, flag[:BATTLE_FLAG_MAX])
            result = await session.execute(
                update(Battle)
                .where(Battle.id == battle_id, Battle.user_id == user_id, Battle.winner.is_(None))
                .values(**values)
            )
            if result.rowcount != 1:
                raise Conflict("this battle already has its vote")
        return await self.get_battle(user_id, battle_id)

    async def flag_battle(self, user_id: int, battle_id: str, flag: str) -> None:
        """Mark a battle as not blind (the first reason found is kept)."""
        async with self.database.writer() as session, session.begin():
            await self._battle_of(session, user_id, battle_id)
            await session.execute(
                update(Battle)
                .where(Battle.id == battle_id, Battle.user_id == user_id, Battle.flag.is_(None))
                .values(flag=flag[:BATTLE_FLAG_MAX])
            )

    async def in_open_battle(self, user_id: int, conversation_id: str) -> bool:
        """Whether the chat is one side of a battle of this user that has no vote yet."""
        async with self.database.reader() as session:
            found = await session.scalar(
                select(Battle.id)
                .where(
                    Battle.user_id == user_id,
                    Battle.winner.is_(None),
                    (Battle.conversation_a == conversation_id) | (Battle.conversation_b == conversation_id),
                )
                .limit(1)
            )
            return found is not None

    async def list_battles(self, user_id: int) -> list[BattleRecord]:
        """A rater's own battles, newest first."""
        async with self.database.reader() as session:
            rows = await session.execute(
                select(Battle, User.username)
                .join(User, User.id == Battle.user_id)
                .where(Battle.user_id == user_id)
                .order_by(Battle.created_at.desc(), Battle.id)
                .limit(BATTLES_LISTED)
            )
            return [battle_record(battle, username) for battle, username in rows]

    async def battle_pair_counts(self) -> Counter[tuple[str, str]]:
        """How many battles each pair of models has had (either side order), to keep pairs balanced."""
        async with self.database.reader() as session:
            rows = await session.execute(
                select(Battle.model_a, Battle.model_b, func.count()).group_by(Battle.model_a, Battle.model_b)
            )
            counts: Counter[tuple[str, str]] = Counter()
            for model_a, model_b, count in rows:
                counts[tuple(sorted((model_a, model_b)))] += int(count)  # type: ignore[index]
            return counts

    async def all_battles(self, since: datetime | None = None) -> list[BattleRecord]:
        """Every rater's battles (voted or not) created or voted since ``since``, oldest first."""
        async with self.database.reader() as session:
            query = select(Battle, User.username).join(User, User.id == Battle.user_id)
            if since is not None:
                query = query.where((Battle.voted_at >= since) | (Battle.created_at >= since))
            rows = await session.execute(query.order_by(Battle.created_at, Battle.id))
            return [battle_record(battle, username) for battle, username in rows]
