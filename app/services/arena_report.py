"""The leaderboard and the battles as text: what ``python -m app leaderboard`` and
``python -m app export --format battles`` print, and what the page's table shows."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from app.services.arena import LeaderboardView, battle_line
from storage.repository import BattleRecord

COLUMNS = ("rank", "model", "score", "95% interval", "votes", "wins", "ties", "losses", "both bad")


def parse_since(text: str | None) -> datetime | None:
    """``YYYY-MM-DD`` (midnight UTC) or a full ISO time; a clear sentence for anything else."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since takes a date like 2026-12-01, not {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def leaderboard_rows(view: LeaderboardView, label: Callable[[str], str] = str) -> list[list[Any]]:
    return [
        [s.rank, label(s.model), round(s.score), f"{s.lower:.0f} to {s.upper:.0f}", s.votes, s.wins, s.ties,
         s.losses, s.both_bad]
        for s in view.board.standings
    ]


def left_out_sentence(view: LeaderboardView) -> str:
    """What the board does not count, and why (the page and the CLI say the same)."""
    board = view.board
    return (
        f"{board.counted} vote(s) counted; left out: {board.flagged} flagged (a reply named a model), "
        f"{view.unfinished} battle(s) never voted on. Intervals: 95%, from {board.resamples} resamples."
    )


def leaderboard_table(view: LeaderboardView, label: Callable[[str], str] = str) -> str:
    rows = [list(COLUMNS)] + [[str(cell) for cell in row] for row in leaderboard_rows(view, label)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if not view.board.standings:
        lines.append("(no counted votes yet)")
    return "\n".join([*lines, "", left_out_sentence(view)])


def leaderboard_json(view: LeaderboardView, label: Callable[[str], str] = str) -> dict[str, Any]:
    board = view.board
    return {
        "standings": [
            {"rank": s.rank, "model": s.model, "label": label(s.model), "score": s.score, "lower": s.lower,
             "upper": s.upper, "votes": s.votes, "wins": s.wins, "ties": s.ties, "losses": s.losses,
             "both_bad": s.both_bad}
            for s in board.standings
        ],
        "counted": board.counted,
        "flagged": board.flagged,
        "unfinished": view.unfinished,
        "resamples": board.resamples,
    }


def write_battles(battles: list[BattleRecord], out: TextIO) -> int:
    """One JSON line per vote (battles never voted on have nothing to export); returns the count."""
    count = 0
    for battle in battles:
        if battle.winner is None:
            continue
        out.write(json.dumps(battle_line(battle), ensure_ascii=False) + "\n")
        count += 1
    return count


def battle_preference_pairs(battle: BattleRecord) -> list[dict[str, Any]]:
    """A decisive vote as a preference pair in TRL's conversational layout: the first prompt,
    then each side's whole conversation after it (winner chosen, loser rejected). Ties, both
    bad, flagged and unvoted battles give none: they say no side is better, or cannot be trusted."""
    if battle.winner not in ("model_a", "model_b") or battle.flag is not None or not battle.sides:
        return []
    sides = {"model_a": battle.sides["a"], "model_b": battle.sides["b"]}
    chosen_side = sides[battle.winner]
    rejected_side = sides["model_b" if battle.winner == "model_a" else "model_a"]
    if not chosen_side or not rejected_side or chosen_side[0]["role"] != "user":
        return []
    return [{
        "prompt": [{"role": "user", "content": chosen_side[0]["content"]}],
        "chosen": [{"role": m["role"], "content": m["content"]} for m in chosen_side[1:]],
        "rejected": [{"role": m["role"], "content": m["content"]} for m in rejected_side[1:]],
        "source": "battle",
        "battle_id": battle.id,
        "rater": battle.username,
        "chosen_model": battle.model_a if battle.winner == "model_a" else battle.model_b,
        "rejected_model": battle.model_b if battle.winner == "model_a" else battle.model_a,
        "chosen_params": [m["params"] for m in chosen_side if m["role"] == "assistant"],
        "rejected_params": [m["params"] for m in rejected_side if m["role"] == "assistant"],
    }]


def write_battle_pairs(battles: list[BattleRecord], out: TextIO) -> int:
    """The preference pairs of decisive votes, one JSON line each; returns the count."""
    count = 0
    for battle in battles:
        for pair in battle_preference_pairs(battle):
            out.write(json.dumps(pair, ensure_ascii=False) + "\n")
            count += 1
    return count
