"""Who hears how each reply ended: the seam between the services and whatever counts replies.

The services must not know Prometheus (or any other sink), yet the only place that
sees every reply end, with its finish reason and timings, is here. So they call one
of these two methods and the web layer plugs in the implementation that counts
(``app/web/metrics.py``); the default hears nothing.
"""

from __future__ import annotations

from app.engine import GenerationResult

BUSY = "busy"
RATE_LIMITED = "rate_limited"


class ReplyObserver:
    """Told of every reply that ended (stored or journaled) and every request refused before it began."""

    def reply_finished(self, outcome: str, result: GenerationResult | None) -> None:
        """``outcome`` is the stored finish reason (eos, length, stopped, disconnected, shutdown, error...)."""

    def reply_refused(self, outcome: str) -> None:
        """``outcome`` is ``BUSY`` (the engine could not take it) or ``RATE_LIMITED`` (over the tester's rate)."""


NO_OBSERVER = ReplyObserver()
