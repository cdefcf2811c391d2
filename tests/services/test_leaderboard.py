"""The leaderboard fit, checked against votes drawn from strengths we chose (seeded)."""

from __future__ import annotations

import random

import pytest

from app.services.leaderboard import A_WINS, B_WINS, BOTH_BAD, TIE, Vote, build_leaderboard

TRUE_SCORES = {"big": 1120.0, "base": 1030.0, "small": 970.0, "tiny": 880.0}  # mean 1000, as the board anchors


def draw_votes(rng: random.Random, count: int, scores: dict[str, float] = TRUE_SCORES) -> list[Vote]:
    """Battles between random pairs, won as the Bradley-Terry model with these scores says."""
    names = sorted(scores)
    votes = []
    for _ in range(count):
        a, b = rng.sample(names, 2)
        a_wins = rng.random() < 1.0 / (1.0 + 10.0 ** ((scores[b] - scores[a]) / 400.0))
        votes.append(Vote(a, b, A_WINS if a_wins else B_WINS))
    return votes


def test_the_order_matches_the_strengths_the_votes_were_drawn_from():
    board = build_leaderboard(draw_votes(random.Random(1), 2000), resamples=200)
    assert [s.model for s in board.standings] == ["big", "base", "small", "tiny"]
    assert [s.rank for s in board.standings] == [1, 2, 3, 4]  # 2,000 votes tell 60 points apart
    assert abs(sum(s.score for s in board.standings) / 4 - 1000.0) < 1e-6  # the pool's mean is 1000
    for standing in board.standings:
        assert abs(standing.score - TRUE_SCORES[standing.model]) < 40
        assert standing.lower < standing.score < standing.upper
    assert board.counted == 2000 and board.flagged == 0 and board.resamples == 200


def test_each_interval_covers_its_true_score_at_the_stated_rate():
    rng, draws = random.Random(7), 60
    covered = {name: 0 for name in TRUE_SCORES}
    for _ in range(draws):
        board = build_leaderboard(draw_votes(rng, 400), resamples=200, seed=rng.randrange(1 << 30))
        for standing in board.standings:
            covered[standing.model] += standing.lower <= TRUE_SCORES[standing.model] <= standing.upper
    rates = {name: hits / draws for name, hits in covered.items()}
    # 95% intervals: over 60 draws a rate below 85% would be 4 standard deviations off
    assert all(rate >= 0.85 for rate in rates.values()), rates
    assert sum(rates.values()) / len(rates) >= 0.9, rates


def test_a_tie_counts_half_a_win_to_each_side_and_both_bad_is_kept_apart():
    ties = [Vote("a", "b", A_WINS)] * 3 + [Vote("a", "b", TIE), Vote("a", "b", BOTH_BAD)]
    halves = [Vote("a", "b", A_WINS)] * 4 + [Vote("a", "b", B_WINS)]
    with_ties, with_wins = build_leaderboard(ties), build_leaderboard(halves)
    assert [(s.model, round(s.score, 6)) for s in with_ties.standings] == [
        (s.model, round(s.score, 6)) for s in with_wins.standings
    ]
    a, b = with_ties.standings
    assert (a.model, a.wins, a.ties, a.both_bad, a.losses, a.votes) == ("a", 3, 1, 1, 0, 5)
    assert (b.model, b.wins, b.ties, b.both_bad, b.losses, b.votes) == ("b", 0, 1, 1, 3, 5)
    only_ties = build_leaderboard([Vote("x", "y", TIE), Vote("y", "x", BOTH_BAD)] * 10)
    assert [round(s.score, 6) for s in only_ties.standings] == [1000.0, 1000.0]
    assert [s.rank for s in only_ties.standings] == [1, 1]


def test_a_flagged_vote_changes_nothing_but_is_counted_as_left_out():
    votes = draw_votes(random.Random(3), 300)
    clean = build_leaderboard(votes, resamples=200)
    flagged = build_leaderboard(
        votes + [Vote("tiny", "big", A_WINS, flagged=True)] * 50 + [Vote("tiny", "ghost", A_WINS, flagged=True)],
        resamples=200,
    )
    assert flagged.standings == clean.standings  # "ghost" had only a flagged vote: not on the board
    assert (flagged.counted, flagged.flagged) == (300, 51)


def test_the_same_votes_give_the_same_board_every_time():
    votes = draw_votes(random.Random(5), 150)
    assert build_leaderboard(votes) == build_leaderboard(list(votes))
    assert build_leaderboard(votes).standings != build_leaderboard(votes, seed=1).standings  # the seed is used


def test_models_the_votes_cannot_tell_apart_share_a_rank():
    rng = random.Random(11)
    close = {"one": 1005.0, "two": 995.0, "far": 700.0}
    board = build_leaderboard(draw_votes(rng, 120, close), resamples=200)
    ranks = {s.model: s.rank for s in board.standings}
    assert ranks["one"] == ranks["two"] == 1 and ranks["far"] == 3


def test_a_vote_the_fit_cannot_use_is_refused_in_words():
    with pytest.raises(ValueError, match="unknown outcome 'a'"):
        build_leaderboard([Vote("x", "y", "a")])
    with pytest.raises(ValueError, match="two different models, not 'x' twice"):
        build_leaderboard([Vote("x", "x", TIE)])
    empty = build_leaderboard([Vote("x", "y", TIE, flagged=True)])
    assert (empty.standings, empty.counted, empty.flagged) == ([], 0, 1)
