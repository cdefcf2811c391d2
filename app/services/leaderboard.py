"""The leaderboard: Bradley-Terry strengths from paired, blind votes, with bootstrap intervals.

Why this and not a running Elo: a running Elo depends on the order the votes came in
and shows no uncertainty, so two teams with the same votes could read different
rankings, and nobody can tell a real lead from noise. The Bradley-Terry fit (what
Chatbot Arena publishes) uses every vote at once: P(a beats b) = 1 / (1 + 10^((R_b - R_a)/400)),
fitted by maximum likelihood, reported on an Elo-like scale (400 points per factor 10
of odds) anchored so the pool's mean is 1000.

- A tie, and "both bad", count half a win to each side in the fit (both say "neither is
  better"); "both bad" stays a column of its own in the table, since a team wants to
  see it apart from a tie.
- Flagged votes (a reply named a model: the battle was not blind) are left out and
  counted, so the page can say how many and why.
- The 95% interval comes from resampling the votes (at least 200 times, seeded, so the
  page shows the same figures on every load). Votes are first summed into counts per
  (pair, outcome): resampling votes is then a multinomial draw over those few cells and
  each refit is a tiny problem, which keeps hundreds of refits in milliseconds.
- Rank = 1 + the number of models whose interval lies wholly above this one's: models
  that the votes cannot tell apart share a rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

A_WINS, B_WINS, TIE, BOTH_BAD = "model_a", "model_b", "tie", "tie (bothbad)"
OUTCOMES = (A_WINS, B_WINS, TIE, BOTH_BAD)  # FastChat's clean-battle spellings of ``winner``
SCALE = 400.0 / math.log(10.0)  # natural-log odds to points
ANCHOR = 1000.0
MIN_RESAMPLES = 200
# a weak prior on every strength: keeps a model that never lost (or never won) at a
# finite score instead of running off to infinity; a few hundred votes outweigh it
RIDGE = 0.01


@dataclass(frozen=True)
class Vote:
    """One decided battle, as the fit needs it."""

    model_a: str
    model_b: str
    winner: str  # one of OUTCOMES
    flagged: bool = False  # a reply gave a model's name away: kept and exported, not counted


@dataclass(frozen=True)
class Standing:
    """One row of the leaderboard."""

    rank: int
    model: str
    score: float
    lower: float  # 95% interval
    upper: float
    votes: int
    wins: int
    ties: int
    losses: int
    both_bad: int


@dataclass(frozen=True)
class Leaderboard:
    standings: list[Standing]
    counted: int  # votes in the fit
    flagged: int  # votes left out because a reply named a model
    resamples: int


def check_vote(vote: Vote) -> None:
    """A vote the fit can use: a known outcome between two different models."""
    if vote.winner not in OUTCOMES:
        raise ValueError(f"unknown outcome {vote.winner!r}; expected one of {', '.join(OUTCOMES)}")
    if vote.model_a == vote.model_b:
        raise ValueError(f"a battle needs two different models, not {vote.model_a!r} twice")


def build_leaderboard(votes: Iterable[Vote], *, resamples: int = 500, seed: int = 0) -> Leaderboard:
    """Fit, bootstrap and rank; models without a counted vote are not on the board."""
    votes = list(votes)
    for vote in votes:
        check_vote(vote)
    counted = [vote for vote in votes if not vote.flagged]
    models = sorted({m for vote in counted for m in (vote.model_a, vote.model_b)})
    if not models:
        return Leaderboard([], 0, len(votes) - len(counted), 0)
    cells, counts = _cells(counted, models)
    scores = _scores(_fit(cells, counts, len(models)))[0]
    lower, upper = _intervals(cells, counts, len(models), max(MIN_RESAMPLES, resamples), seed)
    # with very few votes every resample is the same data and the bounds equal the estimate up
    # to rounding: keep the estimate inside its interval, as a reader expects
    lower, upper = np.minimum(lower, scores), np.maximum(upper, scores)
    tallies = _tallies(counted)
    order = sorted(range(len(models)), key=lambda i: (-scores[i], models[i]))
    standings = [
        Standing(
            rank=1 + sum(1 for j in range(len(models)) if j != i and lower[j] > upper[i]),
            model=models[i],
            score=float(scores[i]),
            lower=float(lower[i]),
            upper=float(upper[i]),
            **tallies[models[i]],
        )
        for i in order
    ]
    return Leaderboard(standings, len(counted), len(votes) - len(counted), max(MIN_RESAMPLES, resamples))


def _cells(votes: Sequence[Vote], models: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (a, b, outcome) cells and how many votes fell in each."""
    index = {model: i for i, model in enumerate(models)}
    outcome = {name: k for k, name in enumerate(OUTCOMES)}
    keys = np.array([(index[v.model_a], index[v.model_b], outcome[v.winner]) for v in votes], dtype=np.int64)
    cells, counts = np.unique(keys, axis=0, return_counts=True)
    return cells, counts.astype(float)


