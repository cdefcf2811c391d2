"""``GET /leaderboard``: the team's blind-battle votes, ranked, for every logged-in tester.

One HTML document rendered on the server: the table (rank, model, score, 95% interval,
votes, wins / ties / losses / both bad), a chart of each score with its interval as
inline SVG (no script, no plotting package; colours from CSS variables, so it reads in
light and dark), a "since" date filter (a plain GET form, so a filtered board is a
link to hand on), and the sentence saying which votes were left out and why. Every name
is escaped. ``?format=json`` gives the same figures as ``python -m app leaderboard``.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from app.services.arena import ArenaService, LeaderboardView
from app.services.arena_report import COLUMNS, leaderboard_json, leaderboard_rows, left_out_sentence, parse_since
from app.services.errors import ChatError
from app.web.admin_page import STYLE

log = logging.getLogger(__name__)

LEADERBOARD_PATH = "/leaderboard"
ROW_HEIGHT = 30
LABEL_WIDTH = 170
CHART_WIDTH = 720

CHART_STYLE = """
.chart{width:100%;height:auto;max-width:760px}.chart .interval{stroke:var(--c1);stroke-width:3;stroke-linecap:round}
.chart .score{fill:var(--c2)}.chart .name{fill:var(--fg);font-size:12px}.chart .tick{fill:var(--muted);font-size:10px}
.chart .grid{stroke:var(--line);stroke-width:1}form.since{display:flex;gap:8px;align-items:center;flex-wrap:wrap}
"""


def build_leaderboard_router(arena: Callable[[], ArenaService], label: Callable[[str], str] = str) -> APIRouter:
    """The route; the security middleware has already sent anyone not logged in to the login page."""
    router = APIRouter()

    @router.get(LEADERBOARD_PATH)
    async def leaderboard(request: Request) -> Response:
        raw_since = request.query_params.get("since", "")
        try:
            since = parse_since(raw_since)
        except ValueError:
            return page_response(None, raw_since, f"“{raw_since[:40]}” is not a date; use the form 2026-12-01.", 400)
        try:
            view = await arena().leaderboard(since)
        except ChatError as error:
            return page_response(None, raw_since, str(error), 503)
        if request.query_params.get("format") == "json":
            return JSONResponse(leaderboard_json(view, label), headers={"Cache-Control": "no-store"})
        return page_response(view, raw_since, "", 200, label)

    return router


def page_response(
    view: LeaderboardView | None, since: str, problem: str, status: int, label: Callable[[str], str] = str
) -> HTMLResponse:
    return HTMLResponse(leaderboard_page(view, since, problem, label), status, headers={"Cache-Control": "no-store"})


def leaderboard_page(view: LeaderboardView | None, since: str, problem: str, label: Callable[[str], str]) -> str:
    body = [f'<p id="problem" class="err">{html.escape(problem)}</p>'] if problem else []
    if view is not None:
        rows = leaderboard_rows(view, label)
        body.append(chart_svg(view, label) if rows else '<p class="muted">No counted votes yet: start a battle.</p>')
        head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        table = f'<table id="board"><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>'
        body.append(f'<div class="scroll">{table}</div>')
        body.append(f'<p id="left-out" class="muted">{html.escape(left_out_sentence(view))}</p>')
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1"><title>Leaderboard · Team Chat</title>'
        f"<style>{STYLE}{CHART_STYLE}</style></head><body>"
        '<header><h1>Leaderboard</h1><a href="/">Back to chats</a></header><main>'
        '<form class="since" method="get" action="/leaderboard"><label for="since">Votes since</label>'
        f'<input type="date" id="since" name="since" value="{html.escape(since[:10])}">'
        '<button type="submit">Show</button><a href="/leaderboard">all votes</a></form>'
        '<p class="muted">Scores on an Elo-like scale (400 points = 10x the odds of winning; the mean is 1000), '
        "fitted to every counted vote at once (Bradley-Terry). Rank = 1 + the models whose whole interval lies "
        "above this one's: models the votes cannot tell apart share a rank.</p>"
        + "".join(body)
        + "</main></body></html>"
    )


def chart_svg(view: LeaderboardView, label: Callable[[str], str]) -> str:
    """Each model's score (dot) and 95% interval (bar) on one shared axis."""
    standings = view.board.standings
    low = min(s.lower for s in standings)
    high = max(s.upper for s in standings)
    step = 50 if high - low <= 400 else 100
    low, high = step * int(low // step), step * (int(high // step) + 1)
    plot = CHART_WIDTH - LABEL_WIDTH - 20
    height = ROW_HEIGHT * len(standings) + 30

    def x(value: float) -> float:
        return LABEL_WIDTH + plot * (value - low) / (high - low)

    parts = []
    for tick in range(int(low), int(high) + 1, step):
        parts.append(f'<line class="grid" x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="0" y2="{height - 20}"/>'
                     f'<text class="tick" x="{x(tick):.1f}" y="{height - 6}" text-anchor="middle">{tick}</text>')
    for row, standing in enumerate(standings):
        y = ROW_HEIGHT * row + ROW_HEIGHT / 2
        name = html.escape(f"{standing.rank}. {label(standing.model)}")
        parts.append(
            f'<text class="name" x="{LABEL_WIDTH - 8}" y="{y + 4:.1f}" text-anchor="end">{name}</text>'
            f'<line class="interval" x1="{x(standing.lower):.1f}" x2="{x(standing.upper):.1f}" y1="{y}" y2="{y}"/>'
            f'<circle class="score" cx="{x(standing.score):.1f}" cy="{y}" r="5"><title>{name}: '
            f"{standing.score:.0f} ({standing.lower:.0f} to {standing.upper:.0f})</title></circle>"
        )
    return (f'<svg class="chart" id="chart" viewBox="0 0 {CHART_WIDTH} {height}" role="img" '
            f'aria-label="scores with 95% intervals">{"".join(parts)}</svg>')
