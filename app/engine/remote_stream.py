"""Reading one streamed completion from an inference server into a reply.

Part of ``app.engine.remote.RemoteEngine`` (mixed in, like the batcher's parts):
the engine decides when a request may be sent; this sends it, turns each
server-sent event into tokens by the local engine's rule (``reply_text``), and
ends the request with one ``GenerationResult``. A refusal before anything was
shown becomes an exception for ``submit``'s caller; later, it ends the reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from app.engine.contract import EngineBusy, EngineStopped, GenerationResult
from app.engine.detokenize import IncrementalDecoder
from app.engine.params import SamplingParams
from app.engine.remote_errors import describe_error, server_error_text
from app.engine.remote_protocols import Chunk
from app.engine.reply_text import accept_token

if TYPE_CHECKING:
    from app.engine.remote import RemoteEngine

log = logging.getLogger("app.engine.remote")  # the remote engine's one logger, whichever part logs

BUSY_STATUSES = (429, 503)


@dataclass(eq=False)
class RemoteRequest:
    """A request's whole life on the event loop, from ``submit`` to its ``GenerationResult``."""

    prompt_ids: list[int]
    params: SamplingParams
    decoder: IncrementalDecoder
    events: asyncio.Queue[str | GenerationResult] = field(default_factory=asyncio.Queue)
    submitted_at: float = field(default_factory=time.perf_counter)
    turn: asyncio.Event = field(default_factory=asyncio.Event)  # set when it may be sent
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # the server's status line came
    refusal: Exception | None = None  # busy or unreachable, while submit() still waits
    task: asyncio.Task[None] | None = None
    generated: list[int] = field(default_factory=list)
    text: str = ""
    sent_chars: int = 0
    first_token_at: float | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int = 0
    done: bool = False


class ServerStreamMixin:
    """One request's HTTP stream, its chunks and its end (see the module docstring)."""

    async def _generate(self: RemoteEngine, request: RemoteRequest) -> tuple[str, str | None]:
        """One streamed completion; returns (finish_reason, error)."""
        assert self._client is not None
        body = self.protocol.request_body(request.prompt_ids, request.params, self.served_model)
        address = self.url + self.protocol.completion_path
        try:
            async with self._client.stream("POST", address, json=body) as response:
                if response.status_code in BUSY_STATUSES:
                    detail = server_error_text(await response.aread())
                    message = f"the inference server is busy (HTTP {response.status_code}{detail})"
                    return self._refuse(request, EngineBusy(message + "; please try again in a moment"))
                if response.status_code >= 400:
                    detail = server_error_text(await response.aread())
                    return "error", f"the inference server refused the request (HTTP {response.status_code}{detail})"
                request.answered.set()
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        return "error", f"the inference server reported: {server_error_text(event)}"
                    self._accept_chunk(request, self.protocol.parse(event))
                    if request.finish_reason == "stop":
                        return "stop", None  # our stop string: leaving closes the stream, the server stops
                    # after an EOS or the length limit the server ends too; its last chunk has the figures
        except httpx.ConnectError as failure:
            return self._lost(request, f"cannot reach the inference server at {self.url} ({describe_error(failure)})")
        except httpx.TimeoutException as failure:
            return self._lost(request, f"the inference server at {self.url} timed out ({describe_error(failure)})")
        except httpx.TransportError as failure:
            return self._lost(request, f"lost the connection to the inference server at {self.url} "
                                       f"({describe_error(failure)})")
        if request.finish_reason is None:
            return "error", "the inference server ended the stream before the reply was finished"
        return request.finish_reason, None

    def _refuse(self: RemoteEngine, request: RemoteRequest, refusal: Exception) -> tuple[str, str | None]:
        """Before submit() returns, a refusal is raised to the caller; later it ends the reply."""
        if not request.answered.is_set():
            request.refusal = refusal
            request.answered.set()
        return "error", str(refusal)

    def _lost(self: RemoteEngine, request: RemoteRequest, message: str) -> tuple[str, str | None]:
        if not request.answered.is_set() and not request.generated:
            return self._refuse(request, EngineStopped(message))
        return "error", message

    def _accept_chunk(self: RemoteEngine, request: RemoteRequest, chunk: Chunk) -> None:
        if chunk.prompt_tokens is not None:
            request.prompt_tokens = chunk.prompt_tokens
        if chunk.cached_tokens is not None:
            request.cached_tokens = int(chunk.cached_tokens)
        if request.finish_reason is not None:
            return
        ids = chunk.token_ids
        if chunk.tokens_so_far is not None and chunk.tokens_so_far > len(request.generated) + len(ids):
            ids = self._recover_skipped(request, chunk)
        for token in ids:
            self._accept_token(request, token)
            if request.finish_reason is not None:
                return
        if chunk.finish_reason is not None:
            request.finish_reason = chunk.finish_reason

    def _recover_skipped(self: RemoteEngine, request: RemoteRequest, chunk: Chunk) -> list[int]:
        """Ids the server generated but did not send (llama.cpp withholds tokens ending mid-character).

        The chunk's text is the text of the skipped tokens plus this one; re-encoding
        it gives them back whenever the model chose the canonical split (it nearly
        always does), which we check by the count.
        """
        skipped = chunk.tokens_so_far - len(request.generated) - len(chunk.token_ids)  # type: ignore[operator]
        candidate = self.tokenizer.encode(chunk.text, add_special_tokens=False)
        if len(candidate) == skipped + len(chunk.token_ids) and candidate[skipped:] == chunk.token_ids:
            return candidate
        log.warning("could not recover %d token ids the server did not stream; the text is kept", skipped)
        return candidate[: max(0, len(candidate) - len(chunk.token_ids))] + chunk.token_ids

    def _accept_token(self: RemoteEngine, request: RemoteRequest, token: int) -> None:
        """The local engine's rule (``reply_text``), so a reply does not depend on where it ran."""
        self._generated_tokens += 1
        delta = accept_token(request, request.decoder, token, self.eos_token_ids)
        if delta:
            request.events.put_nowait(delta)

    def _finish(self: RemoteEngine, request: RemoteRequest, reason: str, error: str | None) -> None:
        if request.done:
            return
        request.done = True
        text = request.text if reason == "stop" else request.decoder.full_text()
        if text.startswith(request.text[: request.sent_chars]) and len(text) > request.sent_chars:
            request.events.put_nowait(text[request.sent_chars :])
        now = time.perf_counter()
        request.events.put_nowait(
            GenerationResult(
                token_ids=list(request.generated),
                text=text,
                finish_reason=reason,
                prompt_tokens=request.prompt_tokens or len(request.prompt_ids),
                completion_tokens=len(request.generated),
                time_to_first_token=(
                    None if request.first_token_at is None else request.first_token_at - request.submitted_at
                ),
                total_time=now - request.submitted_at,
                error=error,
                cached_tokens=request.cached_tokens,
            )
        )
