"""One-click downloads: ``GET /export/{conversation_id}?format=json|md|jsonl`` and ``GET /export?format=...``.

The sidebar's export links point here, so a click starts the download at once
(no "prepare, then click the link" step, nothing below the fold). The route asks
the login for the user and ChatService for the file, so another user's chat is
"not found" exactly as everywhere else; the file is written to a temporary folder
and removed once it has been sent. ``/export`` without an id is all of the user's
chats.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from starlette.background import BackgroundTask

from app.chat import ChatError, ChatService, ConversationNotFound, Unavailable
from app.export import FILE_SUFFIX

MEDIA_TYPES = {"json": "application/json", "md": "text/markdown; charset=utf-8", "jsonl": "application/x-ndjson"}


def build_export_router(
    service: Callable[[], ChatService | None], username: Callable[[Request], Awaitable[str | None]]
) -> APIRouter:
    router = APIRouter()

    async def download(request: Request, conversation_id: str | None, fmt: str) -> Response:
        chats = service()
        if chats is None:
            return PlainTextResponse("The server is still starting; try again in a few seconds.", 503)
        user = await username(request)
        if not user:
            return PlainTextResponse("Please log in.", 401)
        if fmt not in FILE_SUFFIX:
            return PlainTextResponse(f"Unknown format; use one of: {', '.join(FILE_SUFFIX)}.", 400)
        try:
            path = await chats.export(user, fmt, conversation_id)
        except ConversationNotFound as error:
            return PlainTextResponse(str(error), 404)
        except Unavailable as error:
            return PlainTextResponse(str(error), 503)
        except ChatError as error:
            return PlainTextResponse(str(error), 400)
        folder = path.parent
        return FileResponse(
            path, media_type=MEDIA_TYPES[fmt], filename=path.name,
            background=BackgroundTask(remove_folder, folder),
            headers={"Cache-Control": "no-store"},
        )

    @router.get("/export/{conversation_id}")
    async def export_chat(request: Request, conversation_id: str, format: str = "json") -> Response:
        return await download(request, conversation_id, format)

    @router.get("/export")
    async def export_all(request: Request, format: str = "jsonl") -> Response:
        return await download(request, None, format)

    return router


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
