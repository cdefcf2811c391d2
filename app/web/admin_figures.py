"""The admin page's live plots: a sample of the engine every few seconds, the last hour kept in memory.

Prometheus keeps history for those who run it; the admin page must show "is it
getting slower?" without one. So a small ring of samples (tokens/s, replies running
and queued, time to first token p50/p95 of the last minute, prefix-cache memory) is
taken here by one background task and served as JSON; nothing is stored, and a
restart starts the plots afresh.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import asdict, dataclass

from app.web.metrics import ServerMetrics
from app.web.resources import ServerResources

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 5.0
KEEP_SECONDS = 3600.0
TTFT_WINDOW_SECONDS = 60.0  # each point's p50/p95: the replies that ended in the minute before it


@dataclass(frozen=True)
class Sample:
    at: float  # unix seconds
    tokens_per_second: float
    running: int
    queued: int
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    cache_mb: float


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest rank: the smallest value with at least ``fraction`` of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class FigureSampler:
    """Samples the engine every ``interval`` seconds and keeps the last hour."""

    def __init__(self, resources: ServerResources, metrics: ServerMetrics, interval: float = SAMPLE_SECONDS) -> None:
        self.resources = resources
        self.metrics = metrics
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=int(KEEP_SECONDS / interval) + 1)
        self._last: tuple[float, int] | None = None  # (monotonic time, generated tokens) of the last sample

    def sample(self) -> Sample | None:
        engine = self.resources.engine
        if engine is None:
            return None
        stats = engine.stats()
        now = time.monotonic()
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = max(0, stats.generated_tokens - self._last[1]) / (now - self._last[0])
        self._last = (now, stats.generated_tokens)
        recent = self.metrics.ttft_since(TTFT_WINDOW_SECONDS)
        sample = Sample(
            at=round(time.time(), 1), tokens_per_second=round(rate, 1), running=stats.running, queued=stats.waiting,
            ttft_p50_ms=_ms(percentile(recent, 0.5)), ttft_p95_ms=_ms(percentile(recent, 0.95)),
            cache_mb=round(stats.prefix_cache.bytes_used / 2**20, 1),
        )
        self.samples.append(sample)
        return sample

    async def run(self) -> None:
        """The background task (the server's lifespan starts and cancels it)."""
        while True:
            try:
                self.sample()
            except Exception:  # one bad reading must not end the plots for the rest of the run
                log.exception("sampling the engine for the admin page failed")
            await asyncio.sleep(self.interval)

    def figures(self) -> dict[str, object]:
        """The ring, plus the hour's TTFT percentiles and reply outcomes since start, as JSON."""
        hour = self.metrics.ttft_since(KEEP_SECONDS)
        return {
            "interval": self.interval,
            "samples": [asdict(s) for s in self.samples],
            "hour": {"replies": len(hour), "ttft_p50_ms": _ms(percentile(hour, 0.5)),
                     "ttft_p95_ms": _ms(percentile(hour, 0.95))},
            "outcomes": dict(sorted(self.metrics.outcomes.items())),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
