"""The HTTP server: FastAPI + the Gradio page, with a lifespan that owns every resource.

Start order: migrate the database, make sure an admin exists, start the engine
(the model is loaded before uvicorn starts, so a bad ``--model`` ends the process
with one clear line instead of a traceback), then accept connections. Stop order:
stop taking generations, let running replies finish for a few seconds, cancel the
rest (their handlers store the partial replies), close the database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import gradio as gr
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.auth import generate_password, hash_password
from app.chat import ChatService
from app.config import Settings
from app.engine import Engine, LoadedModel, ModelLoadError, PromptFormat, load_model
from app.engine.fast_linear import pack_linear_layers
from app.login_guard import LoginGuard
from app.migrate import upgrade_async
from app.page_assets import CSS, PAGE_JS
from app.sessions import DatabaseUnavailable, SessionManager
from app.ui import ServiceHolder, build_ui
from app.web_auth import build_auth_router
from app.web_security import SecurityMiddleware
from storage.database import Database
from storage.repository import Repository

log = logging.getLogger("app.server")

FIRST_ADMIN = "admin"
SHUTDOWN_GRACE_SECONDS = 5.0
async def ensure_first_admin(repository: Repository) -> None:
    """On an empty database create ``admin`` and print its password once.

    ``CHAT_ADMIN_PASSWORD`` sets it instead (scripts, tests); either way no
    account exists without a password.
    """
    if await repository.count_users() > 0:
        return
    password = os.environ.get("CHAT_ADMIN_PASSWORD") or generate_password()
    await repository.create_user(FIRST_ADMIN, hash_password(password), is_admin=True)
    if os.environ.get("CHAT_ADMIN_PASSWORD"):
        print(f"Created the first admin account '{FIRST_ADMIN}' with the password from CHAT_ADMIN_PASSWORD.")
    else:
        bar = "=" * 72
        print(
            f"\n{bar}\nCreated the first admin account.\n  username: {FIRST_ADMIN}\n  password: {password}\n"
            "This password is shown only now. Add testers with:\n"
            "  .venv/bin/python -m app users add NAME\n"
            f"{bar}\n",
            flush=True,
        )


def create_app(settings: Settings, loaded: LoadedModel) -> FastAPI:
    """The ASGI app; ``loaded`` is the model, already loaded (see ``serve``)."""
    holder = ServiceHolder()
    resources: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await upgrade_async(settings.database_url)
        database = Database(settings.database_url)
        repository = Repository(database)
        await ensure_first_admin(repository)
        engine = Engine(
            loaded,
            max_batch_size=settings.max_batch_size,
            max_queue=settings.max_queue,
            prefill_chunk=settings.prefill_chunk,
            prefix_cache_mb=settings.kv_cache_mb,
            kv_reserve_tokens=settings.kv_reserve_tokens,
        )
        engine.start()
        await engine.wait_ready()
        sessions = SessionManager(repository)
        await sessions.prune()
        resources.update(database=database, engine=engine, sessions=sessions)
        export_dir = settings.data_dir / "exports-tmp"
        export_dir.mkdir(parents=True, exist_ok=True)
        holder.service = ChatService(
            repository,
            engine,
            PromptFormat(loaded.tokenizer, loaded.eos_token_ids, loaded.context_length),
            loaded.name,
            max_input_chars=settings.max_input_chars,
            max_new_tokens=settings.max_new_tokens,
            rate_limit=settings.rate_limit,
            rate_period=settings.rate_period,
            export_dir=export_dir,
        )
        print(f"Serving {loaded.name} on http://{settings.host}:{settings.port}", flush=True)
        try:
            yield
        finally:
            print("Shutting down: finishing running replies...", flush=True)
            await engine.stop(grace_seconds=SHUTDOWN_GRACE_SECONDS)
            await asyncio.sleep(0.2)  # let cancelled handlers store their partial replies
            await database.dispose()
            print("Stopped cleanly.", flush=True)

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        database = resources.get("database")
        engine = resources.get("engine")
        report: dict[str, object] = {"model": loaded.name}
        healthy = True
        try:
            assert isinstance(database, Database)
            async with database.reader() as session:
                await session.execute(text("SELECT 1"))
            report["database"] = "ok"
        except Exception as error:
            report["database"] = f"error: {type(error).__name__}"
            healthy = False
        if isinstance(engine, Engine):
            stats = engine.stats()
            report["engine"] = {
                "alive": stats.alive,
                "ready": engine.ready,
                "running": stats.running,
                "waiting": stats.waiting,
                "max_batch_size": stats.max_batch_size,
                "max_queue": stats.max_queue,
                "generated_tokens": stats.generated_tokens,
                "prefilling": stats.prefilling,
                "prefix_cache": {
                    "entries": stats.prefix_cache.entries,
                    "mb_used": round(stats.prefix_cache.bytes_used / 2**20, 1),
                    "mb_budget": round(stats.prefix_cache.budget_bytes / 2**20, 1),
                    "hits": stats.prefix_cache.hits,
                    "lookups": stats.prefix_cache.lookups,
                    "reused_tokens": stats.prefix_cache.reused_tokens,
                },
            }
            healthy = healthy and stats.alive
        else:
            report["engine"] = "starting"
            healthy = False
        report["status"] = "ok" if healthy else "degraded"
        return JSONResponse(report, status_code=200 if healthy else 503)

    guard = LoginGuard()

    def repository() -> Repository:
        if holder.service is None:
            raise DatabaseUnavailable()  # still starting: "try again in a minute"
        return holder.service.repository

    def sessions() -> SessionManager:
        manager = resources.get("sessions")
        if not isinstance(manager, SessionManager):
            raise DatabaseUnavailable()
        return manager

    async def logged_in(request: Request) -> bool:
        try:
            return await sessions().current(request) is not None
        except DatabaseUnavailable:
            return True  # let the page's own check answer "unavailable"

    async def current_username(request: Request) -> str | None:
        manager = resources.get("sessions")
        if not isinstance(manager, SessionManager):
            raise HTTPException(503, "The server is still starting; try again in a few seconds.")
        return await manager.username(request)

    app.include_router(build_auth_router(repository, sessions, guard, signup_open=settings.signup == "open"))
    # Configuring CORSMiddleware here makes Gradio drop its own CORS layer (which allows
    # any localhost origin with credentials); only origins the operator lists are allowed.
    app.add_middleware(
        CORSMiddleware, allow_origins=list(settings.allowed_origins), allow_credentials=True,
        allow_methods=["GET", "POST"], allow_headers=["*"],
    )
    app.add_middleware(SecurityMiddleware, logged_in=logged_in, allowed_origins=settings.allowed_origins)

    blocks = build_ui(holder, settings)
    # Async handlers run on the event loop. Gradio's default of 1 event at a time per
    # endpoint would serialise all users; and a limit near the engine's capacity would
    # make Gradio hold the extra requests silently instead of the engine saying "busy".
    concurrency = max(100, 2 * (settings.max_batch_size + settings.max_queue))
    blocks.queue(default_concurrency_limit=concurrency, api_open=False)
    blocks.max_threads = 64
    return gr.mount_gradio_app(
        app, blocks, path="/", auth_dependency=current_username, css=CSS, js=PAGE_JS, ssr_mode=False, footer_links=[],
        max_file_size=1,  # no uploads (the middleware refuses the route; this is a second lock)
    )


def serve(settings: Settings) -> int:
    """``python -m app serve``: load the model, then run uvicorn until Ctrl-C."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.getLogger().setLevel(logging.INFO)
    try:
        loaded = load_model(settings.model, settings.cache_dir, settings.threads)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if settings.fast_kernels:
        packed = pack_linear_layers(loaded.model)
        log.info("%d linear layers on prepacked oneDNN kernels", packed)
    app = create_app(settings, loaded)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=10)
    return 0


