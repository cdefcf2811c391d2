"""The registry's entries bound to engines: one engine per set of weights, a variant shares its base's.

``serve()`` calls :func:`prepare_models` before uvicorn starts, so a model that cannot
be loaded, or an inference server that does not answer, ends the start with one
sentence naming the entry. Each embedded entry gets its own weights and engine (in a
process of its own by default, so two models compute at once on the cores they share);
each inference-server entry its own client. Without a models file this is today's one
engine, built exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any

from app.config import Settings
from app.engine import ChatEngine, Engine, LoadedModel, ModelLoadError, PromptFormat, load_model
from app.engine.process_engine import ProcessEngine, engine_process_config
from app.engine.remote import RemoteEngine
from app.engine.remote_errors import RemoteEngineError
from app.engine.remote_model import load_tokenizer_only
from app.engine.remote_probe import probe_server
from app.models_registry import ModelEntry, ModelRegistry, RegistryError
from app.services.served_models import ServedModel, ServedModels

log = logging.getLogger(__name__)


@dataclass
class PreparedModel:
    """One set of weights: what the web process holds of it (the tokenizer, or the model in a thread
    engine) and its engine, started already when it runs in a child process."""

    entry: ModelEntry
    loaded: LoadedModel
    engine: ChatEngine


@dataclass
class PreparedModels:
    """Every engine the registry needs, by the name of the entry whose weights it runs."""

    registry: ModelRegistry
    by_weights: dict[str, PreparedModel]

    @property
    def default(self) -> PreparedModel:
        return self.by_weights[self.registry.weights_of(self.registry.default.name).name]

    def engines(self) -> list[ChatEngine]:
        return [prepared.engine for prepared in self.by_weights.values()]

    def served(self) -> ServedModels:
        """The names the chat service offers, each bound to its weights' engine and prompt format."""
        models = []
        for entry in self.registry:
            weights = self.registry.weights_of(entry.name)
            prepared = self.by_weights[weights.name]
            loaded = prepared.loaded
            models.append(
                ServedModel(
                    name=entry.name,
                    label=entry.label,
                    engine=prepared.engine,
                    prompt_format=PromptFormat(loaded.tokenizer, loaded.eos_token_ids, loaded.context_length),
                    weights=weights.name,
                    base=entry.base,
                    defaults=entry.defaults.as_dict(),
                )
            )
        return ServedModels(models)

    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop every engine together (each gets the same grace; their replies end in parallel)."""
        await asyncio.gather(*(engine.stop(grace_seconds=grace_seconds) for engine in self.engines()))


def entry_settings(settings: Settings, entry: ModelEntry) -> Settings:
    """The settings one engine is built from: the shared limits, with this entry's model and server."""
    if entry.is_remote:
        return replace(
            settings,
            model=entry.tokenizer or settings.model,
            engine_url=entry.url or "",
            engine_protocol=entry.protocol or "llamacpp",
            engine_model=entry.served_model or "",
        )
    return replace(settings, model=entry.source or settings.model, engine_url="")


def prepare_models(settings: Settings, registry: ModelRegistry) -> PreparedModels:
    """Load (or reach) every set of weights the registry names, stopping at the first that fails.

    Child-process engines are all started first and then waited for, so their models load
    side by side. A failure raises :class:`RegistryError` naming the entry when the models
    come from a file, or the engine's own error (as before) for the one model of today.
    """
    prepared: dict[str, PreparedModel] = {}
    started: list[ProcessEngine] = []
    try:
        for entry in registry.with_engines():
            with _naming(registry, entry):
                prepared[entry.name] = _prepare_one(settings, entry, started)
        for entry in registry.with_engines():
            engine = prepared[entry.name].engine
            if isinstance(engine, ProcessEngine):
                with _naming(registry, entry):
                    engine.wait_ready_blocking()
    except BaseException:
        for engine in started:
            asyncio.run(engine.stop())
        raise
    return PreparedModels(registry, prepared)


