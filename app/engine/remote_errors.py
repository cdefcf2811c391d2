"""How an inference server's failure becomes one sentence of ours, for the operator or the tester."""

from __future__ import annotations

import json
from typing import Any


class RemoteEngineError(RuntimeError):
    """The inference server cannot be used (unreachable, another model); the message says why."""


def describe_error(error: BaseException) -> str:
    """The exception's class and message: httpx's messages alone are often empty."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def server_error_text(payload: bytes | dict[str, Any]) -> str:
    """The server's error message, short, for a sentence of ours."""
    try:
        data = json.loads(payload) if isinstance(payload, bytes) else payload
        error = data.get("error", data) if isinstance(data, dict) else data
        message = error.get("message") if isinstance(error, dict) else error
        text = str(message).strip()
    except (ValueError, AttributeError):
        text = payload.decode(errors="replace").strip() if isinstance(payload, bytes) else str(payload)
    return f": {text[:200]}" if text else ""
