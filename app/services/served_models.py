"""The models a chat can be written by, as the chat service sees them: a name bound to an engine.

The server reads the registry (``app/models_registry.py``) and binds each entry to an
engine; the service only needs, per name, the engine to submit to, the prompt format
of its tokenizer, the defaults a new chat starts with, and which weights it runs on
(two variants of one model share weights, so token ids stored by one are the other's
too and need no re-encoding). Without a models file this is a one-entry mapping: the
server's one model, exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.engine import ChatEngine, PromptFormat
from app.services.errors import ChatError


class UnknownModel(ChatError):
    """A request named a model the server does not offer (checked here, never trusted from the page)."""


@dataclass(frozen=True)
class ServedModel:
    """One name a chat can use: its engine (shared by the variants of one model) and its defaults."""

    name: str
    label: str
    engine: ChatEngine
    prompt_format: PromptFormat
    weights: str = ""  # the entry whose weights answer (itself, or a variant's base); "" means ``name``
    base: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)  # system_prompt, temperature, top_p, max_new_tokens

    @property
    def weights_name(self) -> str:
        return self.weights or self.name

    def stamp(self) -> dict[str, str | None]:
        """What each message it writes records: the model (its weights) and the variant, if this is one."""
        return {"model": self.weights_name, "variant": self.name if self.name != self.weights_name else None}


class ServedModels:
    """The offered models by name, the default first; one engine may stand behind several names."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        if not models:
            raise ValueError("a server offers at least one model")
        self._models = {model.name: model for model in models}
        if len(self._models) != len(models):
            raise ValueError("model names must be unique")
        self._order = tuple(model.name for model in models)

    @classmethod
    def single(cls, name: str, engine: ChatEngine, prompt_format: PromptFormat) -> ServedModels:
        """The server's one model, as without a models file."""
        return cls([ServedModel(name, name, engine, prompt_format)])

    def __iter__(self) -> Iterator[ServedModel]:
        return (self._models[name] for name in self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    @property
    def default(self) -> ServedModel:
        return self._models[self._order[0]]

    @property
    def names(self) -> tuple[str, ...]:
        return self._order

    def get(self, name: str) -> ServedModel:
        """The model called ``name``, or :class:`UnknownModel` with the sentence a tester reads."""
        model = self._models.get(name)
        if model is None:
            offered = ", ".join(self._order)
            raise UnknownModel(f"The server offers no model called {name!r}; choose one of: {offered}.")
        return model

    def pick(self, name: str | None) -> ServedModel:
        """``name`` when given (checked), else the default."""
        return self.default if not name else self.get(name)

    def same_weights(self, stored: str | None, model: ServedModel) -> bool:
        """Whether token ids stored by ``stored`` mean the same to ``model`` (same weights and tokenizer)."""
        if stored == model.name:
            return True
        known = self._models.get(stored or "")
        return known is not None and known.weights_name == model.weights_name

    def engines(self) -> list[ChatEngine]:
        """Each engine once, in the order of the names that use it (stats, health, the drain at shutdown)."""
        seen: dict[int, ChatEngine] = {}
        for model in self:
            seen.setdefault(id(model.engine), model.engine)
        return list(seen.values())
