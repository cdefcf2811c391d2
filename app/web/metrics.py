"""``GET /metrics``: the server in Prometheus text format, for the operator's Grafana.

Two kinds of figures. What happens (replies ending, logins) is counted as it
happens: :class:`ServerMetrics` is the services' :class:`ReplyObserver` and the
login guard's listener. What *is* (replies running and queued, the prefix cache,
the journal, database errors so far) is read from the engine and storage at scrape
time by :class:`LiveFigures`, so a gauge never drifts from the engine's own count.

Each app has its own ``CollectorRegistry``: the tests run several servers in one
process, and each replica serves only its own figures. Scrapes need
``Authorization: Bearer $CHAT_METRICS_TOKEN``; with no token configured the route
is off and says so.
"""

from __future__ import annotations

import hmac
import time
from collections import deque
from collections.abc import Callable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.engine import ChatEngine, EngineStats, GenerationResult
from app.services.observer import ReplyObserver
from app.web.resources import ServerResources

OFF = "Metrics are off on this server: set CHAT_METRICS_TOKEN and scrape with 'Authorization: Bearer <token>'."
WRONG_TOKEN = "This scrape needs 'Authorization: Bearer <CHAT_METRICS_TOKEN>'."
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
# time-to-first-token samples kept for the admin page's p50/p95 (at most this many, at most an hour old)
RECENT_TTFT_LIMIT = 20_000
RECENT_TTFT_SECONDS = 3600.0


class ServerMetrics(ReplyObserver):
    """The counters and histograms fed as replies end and logins happen, in this app's own registry."""

    def __init__(self, model_name: str, resources: ServerResources) -> None:
        self.model = model_name
        self.registry = CollectorRegistry()
        labels = ["model"]
        self.replies = Counter(
            "chat_replies", "Replies by how they ended (eos, length, stopped, disconnected, shutdown, error) "
            "or were refused (busy, rate_limited).", [*labels, "outcome"], registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "chat_time_to_first_token_seconds", "From the request reaching the engine to its first token.",
            labels, buckets=TTFT_BUCKETS, registry=self.registry,
        )
        self.time_per_output_token = Histogram(
            "chat_time_per_output_token_seconds", "Mean time between a reply's tokens after the first.",
            labels, buckets=TPOT_BUCKETS, registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "chat_prompt_tokens", "Prompt tokens of the replies that ended.", labels, registry=self.registry
        )
        self.output_tokens = Counter(
            "chat_output_tokens", "Tokens generated in the replies that ended.", labels, registry=self.registry
        )
        self.logins = Counter("chat_logins", "Login attempts by outcome (ok, failed, throttled).", ["outcome"],
                              registry=self.registry)
        for outcome in ("ok", "failed", "throttled"):
            self.logins.labels(outcome)  # shown at 0 from the start, so rate() has a first point
        self.registry.register(LiveFigures(resources, model_name))
        self.recent_ttft: deque[tuple[float, float]] = deque(maxlen=RECENT_TTFT_LIMIT)
        self.outcomes: dict[str, int] = {}

    # ------------------------------------------------------------ the services' observer

    def reply_finished(self, outcome: str, result: GenerationResult | None) -> None:
        self._count(outcome)
        if result is None:
            return
        self.prompt_tokens.labels(self.model).inc(result.prompt_tokens)
        self.output_tokens.labels(self.model).inc(result.completion_tokens)
        if result.time_to_first_token is not None:
            self.time_to_first_token.labels(self.model).observe(result.time_to_first_token)
            self.recent_ttft.append((time.monotonic(), result.time_to_first_token))
            if result.completion_tokens > 1:
                decoding = max(0.0, result.total_time - result.time_to_first_token)
                self.time_per_output_token.labels(self.model).observe(decoding / (result.completion_tokens - 1))

    def reply_refused(self, outcome: str) -> None:
        self._count(outcome)

    def _count(self, outcome: str) -> None:
        self.replies.labels(self.model, outcome).inc()
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    # ------------------------------------------------------------ the login guard's listener

    def login_attempt(self, outcome: str) -> None:
        self.logins.labels(outcome).inc()

    # ------------------------------------------------------------ for the admin page

    def ttft_since(self, seconds: float) -> list[float]:
        """The times to first token of the replies that ended in the last ``seconds`` (at most an hour)."""
        now = time.monotonic()
        while self.recent_ttft and now - self.recent_ttft[0][0] > RECENT_TTFT_SECONDS:
            self.recent_ttft.popleft()
        return [value for at, value in self.recent_ttft if now - at <= seconds]


