"""``/admin``: the team lead's page: accounts, usage, ratings, the audit, and the engine live.

Admins only. Everyone else, logged in or not, gets the same bare 403 on every path
here (the security middleware lets these paths through so that this router, not its
"please log in", answers): nothing tells a stranger what the page holds. The flag is
read from the database on each request, so a demoted admin loses the page at once.

Account actions go through ``app.accounts.user_admin``, the functions the CLI uses,
and each is written to the audit there. Forms are read with the login form's size
cap, and refused when the browser marks them cross-site (the middleware already
refuses a foreign ``Origin``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from app.accounts import user_admin
from app.accounts.login_guard import HashingBusy, LoginGuard
from app.accounts.passwords import WeakPassword, hash_password
from app.accounts.sessions import DatabaseUnavailable
from app.web.admin_figures import FigureSampler
from app.web.admin_page import ADMIN_PAGE
from app.web.auth_routes import CROSS_SITE, UNAVAILABLE, FormTooLarge, cross_site_post, read_form
from app.web.health import health_report
from app.web.login_cookie import SessionManager
from app.web.resources import ServerResources
from storage.errors import Conflict, InvalidInput, NotFound, StorageUnavailable
from storage.models import utcnow
from storage.repository import Repository

log = logging.getLogger(__name__)

ACTIONS = ("add", "password", "sessions", "remove", "role")
ADMIN_PATHS = ("/admin", "/admin/data", "/admin/figures", *(f"/admin/users/{a}" for a in ACTIONS))
FORBIDDEN = "Forbidden."
MAX_DAYS = 366


def build_admin_router(
    repository: Callable[[], Repository],
    sessions: Callable[[], SessionManager],
    guard: LoginGuard,
    sampler: FigureSampler,
    resources: ServerResources,
    model_name: str,
) -> APIRouter:
    router = APIRouter()

    async def admin_name(request: Request) -> str | None:
        """The logged-in admin's name; None for anyone else (raises DatabaseUnavailable)."""
        login = await sessions().current(request)
        return login.user.username if login is not None and login.user.is_admin else None

    def admins_only(
        handler: Callable[[Request, str], Awaitable[Response]], method: str
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            try:
                actor = await admin_name(request)
            except (DatabaseUnavailable, StorageUnavailable):
                return PlainTextResponse(UNAVAILABLE, 503)
            if actor is None:
                return PlainTextResponse(FORBIDDEN, 403)
            if request.method != method:  # only an admin learns which method a path takes
                return PlainTextResponse(f"Use {method} here.", 405, headers={"Allow": method})
            return await handler(request, actor)

        return guarded

    async def page(_request: Request, _actor: str) -> Response:
        return HTMLResponse(ADMIN_PAGE)

    async def data(request: Request, _actor: str) -> Response:
        raw = request.query_params.get("days", "7")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_DAYS:
            return JSONResponse({"error": f"The period must be a whole number of days from 1 to {MAX_DAYS}."}, 400)
        since = utcnow() - timedelta(days=int(raw))
        store = repository()
        try:
            body = {
                "days": int(raw),
                "accounts": [asdict(a) for a in await store.accounts()],
                "by_user": [asdict(u) for u in await store.usage_by_user(since)],
                "by_model": [asdict(m) for m in await store.usage_by_model(since)],
                "ratings": [asdict(r) for r in await store.ratings_by_model(since)],
                "audit": [asdict(a) for a in await store.recent_admin_actions()],
            }
        except StorageUnavailable:
            return JSONResponse({"error": UNAVAILABLE}, 503)
        return JSONResponse(_jsonable(body))

    async def figures(_request: Request, _actor: str) -> Response:
        report, _healthy = await health_report(resources, model_name)
        return JSONResponse({**sampler.figures(), "health": report})

    async def act(request: Request, actor: str) -> Response:
        if cross_site_post(request):
            return JSONResponse({"error": CROSS_SITE}, 403)
        action = request.url.path.rsplit("/", 1)[-1]
        try:
            form = await read_form(request)
            text = await run_action(repository(), guard, actor, action, form)
        except FormTooLarge:
            return JSONResponse({"error": "The form is too large."}, 413)
        except NotFound as error:
            return JSONResponse({"error": f"Nothing changed: {error}."}, 404)
        except (WeakPassword, InvalidInput, Conflict) as error:
            return JSONResponse({"error": f"Nothing changed: {error}."}, 400)
        except HashingBusy as error:
            return JSONResponse({"error": str(error)}, 503)
        except (StorageUnavailable, DatabaseUnavailable):
            return JSONResponse({"error": UNAVAILABLE}, 503)
        log.info("admin %s: %s %s", actor, action, form.get("name", "")[:64])
        return JSONResponse({"message": text})

    routes = {"/admin": (page, "GET"), "/admin/data": (data, "GET"), "/admin/figures": (figures, "GET")}
    routes.update({f"/admin/users/{action}": (act, "POST") for action in ACTIONS})
    for path, (handler, method) in routes.items():
        # with and without the trailing slash and for either method: the middleware lets all of them
        # through, so all of them must answer here, with the same 403 for anyone but an admin
        for variant in (path, path + "/"):
            router.add_api_route(variant, admins_only(handler, method), methods=["GET", "POST"], response_model=None)
    return router


async def run_action(repository: Repository, guard: LoginGuard, actor: str, action: str, form: dict[str, str]) -> str:
    """One account action through the CLI's functions; returns the sentence the page shows."""
    name = form.get("name", "").strip()
    if not name:
        raise InvalidInput("give a user name")

    async def hasher(password: str) -> str:
        return str(await guard.hash_in_turn(hash_password, password))

    if action == "add":
        admin = form.get("admin") == "on"
        user = await user_admin.add_user(repository, actor, name, form.get("password", ""), admin=admin,
                                         hasher=hasher)
        return f"Added {'admin' if admin else 'tester'} {user.username}."
    if action == "password":
        await user_admin.reset_password(repository, actor, name, form.get("password", ""), hasher=hasher)
        return f"New password set for {name}; their logins were ended."
    if action == "sessions":
        ended = await user_admin.end_sessions(repository, actor, name)
        return f"Ended {ended} login{'s' * (ended != 1)} of {name}."
    if action == "remove":
        await user_admin.remove_user(repository, actor, name)
        return f"Removed {name} and their chats."
    admin = form.get("admin") == "on"
    await user_admin.set_admin(repository, actor, name, admin)
    return f"{name} is now {'an admin' if admin else 'a tester'}."


def _jsonable(value: Any) -> Any:
    """Datetimes as ISO text, everything else as it is."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
