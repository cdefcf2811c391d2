"""Which models the server offers: ``CHAT_MODELS=models.toml``, or today's one model without it.

A team compares models (a new checkpoint with the last one, a quantized build with the
full one) and settings (one system prompt or temperature with another). The registry
names each of them once, with a short ``name`` that is stored with every chat and every
export, a ``label`` for people, and where it runs:

- embedded: ``source`` is what ``CHAT_MODEL`` takes (``smollm2``, a local Hugging Face
  folder, a hub id already in the cache); each such entry gets its own weights and engine;
- an inference server: ``url`` + ``protocol`` (``llamacpp`` | ``openai``), as
  ``CHAT_ENGINE_URL``; ``tokenizer`` names the local copy of its tokenizer (``smollm2`` by
  default), because prompts are token ids built here;
- a variant: ``base`` names another entry and only the defaults change (``system_prompt``,
  ``temperature``, ``top_p``, ``max_new_tokens``): same weights, the same engine object.

This module only reads and checks the file (pure data, no torch, no network), so a bad
file stops the start with one sentence naming the entry before any model is loaded; the
server binds the entries to engines (``app/web/model_engines.py``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.loading import model_display_name

if TYPE_CHECKING:
    from app.config import Settings

PROTOCOLS = ("llamacpp", "openai")
DEFAULT_TOKENIZER = "smollm2"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PLACE_KEYS = frozenset({"source", "url", "protocol", "tokenizer", "served_model"})
DEFAULT_KEYS = frozenset({"system_prompt", "temperature", "top_p", "max_new_tokens"})
ARENA_KEYS = frozenset({"arena", "aliases"})  # blind battles: in the pool, and the names a reply must not say
ENTRY_KEYS = frozenset({"name", "label", "base"}) | PLACE_KEYS | DEFAULT_KEYS | ARENA_KEYS
FILE_KEYS = frozenset({"default", "models"})


class RegistryError(ValueError):
    """The models file cannot be served; the message is one sentence naming the entry."""


@dataclass(frozen=True)
class ModelDefaults:
    """What a new chat with this entry starts with; None leaves the tester's own setting alone."""

    system_prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None

    def over(self, base: ModelDefaults) -> ModelDefaults:
        """These defaults with ``base``'s filling what this entry leaves unset (a variant over its base)."""
        return ModelDefaults(
            system_prompt=self.system_prompt if self.system_prompt is not None else base.system_prompt,
            temperature=self.temperature if self.temperature is not None else base.temperature,
            top_p=self.top_p if self.top_p is not None else base.top_p,
            max_new_tokens=self.max_new_tokens if self.max_new_tokens is not None else base.max_new_tokens,
        )

    def as_dict(self) -> dict[str, Any]:
        """The defaults that are set, for the page and for ``python -m app models``."""
        return {key: value for key, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class ModelEntry:
    """One line of the registry: a model the server offers (or a variant of one).

    Exactly one of ``source`` (embedded), ``url`` (inference server) or ``base``
    (variant) is set; ``defaults`` are already merged over the base's for a variant.
    """

    name: str
    label: str
    source: str | None = None
    url: str | None = None
    protocol: str | None = None
    tokenizer: str | None = None
    served_model: str | None = None
    base: str | None = None
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    arena: bool = False  # drawn into blind battles
    aliases: tuple[str, ...] = ()  # other names that give it away in a reply (the leak guard)

    @property
    def is_variant(self) -> bool:
        return self.base is not None

    @property
    def is_remote(self) -> bool:
        return self.url is not None

    def where(self) -> str:
        """Where the entry runs, in a few words (a variant: where its base runs)."""
        if self.url is not None:
            return f"{self.protocol} server at {self.url}"
        if self.source is not None:
            return f"embedded: {self.source}"
        return f"variant of {self.base}"


@dataclass(frozen=True)
class ModelRegistry:
    """The entries in the file's order, the default first; looked up by name."""

    entries: tuple[ModelEntry, ...]
    from_file: Path | None = None  # None: today's single model from CHAT_MODEL / CHAT_ENGINE_URL

    def __post_init__(self) -> None:
        if not self.entries:
            raise RegistryError("the models file lists no model: add at least one [[models]] entry")

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return any(entry.name == name for entry in self.entries)

    @property
    def default(self) -> ModelEntry:
        return self.entries[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(entry.name for entry in self.entries)

    def get(self, name: str) -> ModelEntry:
        """The entry called ``name``; KeyError with a sentence for a name the server does not offer."""
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(f"the server offers no model called {name!r} (offered: {', '.join(self.names)})")

    def weights_of(self, name: str) -> ModelEntry:
        """The entry whose weights ``name`` runs on: itself, or the end of its chain of bases."""
        entry = self.get(name)
        while entry.base is not None:
            entry = self.get(entry.base)
        return entry

    def with_engines(self) -> tuple[ModelEntry, ...]:
        """The entries that get an engine of their own (every one that is not a variant)."""
        return tuple(entry for entry in self.entries if not entry.is_variant)


# ---------------------------------------------------------------- without a file: today's one model


def registry_from_settings(settings: Settings) -> ModelRegistry:
    """``CHAT_MODELS`` when set; else the one model of ``CHAT_MODEL`` / ``CHAT_ENGINE_URL``, as before."""
    if settings.models_file is not None:
        return load_registry(settings.models_file)
    return single_model_registry(
        model_display_name(settings.model),
        source=settings.model,
        url=settings.engine_url,
        protocol=settings.engine_protocol,
        served_model=settings.engine_model,
    )


def single_model_registry(
    name: str, *, source: str, url: str = "", protocol: str = "llamacpp", served_model: str = ""
) -> ModelRegistry:
    """The one model of ``CHAT_MODEL`` (or ``CHAT_ENGINE_URL``), named as chats have always stored it."""
    if url:
        entry = ModelEntry(
            name=name, label=name, url=url, protocol=protocol, tokenizer=source, served_model=served_model or None
        )
    else:
        entry = ModelEntry(name=name, label=name, source=source)
    return ModelRegistry((entry,))


# ---------------------------------------------------------------- reading the file


def load_registry(path: Path) -> ModelRegistry:
    """Read and check ``CHAT_MODELS``; every problem is a :class:`RegistryError` of one sentence."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"CHAT_MODELS names {path}, which does not exist") from None
    except OSError as error:
        raise RegistryError(f"cannot read the models file {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise RegistryError(f"the models file {path} is not valid TOML ({error})") from None
    registry = parse_registry(data)
    return ModelRegistry(registry.entries, from_file=path)


def parse_registry(data: Mapping[str, Any]) -> ModelRegistry:
    """Check a parsed models file and merge each variant's defaults over its base's."""
    unknown = sorted(set(data) - FILE_KEYS)
    if unknown:
        raise RegistryError(
            f"the models file has unknown top-level key(s) {', '.join(unknown)} (allowed: default, [[models]])"
        )
    tables = data.get("models")
    if not isinstance(tables, list) or not tables:
        raise RegistryError("the models file lists no model: add at least one [[models]] entry")
    raw: dict[str, ModelEntry] = {}
    for position, table in enumerate(tables, start=1):
        entry = _entry(position, table)
        if entry.name in raw:
            raise RegistryError(f"model {entry.name!r} is listed twice; each name must be unique")
        raw[entry.name] = entry
    entries = [_merged(entry, raw) for entry in raw.values()]
    default = data.get("default")
    if default is not None:
        if default not in raw:
            raise RegistryError(f"default = {default!r} names no entry of the models file")
        entries.sort(key=lambda entry: entry.name != default)  # stable: the rest keep the file's order
    return ModelRegistry(tuple(entries))


def _entry(position: int, table: object) -> ModelEntry:
    """One ``[[models]]`` table checked on its own (its base is checked once all are read)."""
    name, table = _checked_name(position, table)
    _check_keys(name, table)
    _check_place(name, table)
    protocol = _checked_protocol(name, table) if "url" in table else None
    return ModelEntry(
        name=name,
        label=(table.get("label") or name).strip() or name,
        source=table.get("source"),
        url=table["url"].rstrip("/") if "url" in table else None,
        protocol=protocol,
        tokenizer=table.get("tokenizer", DEFAULT_TOKENIZER) if "url" in table else None,
        served_model=table.get("served_model"),
        base=table.get("base"),
        defaults=_defaults(name, table),
        arena=_arena(name, table),
        aliases=_aliases(name, table),
    )


def _checked_name(position: int, table: object) -> tuple[str, dict[str, Any]]:
    """The entry's name (and the entry as a table): every later sentence names the entry by it."""
    if not isinstance(table, dict):
        raise RegistryError(f"entry {position} of the models file is not a table")
    name = table.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise RegistryError(
            f"entry {position} of the models file needs a short name (letters, digits, '.', '_', '-'; "
            f"at most 64), not {name!r}"
        )
    return name, table


def _check_keys(name: str, table: Mapping[str, Any]) -> None:
    """No key the file format does not know (a typo must not silently leave a default in place)."""
    unknown = sorted(set(table) - ENTRY_KEYS)
    if unknown:
        raise RegistryError(
            f"model {name!r} has unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(ENTRY_KEYS))})"
        )
    for key in ("label", "source", "url", "protocol", "tokenizer", "served_model", "base", "system_prompt"):
        if key in table and not isinstance(table[key], str):
            raise RegistryError(f"model {name!r}: {key} must be a string")


def _check_place(name: str, table: Mapping[str, Any]) -> None:
    """Exactly one place to run: embedded (source), an inference server (url) or a variant (base)."""
    if "base" in table:
        extra = sorted(PLACE_KEYS & set(table))
        if extra:
            raise RegistryError(
                f"model {name!r} is a variant of {table['base']!r} and changes only defaults, "
                f"so it cannot set {', '.join(extra)}"
            )
    places = [key for key in ("source", "url", "base") if table.get(key)]
    if len(places) != 1:
        raise RegistryError(
            f"model {name!r} needs exactly one of source (embedded), url (an inference "
            f"server) or base (a variant), not {' and '.join(places) or 'none'}"
        )
    if "source" in table and ({"protocol", "tokenizer", "served_model"} & set(table)):
        raise RegistryError(
            f"model {name!r} runs embedded (source), so protocol, tokenizer and served_model do not apply"
        )
def _checked_protocol(name: str, table: Mapping[str, Any]) -> str:
    """An inference server's wire format (``llamacpp`` by default, as ``CHAT_ENGINE_PROTOCOL``), and its url."""
    protocol = table.get("protocol", "llamacpp")
    if protocol not in PROTOCOLS:
        raise RegistryError(f"model {name!r}: protocol must be 'llamacpp' or 'openai', not {protocol!r}")
    if not table["url"].startswith(("http://", "https://")):
        raise RegistryError(f"model {name!r}: url must start with http:// or https://, not {table['url']!r}")
    return protocol


def _arena(name: str, table: Mapping[str, Any]) -> bool:
    value = table.get("arena", False)
    if not isinstance(value, bool):
        raise RegistryError(f"model {name!r}: arena must be true or false, not {value!r}")
    return value


def _aliases(name: str, table: Mapping[str, Any]) -> tuple[str, ...]:
    value = table.get("aliases", [])
    if not isinstance(value, list) or not all(isinstance(alias, str) and alias.strip() for alias in value):
        raise RegistryError(f"model {name!r}: aliases must be a list of names, not {value!r}")
    return tuple(alias.strip() for alias in value)


def _defaults(name: str, table: Mapping[str, Any]) -> ModelDefaults:
    """The entry's own defaults, each in the range the page's settings accept."""
    temperature = _number(name, table, "temperature", 0.0, 5.0)
    top_p = _number(name, table, "top_p", 0.0, 1.0)
    if top_p is not None and top_p == 0.0:
        raise RegistryError(f"model {name!r}: top_p must be above 0")
    max_new_tokens = table.get("max_new_tokens")
    if max_new_tokens is not None and (
        isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1
    ):
        raise RegistryError(f"model {name!r}: max_new_tokens must be a whole number of at least 1")
    return ModelDefaults(table.get("system_prompt"), temperature, top_p, max_new_tokens)


def _number(name: str, table: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RegistryError(f"model {name!r}: {key} must be a number from {low:g} to {high:g}, not {value!r}")
    return float(value)


def _merged(entry: ModelEntry, entries: Mapping[str, ModelEntry]) -> ModelEntry:
    """A variant with its base's defaults under its own, after checking the chain of bases ends at a model."""
    if entry.base is None:
        return entry
    seen = [entry.name]
    defaults = entry.defaults
    current = entry
    while current.base is not None:
        if current.base not in entries:
            raise RegistryError(
                f"model {current.name!r} names base {current.base!r}, which the models file does not list"
            )
        if current.base in seen:
            raise RegistryError(
                f"model {entry.name!r}: its bases run in a circle ({' -> '.join(seen)} -> {current.base})"
            )
        current = entries[current.base]
        seen.append(current.name)
        defaults = defaults.over(current.defaults)
    return ModelEntry(
        name=entry.name, label=entry.label, base=entry.base, defaults=defaults, arena=entry.arena,
        aliases=entry.aliases,
    )
