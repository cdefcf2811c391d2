"""The HTTP server: FastAPI + the Gradio page, with a lifespan that owns every resource.

Start order: migrate the database, store the replies a previous run left in the
journal, make sure an admin exists, start the engine (the model is loaded before
uvicorn starts, so a bad ``--model`` ends the process with one clear line instead
of a traceback), then accept connections. Stop order (Ctrl-C): before uvicorn
closes any connection, stop taking generations, let running replies finish for a
few seconds, stop the rest (their handlers store them as stopped by the server
and the pages show it), then close connections and the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import gradio as gr
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import Mount

from app.accounts.device_tokens import DeviceTokens, load_or_create_key
from app.accounts.login_guard import LoginGuard
from app.accounts.passwords import generate_password, hash_password
from app.accounts.sessions import DatabaseUnavailable, LoginSessions
from app.config import Settings
from app.engine import ModelLoadError
from app.engine.remote_errors import RemoteEngineError
from app.migrate import upgrade_async
from app.models_registry import RegistryError, registry_from_settings
from app.services.arena import ArenaModel, ArenaService
from app.services.chat import ChatService
from app.services.shares import ShareService
from app.web.admin import ADMIN_PATHS, build_admin_router
from app.web.admin_figures import FigureSampler
from app.web.auth_routes import SignupLimiter, build_auth_router
from app.web.battle_routes import BATTLE_PATH, build_battle_router
from app.web.device_cookie import DeviceCookies
from app.web.export_route import build_export_router
from app.web.health import build_health_router
from app.web.leaderboard import LEADERBOARD_PATH, build_leaderboard_router
from app.web.login_cookie import SessionManager
from app.web.login_gate import LoginGate
from app.web.metrics import ServerMetrics, build_metrics_router
from app.web.model_engines import PreparedModels, prepare_models
from app.web.page.assets import CSS, PAGE_JS
from app.web.page.ui import REPLY_EVENTS, ServiceHolder, build_ui
from app.web.resources import ServerResources
from app.web.security import PUBLIC_PATHS, UNKNOWN_LOGIN, SecurityMiddleware
from app.web.session_binding import SessionBinding
from app.web.share_routes import SHARE_PATHS, build_share_router
from storage.database import Database
from storage.errors import StorageUnavailable
from storage.journal import Journal
from storage.repository import Repository

log = logging.getLogger("app.web.server")

FIRST_ADMIN = "admin"
SHUTDOWN_GRACE_SECONDS = 5.0
STORE_AFTER_SHUTDOWN_SECONDS = 10.0
JOURNAL_FILE = "pending-replies.jsonl"
DEVICE_KEY_FILE = "device-cookie.key"
# Gradio's queue: replies may hold this many workers beyond the engine's batch and
# queue, so the extra senders reach ChatService quickly and hear "busy" instead of
# waiting silently; the short events (page load, open a chat...) have their own
# workers on top, so they never wait behind replies.
REFUSAL_HEADROOM = 32
QUICK_EVENT_WORKERS = 64


async def ensure_first_admin(repository: Repository) -> str | None:
    """On an empty database create ``admin``; returns the generated password to show once.

    ``CHAT_ADMIN_PASSWORD`` sets it instead (scripts, tests; None is returned); either
    way no account exists without a password. The caller prints the password last,
    once the server answers, so it does not scroll away among start-up lines.
    """
    if await repository.count_users() > 0:
        return None
    password = os.environ.get("CHAT_ADMIN_PASSWORD") or generate_password()
    await repository.create_user(FIRST_ADMIN, hash_password(password), is_admin=True)
    if os.environ.get("CHAT_ADMIN_PASSWORD"):
        print(f"Created the first admin account '{FIRST_ADMIN}' with the password from CHAT_ADMIN_PASSWORD.")
        return None
    return password


def password_box(password: str) -> str:
    """The first admin's password in a box, the last thing on the console at start."""
    lines = [
        "First start: created the admin account.",
        "",
        f"  username: {FIRST_ADMIN}",
        f"  password: {password}",
        "",
        "This password is shown only now. Add testers with:",
        "  .venv/bin/python -m app users add NAME",
    ]
    width = max(len(line) for line in lines) + 2
    rows = [f"| {line.ljust(width - 2)} |" for line in lines]
    edge = "+" + "-" * width + "+"
    return "\n".join(["", edge, *rows, edge, ""])


