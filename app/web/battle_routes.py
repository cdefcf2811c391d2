"""Blind battles over HTTP: ``/battle`` (the page), its two streams, and the vote.

- ``POST /battle/send`` (form: ``text``, and ``battle_id`` after the first turn) sends the
  message to both sides at once and streams both replies as server-sent events, each line
  ``{"side": "a"|"b", ...}``: ``text`` (the reply so far), ``done``, or ``error`` (a
  sentence); then ``{"battle": id}`` for a new battle, an optional ``{"flag": sentence}`` when
  a reply named a model, and ``{"finished": true}``. The first turn draws the pair
  (``ArenaService.pick_pair``) and records the battle once both chats exist.
- ``POST /battle/{id}/vote`` (form: ``choice`` = a | b | tie | both bad): the one vote; answers
  the revealed labels as JSON, or ``{"error": sentence}`` with 400/404.

Each side is an ordinary chat of the tester, sent through ``ChatService`` (the same queue,
throttle, storage and journal as the chat page); the page simply never shows which model is
which until the vote. A dropped connection cancels both streams, and the chat service stores
each as disconnected. Posts from another site are refused, like every form here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from app.models_registry import ModelRegistry
from app.services.arena import ALREADY_VOTED, ArenaService, BattleNotFound
from app.services.chat import ChatService
from app.services.errors import ChatError
from app.services.rules import ChatOptions
from app.web.auth_routes import CROSS_SITE, FormTooLarge, cross_site_post, read_form
from app.web.battle_page import BATTLE_PAGE

log = logging.getLogger(__name__)

BATTLE_PATH = "/battle"
SIDES = ("a", "b")


@dataclass
class SideUpdate:
    side: str
    payload: dict


def side_options(registry: ModelRegistry, name: str, max_new_tokens: int) -> ChatOptions:
    """The model's own defaults (a variant's included), the server's cap on the reply length."""
    defaults = registry.get(name).defaults
    return ChatOptions(
        system_prompt=defaults.system_prompt or "",
        temperature=0.7 if defaults.temperature is None else defaults.temperature,
        top_p=0.9 if defaults.top_p is None else defaults.top_p,
        max_new_tokens=min(defaults.max_new_tokens or 256, max_new_tokens),
        model=name,
        battle=True,
    )


def build_battle_router(
    chat: Callable[[], ChatService],
    arena: Callable[[], ArenaService],
    registry: ModelRegistry,
    username_of: Callable[[Request], object],
    max_new_tokens: int,
) -> APIRouter:
    router = APIRouter()

    @router.get(BATTLE_PATH)
    async def page() -> Response:
        return HTMLResponse(BATTLE_PAGE, headers={"Cache-Control": "no-store"})

    async def identify(request: Request) -> tuple[ChatService, ArenaService, str, int]:
        username = await username_of(request)  # type: ignore[misc]
        service = chat()
        return service, arena(), str(username or ""), await service.user_id(username)

    @router.post(BATTLE_PATH + "/send")
    async def send(request: Request) -> Response:
        if cross_site_post(request):
            return JSONResponse({"error": CROSS_SITE}, 403)
        try:
            form = await read_form(request)
            service, games, username, user_id = await identify(request)
            battle_id = form.get("battle_id", "")
            if battle_id:
                battle = await games.battle(user_id, battle_id)
                if battle.winner is not None:
                    raise ChatError(ALREADY_VOTED)
                models = (battle.model_a, battle.model_b)
                chats: tuple[str | None, str | None] = (battle.conversation_a, battle.conversation_b)
                if None in chats:
                    raise ChatError("One side of this battle was deleted; start a new one.")
            else:
                models, chats = await games.pick_pair(), (None, None)
        except (FormTooLarge, ChatError) as error:
            return refusal(error, "message")
        text = form.get("text", "")
        streams = [
            service.send(username, chats[i], text, side_options(registry, models[i], max_new_tokens)) for i in range(2)
        ]
        events = both_sides(streams, games, user_id, battle_id, models)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @router.post(BATTLE_PATH + "/{battle_id}/vote")
    async def vote(battle_id: str, request: Request) -> Response:
        if cross_site_post(request):
            return JSONResponse({"error": CROSS_SITE}, 403)
        try:
            form = await read_form(request)
            _service, games, _username, user_id = await identify(request)
            reveal = await games.vote(user_id, battle_id, form.get("choice", ""))
        except (FormTooLarge, ChatError) as error:
            return refusal(error, "vote")
        return JSONResponse({
            "winner": reveal.battle.winner, "label_a": reveal.label_a, "label_b": reveal.label_b,
            "model_a": reveal.battle.model_a, "model_b": reveal.battle.model_b, "flag": reveal.flag,
        })

    return router


async def both_sides(
    streams: list[AsyncIterator], games: ArenaService, user_id: int, battle_id: str, models: tuple[str, str]
) -> AsyncIterator[str]:
    """Both replies as they come, one SSE line per update, then the battle's own lines."""
    queue: asyncio.Queue[SideUpdate | None] = asyncio.Queue()
    chats: dict[str, str] = {}
    finals: dict[str, str] = {}

    async def pump(side: str, stream: AsyncIterator) -> None:
        try:
            async for event in stream:
                if event.kind == "conversation":
                    chats[side] = event.conversation_id
                elif event.kind == "text":
                    finals[side] = event.text
                    await queue.put(SideUpdate(side, {"text": event.text}))
                elif event.kind == "done":
                    if event.message is not None:
                        finals[side] = event.message.content
                    await queue.put(SideUpdate(side, {"text": finals.get(side, ""), "done": True}))
        except ChatError as error:
            await queue.put(SideUpdate(side, {"error": str(error)}))
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(side, stream)) for side, stream in zip(SIDES, streams, strict=True)]
    try:
        ended = 0
        while ended < len(tasks):
            update = await queue.get()
            if update is None:
                ended += 1
                continue
            yield sse({"side": update.side, **update.payload})
        if not battle_id and len(chats) == 2:
            battle = await games.open_battle(user_id, models[0], models[1], chats["a"], chats["b"])
            battle_id = battle.id
            yield sse({"battle": battle.id})
        if battle_id:
            flags = [await games.check_reply(user_id, battle_id, finals.get(side, "")) for side in SIDES]
            flag = next((f for f in flags if f), None)
            if flag:
                yield sse({"flag": flag})
        yield sse({"finished": True})
    except ChatError as error:
        yield sse({"error": str(error), "finished": True})
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def refusal(error: FormTooLarge | ChatError, what: str) -> JSONResponse:
    """A refused send or vote as JSON with its status: too large, unknown battle, or a rule's sentence."""
    if isinstance(error, FormTooLarge):
        return JSONResponse({"error": f"The {what} is too large."}, 413)
    return JSONResponse({"error": str(error)}, 404 if isinstance(error, BattleNotFound) else 400)


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
