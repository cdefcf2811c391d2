"""Downloads of a tester's chats through our own route: ``GET /export/{id|all}?format=...``.

Why not Gradio's file component: a file it serves is readable by any logged-in user
who has its URL, and nothing limited how many "export all" ran at once. Here every
download is made for the login that asks (another user's chat is "not found", the
same answer as an id that does not exist), streamed from a temporary file that is
deleted once sent, and throttled per user: one export at a time and at most
``EXPORTS_PER_WINDOW`` per ``EXPORT_WINDOW_SECONDS``.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from starlette.background import BackgroundTask

from app.services.chat import ChatService
from app.services.errors import ChatError, ConversationNotFound, Unavailable
from app.services.export_formats import MEDIA_TYPE
from app.services.limits import MAX_TRACKED_KEYS, BoundedTable, MovingWindow, Slots

EXPORTS_PER_WINDOW = 10
EXPORT_WINDOW_SECONDS = 60.0
FORMATS = {"json": "json", "markdown": "md", "md": "md", "jsonl": "jsonl", "preferences": "preferences"}
ALL = "all"


class ExportRefused(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExportGate:
    """Per user: one export running, at most ``limit`` started per ``window`` seconds.

    Both per-user tables hold at most ``MAX_TRACKED_KEYS`` users (see app/services/limits.py).
    """

    def __init__(self, limit: int = EXPORTS_PER_WINDOW, window: float = EXPORT_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.started = MovingWindow(limit, window, clock=clock)
        self.running: BoundedTable[str, Slots] = BoundedTable(MAX_TRACKED_KEYS)

    @contextlib.asynccontextmanager
    async def turn(self, username: str) -> AsyncIterator[None]:
        line = self.running.get_or_add(username, lambda: Slots(1, max_waiting=0))
        async with line.turn(ExportRefused("Your previous export is still being prepared; wait for it to finish.", 5)):
            if not self.started.allow(username):
                wait = self.started.retry_after(username)
                raise ExportRefused(f"Too many exports in a short time; try again in {wait} seconds.", wait)
            yield


def build_export_router(
    service: Callable[[], ChatService],
    username_of: Callable[[Request], Awaitable[str | None]],
    gate: ExportGate | None = None,
) -> APIRouter:
    router = APIRouter()
    exports = gate if gate is not None else ExportGate()

    @router.get("/export/{conversation_id}", response_model=None)
    async def export(conversation_id: str, request: Request, format: str = "json") -> Response:
        username = await username_of(request)
        if not username:
            return PlainTextResponse("Please log in first.", 401)
        fmt = FORMATS.get(format.lower())
        if fmt is None:
            return PlainTextResponse("Unknown export format; use json, markdown, jsonl or preferences.", 400)
        try:
            async with exports.turn(username):
                path = await service().export(username, fmt, None if conversation_id == ALL else conversation_id)
        except ExportRefused as refused:
            return PlainTextResponse(str(refused), 429, headers={"Retry-After": str(refused.retry_after)})
        except ConversationNotFound as error:
            return PlainTextResponse(str(error), 404)
        except Unavailable as error:
            return PlainTextResponse(str(error), 503, headers={"Retry-After": "30"})
        except ChatError as error:
            return PlainTextResponse(str(error), 400)
        return FileResponse(
            path, media_type=MEDIA_TYPE[fmt], filename=path.name,
            background=BackgroundTask(shutil.rmtree, Path(path).parent, ignore_errors=True),
            headers={"Cache-Control": "no-store"},  # a tester's chats stay out of shared caches
        )

    return router

