"""``python -m app models``: the registry as the server would offer it, and whether each entry answers now.

An operator edits ``models.toml`` and wants to know before (or while) the team uses it
what each name means and which ones would serve a reply. "Answers now" is asked of the
thing that would answer: an inference server's ``/health``; for an embedded model the
running chat server's ``/healthz`` (which knows whether its engine is up), and when no
server runs, whether its weights can be found here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from app.config import Settings
from app.engine.loading import DEFAULT_MODEL_ALIASES, ModelLoadError, default_gguf_path
from app.models_registry import ModelEntry, ModelRegistry

PROBE_SECONDS = 3.0


def running_server_models(settings: Settings) -> dict[str, Any] | None:
    """What the chat server on CHAT_HOST:CHAT_PORT says of its models, or None when none answers."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    try:
        response = httpx.get(f"http://{host}:{settings.port}/healthz", timeout=PROBE_SECONDS)
        report = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    models = report.get("models") if isinstance(report, dict) else None
    return models if isinstance(models, dict) else None


def remote_status(entry: ModelEntry) -> str:
    """An inference server answers when its ``/health`` says 200 now."""
    try:
        response = httpx.get(f"{entry.url}/health", timeout=PROBE_SECONDS)
    except httpx.HTTPError as error:
        return f"no answer ({type(error).__name__})"
    return "answers" if response.status_code == 200 else f"not ready (HTTP {response.status_code})"


def embedded_status(source: str) -> str:
    """Without a running server: whether the weights of an embedded model are where ``source`` says."""
    if source.strip().lower() in DEFAULT_MODEL_ALIASES:
        try:
            default_gguf_path()
        except ModelLoadError as error:
            return f"cannot load: {error}"
        return "not served now (the default model is installed)"
    path = Path(source).expanduser()
    if path.exists():
        if (path / "config.json").exists():
            return "not served now (its folder is ready to load)"
        return f"cannot load: {path} has no config.json"
    if source.startswith(("/", "./", "../", "~")):
        return f"cannot load: no model folder at {path}"
    return "not served now (a hub id; loads only if it is in the local cache)"


def entry_status(registry: ModelRegistry, entry: ModelEntry, served: dict[str, Any] | None) -> str:
    """One entry's answer now: the running server's word first, else asked of its own place."""
    if served is not None and entry.name in served:
        state = served[entry.name]
        return "answers (served now)" if state.get("healthy") else f"unavailable: {state.get('reason', 'down')}"
    weights = registry.weights_of(entry.name)
    if weights.is_remote:
        return remote_status(weights)
    return embedded_status(weights.source or "")


def registry_table(registry: ModelRegistry, settings: Settings) -> list[str]:
    """One line per entry: name, label, where it runs, its base, and whether it answers now."""
    served = running_server_models(settings)
    rows = [("name", "label", "runs", "base", "answers now")]
    for entry in registry:
        where = registry.weights_of(entry.name).where() if entry.is_variant else entry.where()
        rows.append((entry.name, entry.label, where, entry.base or "-", entry_status(registry, entry, served)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    ]
    origin = f"from {registry.from_file}" if registry.from_file else "no CHAT_MODELS: the one model of CHAT_MODEL"
    return [f"models ({origin}; the first is the default):", *lines]
