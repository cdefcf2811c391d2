"""How many prompt tokens a mixed step may carry: chunking by time, not by count.

Once decode rows and a prompt chunk share one weight pass, what a prompt still
costs the streams is its own arithmetic. On a CPU that arithmetic is not free:
the cores are already busy with the streams, so the streams' slowdown ``s`` and
the prompt's time against its solo time ``r`` are tied, ``r >= s / (s - 1)``.
``share`` picks the point on that line: the part of a step the prompt may take.
A step then lasts about ``decode / (1 - share)`` (share 0.5: streams 2x slower,
the prompt about 2x its solo time).

The cost model is measured, not assumed: a pure decode step's time per batch size
and a prompt token's marginal time, both timed at warm-up, then kept current from
the steps actually run (the machine is shared, so its speed drifts). A token deep
in a long prompt also reads every key before it, so its cost grows with depth.
"""

from __future__ import annotations

EMA = 0.2  # weight of the newest observation: a few steps follow a change in load


class PrefillPacer:
    """Turns the share of a step a prompt may take into a token count for the next step."""

    def __init__(self, share: float, min_tokens: int, max_tokens: int, attention_depth: float) -> None:
        if not 0.0 < share < 1.0:
            raise ValueError("the prefill share must be between 0 and 1 (exclusive)")
        self.share = share
        self.min_tokens = min_tokens
        self.max_tokens = max(min_tokens, max_tokens)
        self.attention_depth = attention_depth
        self.decode_seconds: dict[int, float] = {}  # pure decode step time by rows
        self.token_seconds = 0.0  # one prompt token's marginal time at depth 0; 0 = not measured

    def depth_factor(self, depth: int) -> float:
        return 1.0 + depth / self.attention_depth

    def decode_time(self, rows: int) -> float | None:
        """A pure decode step's time at ``rows`` rows, from the nearest batch size measured."""
        if not self.decode_seconds:
            return None
        if rows in self.decode_seconds:
            return self.decode_seconds[rows]
        nearest = min(self.decode_seconds, key=lambda known: abs(known - rows))
        return self.decode_seconds[nearest]

    def tokens(self, rows: int, depth: int) -> int:
        """Prompt tokens for a step with ``rows`` decode rows, the prompt ``depth`` tokens in."""
        decode = self.decode_time(rows)
        if decode is None or self.token_seconds <= 0:
            return self.max_tokens
        allowed = decode * self.share / (1.0 - self.share)
        count = int(allowed / (self.token_seconds * self.depth_factor(depth)))
        return max(self.min_tokens, min(self.max_tokens, count))

    def observe_decode(self, rows: int, seconds: float) -> None:
        known = self.decode_seconds.get(rows)
        self.decode_seconds[rows] = seconds if known is None else (1 - EMA) * known + EMA * seconds
        # a change of load shows in every batch size alike: carry it over to the others
        if known is not None and known > 0:
            drift = self.decode_seconds[rows] / known
            for other in self.decode_seconds:
                if other != rows:
                    self.decode_seconds[other] *= drift

    def observe_mixed(self, rows: int, tokens: int, depth: int, seconds: float) -> None:
        """A mixed step's time, less its decode part, updates the marginal cost of a prompt token."""
        decode = self.decode_time(rows)  # (with no decode rows the weight pass would count as the prompt's)
        if decode is None or rows <= 0 or tokens <= 0:
            return
        sample = max(0.0, seconds - decode) / (tokens * self.depth_factor(depth))
        if self.token_seconds <= 0:
            self.token_seconds = sample
            return
        sample = min(4 * self.token_seconds, max(self.token_seconds / 4, sample))  # one noisy step moves it little
        self.token_seconds = (1 - EMA) * self.token_seconds + EMA * sample
