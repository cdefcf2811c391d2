"""Per-request sampling parameters, validated before anything is queued."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MAX_STOP_STRINGS = 8
MAX_STOP_LENGTH = 200


class InvalidParams(ValueError):
    """A sampling parameter is out of range; the message names it and the range."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature=0`` means greedy (deterministic) decoding."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        self.validate()

    def validate(self) -> None:
        _check_range("temperature", self.temperature, 0.0, 5.0)
        _check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_int("top_k", self.top_k, 0, 1_000_000)
        _check_range("repetition_penalty", self.repetition_penalty, 0.0, 10.0, low_open=True)
        _check_int("max_new_tokens", self.max_new_tokens, 1, 1_000_000)
        _check_int("min_new_tokens", self.min_new_tokens, 0, self.max_new_tokens)
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidParams(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        for stop in self.stop:
            if not isinstance(stop, str) or not 1 <= len(stop) <= MAX_STOP_LENGTH:
                raise InvalidParams(f"each stop string must be 1-{MAX_STOP_LENGTH} characters")
        if self.seed is not None:
            _check_int("seed", self.seed, 0, 2**63 - 1)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data


def _check_range(
    name: str, value: object, low: float, high: float, *, low_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidParams(f"{name} must be a number")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bracket = "(" if low_open else "["
        raise InvalidParams(f"{name} must be in {bracket}{low}, {high}], got {value}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParams(f"{name} must be a whole number")
    if not low <= value <= high:
        raise InvalidParams(f"{name} must be between {low} and {high}, got {value}")