def _fit(cells: np.ndarray, counts: np.ndarray, n_models: int) -> np.ndarray:
    """Maximum-likelihood strengths (natural-log odds), ties as half a win each way.

    ``counts`` is one row of cell counts per data set (the votes, or each resample): the
    data sets share no parameter, so one optimizer run over all of them at once finds
    each one's own optimum, and hundreds of resamples cost one vectorised run.
    """
    counts = np.atleast_2d(counts)
    sets = counts.shape[0]
    incidence = np.zeros((len(cells), n_models))  # margin of a cell = beta[a] - beta[b]
    incidence[np.arange(len(cells)), cells[:, 0]] += 1.0
    incidence[np.arange(len(cells)), cells[:, 1]] -= 1.0
    credit = np.where(cells[:, 2] == 0, 1.0, np.where(cells[:, 2] == 1, 0.0, 0.5))
    a_credit = counts * credit

    def loss_and_gradient(flat: np.ndarray) -> tuple[float, np.ndarray]:
        beta = flat.reshape(sets, n_models)
        margin = beta @ incidence.T
        # -[w_a log s(d) + w_b log s(-d)] = total * log(1 + e^-d) + w_b * d, computed stably
        loss = float(np.sum(counts * np.logaddexp(0.0, -margin) + (counts - a_credit) * margin))
        slope = counts / (1.0 + np.exp(-margin)) - a_credit  # d loss / d margin
        gradient = slope @ incidence + RIDGE * beta
        return loss + 0.5 * RIDGE * float(np.sum(beta * beta)), gradient.ravel()

    result = minimize(
        loss_and_gradient, np.zeros(sets * n_models), jac=True, method="L-BFGS-B",
        options={"gtol": 1e-9, "ftol": 1e-15, "maxiter": 10_000},
    )
    return result.x.reshape(sets, n_models)


def _scores(beta: np.ndarray) -> np.ndarray:
    return ANCHOR + SCALE * (beta - beta.mean(axis=-1, keepdims=True))


def _intervals(
    cells: np.ndarray, counts: np.ndarray, n_models: int, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """2.5th and 97.5th percentiles of each score over ``resamples`` vote resamples."""
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(int(counts.sum()), counts / counts.sum(), size=resamples).astype(float)
    scores = _scores(_fit(cells, draws, n_models))
    return np.percentile(scores, 2.5, axis=0), np.percentile(scores, 97.5, axis=0)


def _tallies(votes: Sequence[Vote]) -> dict[str, dict[str, int]]:
    """Each model's votes, wins, ties, losses and both-bad, from its own side of each vote."""
    tallies: dict[str, dict[str, int]] = {}
    for vote in votes:
        for model, won, lost in ((vote.model_a, A_WINS, B_WINS), (vote.model_b, B_WINS, A_WINS)):
            row = tallies.setdefault(model, {"votes": 0, "wins": 0, "ties": 0, "losses": 0, "both_bad": 0})
            row["votes"] += 1
            if vote.winner == won:
                row["wins"] += 1
            elif vote.winner == lost:
                row["losses"] += 1
            elif vote.winner == TIE:
                row["ties"] += 1
            else:
                row["both_bad"] += 1
    return tallies