def _prepare_one(settings: Settings, entry: ModelEntry, started: list[ProcessEngine]) -> PreparedModel:
    own = entry_settings(settings, entry)
    if entry.is_remote:
        loaded, own = load_for_remote(own)
        return PreparedModel(entry, loaded, build_engine(own, loaded))
    if settings.engine_process:
        loaded = load_tokenizer_only(own.model, own.cache_dir)
        engine = ProcessEngine(engine_process_config(own))
        engine.start()
        started.append(engine)
        return PreparedModel(entry, loaded, engine)
    loaded = load_model(own.model, own.cache_dir, own.threads)
    if settings.fast_kernels:
        from app.engine.fast_linear import KernelsUnavailable, pack_linear_layers

        try:
            packed = pack_linear_layers(loaded.model, own.kernels)
        except KernelsUnavailable as error:  # config checked the CPU; this is a torch without oneDNN bf16
            raise ModelLoadError(f"CHAT_KERNELS={own.kernels}: {error}") from error
        log.info("%d linear layers on prepacked oneDNN kernels (%s)", packed, own.kernels)
    return PreparedModel(entry, loaded, build_engine(own, loaded))


class _naming:
    """Turns a load or probe failure into one sentence naming the entry (models from a file only)."""

    def __init__(self, registry: ModelRegistry, entry: ModelEntry) -> None:
        self.registry, self.entry = registry, entry

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _trace: Any) -> bool:
        if self.registry.from_file is not None and isinstance(error, ModelLoadError | RemoteEngineError):
            raise RegistryError(f"model {self.entry.name!r} ({self.entry.where()}) cannot serve: {error}") from error
        return False


def build_engine(settings: Settings, loaded: LoadedModel) -> ChatEngine:
    """The client of an inference server when ``engine_url`` is set; else the embedded engine, in a
    process of its own (``engine_process``, which loads the model itself) or in a thread here."""
    if settings.engine_url:
        return RemoteEngine(
            loaded,
            settings.engine_url,
            settings.engine_protocol,
            max_concurrency=settings.max_batch_size,
            max_queue=settings.max_queue,
            served_model=settings.engine_model or None,
            read_timeout=settings.engine_timeout,
        )
    if settings.engine_process:
        return ProcessEngine(engine_process_config(settings))
    return Engine(
        loaded,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue,
        prefill_chunk=settings.prefill_chunk,
        prefill_share=settings.prefill_share,
        prefix_cache_mb=settings.kv_cache_mb,
        kv_reserve_tokens=settings.kv_reserve_tokens,
    )


def load_for_remote(settings: Settings) -> tuple[LoadedModel, Settings]:
    """Tokenizer only, checked against the inference server, whose context limit then applies.

    Returns the settings with ``engine_model`` filled in: the model name the
    OpenAI protocol must send, as the server reported it.
    """
    loaded = load_tokenizer_only(settings.model, settings.cache_dir)
    info = probe_server(settings.engine_url, settings.engine_protocol, loaded.tokenizer, settings.engine_wait_seconds)
    if info.context_length is not None:
        loaded = replace(loaded, context_length=min(loaded.context_length, info.context_length))
    if settings.engine_protocol == "openai" and info.model and not settings.engine_model:
        settings = replace(settings, engine_model=info.model)
    log.info("generating on %s (%s, %s)", settings.engine_url, settings.engine_protocol, info.model)
    return loaded, settings


async def models_health(models: ServedModels | None) -> dict[str, dict[str, Any]]:
    """Per offered name: whether its engine can serve a reply now (``/healthz``, ``python -m app models``)."""
    if models is None:
        return {}
    reports: dict[int, tuple[bool, dict[str, Any]]] = {}
    for engine in models.engines():
        health = await engine.health_report()
        reports[id(engine)] = (health.healthy, health.report)
    answer: dict[str, dict[str, Any]] = {}
    for model in models:
        healthy, report = reports[id(model.engine)]
        state: dict[str, Any] = {"label": model.label, "healthy": healthy, "weights": model.weights_name}
        if not healthy:
            state["reason"] = _reason(report)
        if isinstance(model.engine, ProcessEngine) and model.engine.pid is not None:
            state["pid"] = model.engine.pid
        answer[model.name] = state
    return answer


def _reason(report: dict[str, Any]) -> str:
    """Why an engine cannot serve now, from its own health report, in a few words."""
    if "status" in report and report["status"] != "ok":
        return f"its inference server: {report['status']}"
    if not report.get("ready", True):
        return "its engine is starting or restarting"
    return "its engine is not running"