def create_app(settings: Settings, prepared: PreparedModels) -> FastAPI:
    """The ASGI app over the registry's engines, prepared by ``serve`` before uvicorn: each model
    (or its tokenizer) loaded, its engine built, and a child-process engine already running."""
    holder = ServiceHolder()
    served = prepared.served()
    loaded = prepared.default.loaded
    resources = ServerResources(models=served)
    metrics = ServerMetrics(loaded.name, resources)
    sampler = FigureSampler(resources, metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await upgrade_async(settings.database_url)
        database = Database(settings.database_url)
        repository = Repository(database)
        journal = Journal(settings.data_dir / JOURNAL_FILE)
        if journal.load():
            try:
                await journal.replay(repository)
                print("Stored the replies the last run kept in its journal.", flush=True)
            except StorageUnavailable:
                log.warning("%d replies from the last run wait for the database", journal.backlog)
        replayer = asyncio.create_task(journal.keep_replaying(repository), name="journal-replay")
        resources.first_admin_password = await ensure_first_admin(repository)
        for each_engine in prepared.engines():
            each_engine.start()
        for each_engine in prepared.engines():
            await each_engine.wait_ready()
        chat_engine = served.default.engine
        sessions = SessionManager(LoginSessions(repository))
        await sessions.prune()
        sampling = asyncio.create_task(sampler.run(), name="admin-figures")
        resources.database, resources.engine = database, chat_engine
        resources.sessions, resources.journal = sessions, journal
        export_dir = settings.data_dir / "exports-tmp"
        export_dir.mkdir(parents=True, exist_ok=True)
        holder.service = ChatService(
            repository,
            chat_engine,
            served.default.prompt_format,
            served.default.name,
            models=served,
            max_input_chars=settings.max_input_chars,
            max_new_tokens=settings.max_new_tokens,
            rate_limit=settings.rate_limit,
            rate_period=settings.rate_period,
            export_dir=export_dir,
            journal=journal,
            observer=metrics,
        )
        try:
            yield
        finally:
            await drain()
            replayer.cancel()
            sampling.cancel()
            if journal.backlog:
                try:
                    await journal.replay(repository)
                except StorageUnavailable:
                    print(f"{journal.backlog} replies stay in {journal.path} for the next start.", flush=True)
            await database.dispose()
            print("Stopped cleanly.", flush=True)

    async def drain() -> None:
        """Finish or stop every running reply and let its handler store it; safe to call twice."""
        if resources.engine is None or resources.drained:
            return
        resources.drained = True
        print("Shutting down: finishing running replies...", flush=True)
        await prepared.stop(grace_seconds=SHUTDOWN_GRACE_SECONDS)
        if holder.service is not None:
            await holder.service.replies_settled(STORE_AFTER_SHUTDOWN_SECONDS)

    def announce() -> None:
        """Once uvicorn listens: where to go, then (first start only) the admin password, last."""
        print(f"Serving {', '.join(served.names)} on http://{settings.host}:{settings.port} (Ctrl-C stops)", flush=True)
        password, resources.first_admin_password = resources.first_admin_password, None
        if password is not None:
            print(password_box(password), flush=True)

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.drain = drain
    app.state.announce = announce

    guard = LoginGuard(on_attempt=metrics.login_attempt)
    devices = DeviceCookies(DeviceTokens(load_or_create_key(settings.data_dir / DEVICE_KEY_FILE)))

    def repository() -> Repository:
        if holder.service is None:
            raise DatabaseUnavailable()  # still starting: "try again in a minute"
        return holder.service.repository

    def sessions() -> SessionManager:
        if resources.sessions is None:
            raise DatabaseUnavailable()
        return resources.sessions

    async def login_of(request: Request) -> str | None:
        """Who is logged in (their user id), None for nobody; the security middleware's question."""
        try:
            login = await sessions().current(request)
        except DatabaseUnavailable:
            return UNKNOWN_LOGIN  # let the page's own check answer "unavailable"
        return None if login is None else str(login.user.id)

    async def current_username(request: Request) -> str | None:
        if resources.sessions is None:
            raise HTTPException(503, "The server is still starting; try again in a few seconds.")
        return await resources.sessions.username(request)

    app.include_router(build_health_router(resources, loaded.name))
    app.include_router(build_metrics_router(metrics, settings.metrics_token))
    app.include_router(build_export_router(holder.get, current_username))
    app.include_router(build_auth_router(
        repository, sessions, guard, signup_open=settings.signup == "open",
        signups=SignupLimiter(limit=settings.signup_limit), devices=devices,
    ))
    app.include_router(build_admin_router(repository, sessions, guard, sampler, resources, loaded.name))
    app.include_router(build_share_router(
        lambda: ShareService(repository()), sessions, public=settings.public_shares
    ))
    registry = prepared.registry
    pool = [ArenaModel(entry.name, entry.label, entry.aliases) for entry in registry if entry.arena]
    labels = {entry.name: entry.label for entry in registry}
    app.include_router(build_leaderboard_router(
        lambda: ArenaService(repository(), pool), lambda name: labels.get(name, name)
    ))
    app.include_router(build_battle_router(
        holder.get, lambda: ArenaService(repository(), pool), registry, current_username, settings.max_new_tokens
    ))
    # innermost: binds each page session to the login the security middleware found
    app.add_middleware(SessionBinding, functions=lambda: blocks.fns)
    # Configuring CORSMiddleware here makes Gradio drop its own CORS layer (which allows
    # any localhost origin with credentials); only origins the operator lists are allowed.
    app.add_middleware(
        CORSMiddleware, allow_origins=list(settings.allowed_origins), allow_credentials=True,
        allow_methods=["GET", "POST"], allow_headers=["*"],
    )
    # the admin paths answer for themselves: 403 for everyone but an admin, no "please log in" hint
    app.add_middleware(SecurityMiddleware, login_of=login_of, allowed_origins=settings.allowed_origins,
                       page_paths=("/", LEADERBOARD_PATH, BATTLE_PATH),
                       public_paths=(*PUBLIC_PATHS, *ADMIN_PATHS), own_login_check=SHARE_PATHS)
    app.add_middleware(LoginGate, guard=guard, devices=devices)  # outermost: refuses a login flood first

    blocks = build_ui(holder, settings, [(model.label, model.name) for model in served])
    size_queue(blocks, settings)
    mounted = gr.mount_gradio_app(
        app, blocks, path="/", auth_dependency=current_username, css=CSS, js=PAGE_JS, ssr_mode=False, footer_links=[],
        max_file_size=1,  # no uploads (the middleware refuses the route; this is a second lock)
    )
    gradio_app = next(route.app for route in mounted.routes if isinstance(route, Mount))

    def end_page_streams() -> None:
        """End every open page's heartbeat stream (Gradio's own stop signal for them).

        Each open tab holds one; left open, uvicorn waits its whole graceful time-out
        for them and then cancels them with a CancelledError traceback per tab."""
        stop_event = getattr(gradio_app, "stop_event", None)
        if stop_event is not None:
            stop_event.set()

    app.state.end_page_streams = end_page_streams
    return mounted


def size_queue(blocks: gr.Blocks, settings: Settings) -> None:
    """Size Gradio's queue from the settings.

    Gradio's worker pool is built inside ``queue()`` from ``max_threads`` (and its
    thread limiter at startup from the same value), so it is set first. Replies
    (the ``REPLY_EVENTS`` concurrency group) get the engine's batch + queue and
    some headroom; every other event has its own group with its own limit, and the
    pool holds both, so a page load never waits for a reply to end.
    """
    replies = settings.max_batch_size + settings.max_queue + REFUSAL_HEADROOM
    for block_fn in blocks.fns.values():
        if block_fn.concurrency_id == REPLY_EVENTS:
            block_fn.concurrency_limit = replies
    blocks.max_threads = replies + QUICK_EVENT_WORKERS
    blocks.queue(default_concurrency_limit=QUICK_EVENT_WORKERS, api_open=False)


class DrainingServer(uvicorn.Server):
    """uvicorn, but Ctrl-C first drains the replies, then closes connections.

    uvicorn's own shutdown waits ``timeout_graceful_shutdown`` for open responses
    and then cuts them, and only afterwards runs the app's lifespan shutdown: the
    streams would be cut before the engine's grace period began.
    """

    def __init__(
        self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]], end_page_streams: Callable[[], None],
        announce: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.end_page_streams = end_page_streams
        self.announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self.announce()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await self.drain()
        except Exception:
            log.exception("draining the replies failed")
        # the replies are stored and their pages told; what stays open is the pages' idle streams
        self.end_page_streams()
        await super().shutdown(sockets)


def proxy_options(settings: Settings) -> dict[str, object]:
    """uvicorn believes X-Forwarded-For/-Proto only from ``CHAT_TRUSTED_PROXIES``; by default from no one.

    Left to itself uvicorn trusts them from 127.0.0.1, so anything reaching the loopback (a local
    user, a local proxy that passes the header on) could pick its own client address and walk
    past the per-address login throttle."""
    if not settings.trusted_proxies:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": list(settings.trusted_proxies)}


def serve(settings: Settings) -> int:
    """``python -m app serve``: load the model (or check the inference server), then run uvicorn until Ctrl-C."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.getLogger().setLevel(logging.INFO)
    try:
        registry = registry_from_settings(settings)
        prepared = prepare_models(settings, registry)
    except (ModelLoadError, RemoteEngineError, RegistryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    app = create_app(settings, prepared)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=10,
        **proxy_options(settings),
    )
    server = DrainingServer(config, app.state.drain, app.state.end_page_streams, app.state.announce)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        server.run()
    if not server.started:
        return 1
    # Everything is stored and closed by now ("Stopped cleanly."). What remains is the
    # interpreter tearing down torch, the prepacked kernels and the KV buffers, which took
    # 3-5 s after every Ctrl-C here: leave at once instead.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)