class LiveFigures(Collector):
    """Gauges and running totals read from the engine, the journal and the database at each scrape."""

    def __init__(self, resources: ServerResources, model_name: str) -> None:
        self.resources = resources
        self.model = model_name

    def collect(self) -> Iterator[Metric]:
        yield from self._engine_figures()
        journal = self.resources.journal
        waiting = GaugeMetricFamily("chat_journal_entries_waiting", "Replies kept in the journal, not yet stored.")
        waiting.add_metric([], journal.backlog if journal is not None else 0)
        yield waiting
        errors = CounterMetricFamily("chat_database_errors", "Database operations that failed, by reason.",
                                     labels=["reason"])
        database = self.resources.database
        for reason, count in sorted((database.faults if database is not None else {}).items()):
            errors.add_metric([reason], count)
        yield errors

    def _engines(self) -> list[tuple[str, ChatEngine]]:
        """Each engine once, labelled with the model whose weights it runs (several with CHAT_MODELS)."""
        models = self.resources.models
        if models is None or len(models) < 2:
            engine = self.resources.engine
            return [] if engine is None else [(self.model, engine)]
        seen: dict[int, tuple[str, ChatEngine]] = {}
        for model in models:
            seen.setdefault(id(model.engine), (model.weights_name, model.engine))
        return list(seen.values())

    def _engine_figures(self) -> Iterator[Metric]:
        engines = self._engines()
        if not engines:
            return
        figures = [(name, engine.stats()) for name, engine in engines]

        def gauge(name: str, text: str, value: Callable[[EngineStats], float]) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=["model"])
            for model, stats in figures:
                family.add_metric([model], value(stats))
            return family

        def total(name: str, text: str, value: Callable[[EngineStats], float]) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text, labels=["model"])
            for model, stats in figures:
                family.add_metric([model], value(stats))
            return family

        yield gauge("chat_engine_up", "1 while the engine can generate.", lambda s: 1 if s.alive else 0)
        yield gauge("chat_replies_running", "Replies admitted to the batch (prefilling or decoding).",
                    lambda s: s.running)
        yield gauge("chat_replies_queued", "Replies waiting for a place in the batch.", lambda s: s.waiting)
        yield gauge("chat_batch_size", "Replies in the engine's batch now.", lambda s: s.running)
        yield gauge("chat_batch_size_max", "The most replies one batch holds.", lambda s: s.max_batch_size)
        yield total("chat_engine_generated_tokens", "Tokens the engine generated since start.",
                    lambda s: s.generated_tokens)
        yield total("chat_engine_steps", "Batched model steps since start (tokens / steps = mean batch size).",
                    lambda s: s.steps)
        yield total("chat_prefix_cache_lookups", "Prompts looked up in the prefix cache.",
                    lambda s: s.prefix_cache.lookups)
        yield total("chat_prefix_cache_hits", "Prompts that reused cached KV.", lambda s: s.prefix_cache.hits)
        yield total("chat_prefix_cache_reused_tokens", "Prompt tokens whose KV came from the cache.",
                    lambda s: s.prefix_cache.reused_tokens)
        yield total("chat_prefix_cache_evictions", "Cache entries evicted for room.",
                    lambda s: s.prefix_cache.evictions)
        yield gauge("chat_prefix_cache_bytes", "Memory the prefix cache holds.", lambda s: s.prefix_cache.bytes_used)
        yield gauge("chat_prefix_cache_budget_bytes", "The prefix cache's memory budget.",
                    lambda s: s.prefix_cache.budget_bytes)
        yield gauge("chat_prefix_cache_entries", "Prefixes held in the cache.", lambda s: s.prefix_cache.entries)


def build_metrics_router(metrics: ServerMetrics, token: str) -> APIRouter:
    """``/metrics``: off (404, with the sentence saying how to turn it on) without a token configured."""
    router = APIRouter()
    expected = f"Bearer {token}".encode()

    @router.get("/metrics", response_model=None)
    async def scrape(request: Request) -> Response:
        if not token:
            return PlainTextResponse(OFF, status_code=404)
        given = request.headers.get("authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            return PlainTextResponse(WRONG_TOKEN, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
