"""The HTTP server: FastAPI + the Gradio page, with a lifespan that owns every resource.

Start order: migrate the database, make sure an admin exists, start the engine
(the model is loaded before uvicorn starts, so a bad ``--model`` ends the process
with one clear line instead of a traceback), then accept connections. Stop order:
stop taking generations, let running replies finish for a few seconds, cancel the
rest (their handlers store the partial replies), close the database.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import sys
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import gradio as gr
import uvicorn
from fastapi import FastAPI, Form
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from sqlalchemy import text

from app.auth import WeakPassword, check_password_strength, generate_password, hash_password, verify_password
from app.chat import ChatService
from app.config import Settings
from app.engine import Engine, LoadedModel, ModelLoadError, PromptFormat, load_model
from app.engine.fast_linear import pack_linear_layers
from app.migrate import upgrade_async
from app.ui import CSS, ServiceHolder, build_ui
from storage.database import Database
from storage.errors import Conflict, InvalidInput, NotFound
from storage.repository import Repository

log = logging.getLogger("app.server")

FIRST_ADMIN = "admin"
SHUTDOWN_GRACE_SECONDS = 5.0
LOGIN_FAILURES_ALLOWED = 5
LOGIN_FAILURE_WINDOW = 60.0


class LoginGuard:
    """Checks passwords off the event loop and slows down password guessing.

    scrypt costs ~50 ms of CPU on purpose, so it runs in a thread; after
    ``LOGIN_FAILURES_ALLOWED`` failures in a minute a name is refused outright.
    """

    def __init__(self, holder: ServiceHolder) -> None:
        self.holder = holder
        self.failures: dict[str, deque[float]] = defaultdict(deque)
        # checked for unknown names too, so response time does not reveal which names exist
        self.decoy_hash = hash_password("decoy password for unknown users")

    async def check(self, username: str, password: str) -> bool:
        """Gradio's login callback. It must be a coroutine *function* (a bound async method
        is one): Gradio awaits only those, and would take the coroutine object returned by
        an instance's async ``__call__`` as a truthy "yes" without running it."""
        service = self.holder.service
        if service is None:
            return False
        recent = self.failures[username]
        now = time.monotonic()
        while recent and now - recent[0] > LOGIN_FAILURE_WINDOW:
            recent.popleft()
        if len(recent) >= LOGIN_FAILURES_ALLOWED:
            return False
        try:
            user = await service.repository.get_user(username)
        except NotFound:
            user = None
        stored = user.password_hash if user else self.decoy_hash
        ok = await asyncio.to_thread(verify_password, password, stored)
        if not (ok and user):
            recent.append(now)
            return False
        return True


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


SIGNUP_PAGE = """<!doctype html><html><head><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign up · Team Chat</title><style>body{{font-family:system-ui;max-width:380px;margin:10vh auto;padding:0 16px}}
input,button{{display:block;width:100%;margin:8px 0;padding:8px;font-size:1rem}}.err{{color:#b00}}</style></head>
<body><h1>Create an account</h1><p class="err">{error}</p><form method="post" action="/signup">
<input name="username" placeholder="username" required maxlength="64" autocomplete="username">
<input name="password" type="password" placeholder="password (8+ characters)" required autocomplete="new-password">
<button type="submit">Sign up</button></form><p><a href="/">Back to log in</a></p></body></html>"""


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
        engine = Engine(loaded, max_batch_size=settings.max_batch_size, max_queue=settings.max_queue)
        engine.start()
        await engine.wait_ready()
        resources.update(database=database, engine=engine)
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
            }
            healthy = healthy and stats.alive
        else:
            report["engine"] = "starting"
            healthy = False
        report["status"] = "ok" if healthy else "degraded"
        return JSONResponse(report, status_code=200 if healthy else 503)

    if settings.signup == "open":

        @app.get("/signup", response_class=HTMLResponse)
        async def signup_page() -> str:
            return SIGNUP_PAGE.format(error="")

        @app.post("/signup", response_model=None)
        async def signup(username: str = Form(...), password: str = Form(...)) -> HTMLResponse | RedirectResponse:
            service = holder.get()
            try:
                check_password_strength(password)
                password_hash = await asyncio.to_thread(hash_password, password)
                await service.repository.create_user(username, password_hash)
            except (WeakPassword, InvalidInput, Conflict) as error:
                return HTMLResponse(SIGNUP_PAGE.format(error=html.escape(str(error))), status_code=400)
            return RedirectResponse("/", status_code=303)

    blocks = build_ui(holder, settings)
    # Async handlers run on the event loop. Gradio's default of 1 event at a time per
    # endpoint would serialise all users; and a limit near the engine's capacity would
    # make Gradio hold the extra requests silently instead of the engine saying "busy".
    concurrency = max(100, 2 * (settings.max_batch_size + settings.max_queue))
    blocks.queue(default_concurrency_limit=concurrency, api_open=False)
    blocks.max_threads = 64
    auth_message = "Log in with the account your admin gave you."
    if settings.signup == "open":
        auth_message += " New here? Create an account at /signup."
    return gr.mount_gradio_app(
        app, blocks, path="/", auth=LoginGuard(holder).check, auth_message=auth_message, css=CSS, ssr_mode=False,
        footer_links=[],
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


