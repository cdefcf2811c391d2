"""Our own login, logout, account and sign-up pages (plain HTML forms, no Gradio).

Forms are read with a hard size cap before any parsing or hashing, so a megabyte
"username" costs nothing. CSRF: the session cookie is ``SameSite=Lax``, the security
middleware refuses any request whose ``Origin`` is not this server, and the forms here
also refuse a POST that the browser marks as coming from another site or origin
(``Sec-Fetch-Site``), for the rare browser that leaves ``Origin`` out. Sign-up is
throttled per client address (``SIGNUPS_PER_WINDOW`` accounts per ``SIGNUP_WINDOW_SECONDS``).

``POST /login`` also answers API clients: a request that does not ask for HTML gets
JSON (200 with the cookie, 401 for wrong credentials, 429 when throttled), which is
exactly what ``gradio_client.Client(url, auth=(name, password))`` expects.
"""

from __future__ import annotations

import html
import logging
import math
import time
from collections.abc import Callable
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from app.accounts.device_tokens import DeviceToken
from app.accounts.login_guard import HashingBusy, LoginGuard, Throttled
from app.accounts.passwords import (
    MAX_PASSWORD_LENGTH,
    WeakPassword,
    check_password_strength,
    hash_password,
    verify_password,
)
from app.accounts.sessions import CurrentLogin, DatabaseUnavailable
from app.services.limits import MovingWindow
from app.web.auth_page import message, page
from app.web.device_cookie import DeviceCookies
from app.web.login_cookie import SessionManager
from storage.errors import Conflict, InvalidInput, NotFound, StorageUnavailable
from storage.models import USERNAME_MAX
from storage.repository import Repository, UserRecord

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 8192
SIGNUPS_PER_WINDOW = 5
SIGNUP_WINDOW_SECONDS = 600.0
CROSS_SITE = "This form can only be sent from this server's own page."
UNAVAILABLE = "The server cannot reach its database right now; try again in a minute."
WRITES_FAIL = ("The server can read its database but cannot write to it right now ({reason}), "
               "and a login must be written down; try again later.")
WRITE_FAULTS = ("disk full", "read-only")

class FormTooLarge(Exception):
    pass


class SignupLimiter(MovingWindow):
    """At most ``limit`` sign-ups per address per ``window`` seconds; at most ``MAX_TRACKED_KEYS`` addresses kept."""

    def __init__(self, limit: int = SIGNUPS_PER_WINDOW, window: float = SIGNUP_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(limit, window, clock=clock)


def database_fault(error: BaseException) -> str:
    """The sentence for a database failure: a full or read-only disk is not an unreachable database."""
    if isinstance(error, StorageUnavailable) and error.reason in WRITE_FAULTS:
        return WRITES_FAIL.format(reason=error.reason)
    return UNAVAILABLE


def cross_site_post(request: Request) -> bool:
    """A form post the browser says came from another site or origin (CSRF)."""
    return request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


async def read_form(request: Request, limit: int = MAX_FORM_BYTES) -> dict[str, str]:
    """A url-encoded form, refused past ``limit`` bytes before anything is parsed."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise FormTooLarge()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise FormTooLarge()
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=10)
    return {name: values[0] for name, values in fields.items()}


def safe_next(target: str | None) -> str:
    """Only a path on this server (``/...``, never ``//host`` or a scheme) may follow a login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def login_form(error: str = "", next_path: str = "/", note: str = "", signup_open: bool = False) -> str:
    signup = '<p>New here? <a href="/signup">Create an account</a>.</p>' if signup_open else ""
    return (
        message(error) + message(note, "ok")
        + f'<form method="post" action="/login?next={html.escape(next_path, quote=True)}">'
        '<label>Username<input name="username" required maxlength="64" autocomplete="username" autofocus></label>'
        '<label>Password<input name="password" type="password" required maxlength="1024" '
        'autocomplete="current-password"></label><button type="submit">Log in</button></form>' + signup
    )


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def build_auth_router(
    repository: Callable[[], Repository],
    sessions: Callable[[], SessionManager],
    guard: LoginGuard,
    *,
    signup_open: bool,
    signups: SignupLimiter | None = None,
    devices: DeviceCookies | None = None,
) -> APIRouter:
    """The routes; ``repository``/``sessions`` are looked up per request (they appear at start-up)."""
    router = APIRouter()
    decoy: dict[str, str] = {}

    def decoy_hash() -> str:
        # checked for unknown names too, so response time does not reveal which names exist
        if "hash" not in decoy:
            decoy["hash"] = hash_password("decoy password for unknown users")
        return decoy["hash"]

    def refuse(request: Request, text: str, status_code: int, next_path: str = "/", **headers: str) -> Response:
        if wants_html(request):
            response: Response = page("Log in", login_form(text, next_path, signup_open=signup_open), status_code)
        else:
            response = JSONResponse({"detail": text}, status_code=status_code)
        response.headers.update(headers)
        return response

    async def check_credentials(username: str, password: str, address: str,
                                device: DeviceToken | None = None) -> UserRecord | None:
        """The user when the password is right; None when not. Raises Throttled, HashingBusy."""
        guard.check_allowed(username, address, device)
        try:
            user: UserRecord | None = await repository().get_user(username)
        except NotFound:
            user = None
        stored = user.password_hash if user else await guard.hash_in_turn(decoy_hash)
        ok = await guard.hash_in_turn(verify_password, password, stored)
        if not (ok and user):
            guard.failed(username, address, device)
            return None
        guard.succeeded(username, address, device)
        return user

    async def current(request: Request) -> CurrentLogin | None:
        return await sessions().current(request)

    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/") -> Response:
        return page("Log in", login_form(next_path=safe_next(next), signup_open=signup_open))

    @router.post("/login", response_model=None)
    async def login(request: Request, next: str = "/") -> Response:
        next_path = safe_next(next)
        address = request.client.host if request.client else "unknown"
        if cross_site_post(request):
            return refuse(request, CROSS_SITE, 403, next_path)
        try:
            form = await read_form(request)
        except FormTooLarge:
            return refuse(request, "The form is too large.", 413, next_path)
        username, password = form.get("username", "").strip(), form.get("password", "")
        if not username or len(username) > USERNAME_MAX or len(password) > MAX_PASSWORD_LENGTH:
            return refuse(request, "Incorrect username or password.", 401, next_path)
        device = devices.for_user(request.cookies, username) if devices else None
        try:
            user = await check_credentials(username, password, address, device)
            if user is None:
                return refuse(request, "Incorrect username or password.", 401, next_path)
            response: Response = (
                RedirectResponse(next_path, status_code=303) if wants_html(request) else JSONResponse({"success": True})
            )
            await sessions().start(response, request, user)
            if devices:
                devices.remember(response, request, user.username)
            return response
        except Throttled as error:
            return refuse(request, str(error), 429, next_path, **{"Retry-After": str(error.retry_after)})
        except HashingBusy as error:
            return refuse(request, str(error), 503, next_path, **{"Retry-After": "5"})
        except (SQLAlchemyError, OSError, StorageUnavailable, DatabaseUnavailable) as error:
            log.warning("login failed: database unavailable")
            return refuse(request, database_fault(error), 503, next_path, **{"Retry-After": "30"})

    @router.post("/logout", response_model=None)
    async def logout(request: Request) -> Response:
        if cross_site_post(request):
            return page("Log out", message(CROSS_SITE), 403)
        response = RedirectResponse("/login", status_code=303)
        await sessions().end(request, response)
        return response

    @router.get("/logout", response_model=None)
    async def logout_link(request: Request) -> Response:
        """The page's "Log out" link. A GET from anywhere else (a link or an image on another
        page, which may even be same-site) only gets a button to confirm."""
        if request.headers.get("sec-fetch-site") in ("same-origin", "none"):
            return await logout(request)
        return page("Log out", '<form method="post" action="/logout"><button type="submit">Log out</button></form>')

    def account_body(login: CurrentLogin, error: str = "", note: str = "") -> str:
        name = html.escape(login.user.username)
        return (
            f"<p>Signed in as <b>{name}</b>. <a href=\"/\">Back to the chat</a></p>"
            + message(error) + message(note, "ok")
            + '<h2>Shared chats</h2><p><a href="/account/shares" id="share-links">Your share links</a>: '
            "see and revoke the links to chats you shared.</p>"
            + '<h2>Change password</h2><form method="post" action="/account/password">'
            '<label>Current password<input name="current" type="password" required maxlength="1024" '
            'autocomplete="current-password"></label>'
            '<label>New password<input name="new" type="password" required maxlength="1024" '
            'autocomplete="new-password"></label>'
            '<button type="submit">Change password</button></form>'
            '<form method="post" action="/logout"><button type="submit">Log out</button></form>'
            '<form method="post" action="/account/logout-everywhere">'
            '<button type="submit">Log out everywhere</button></form>'
        )

    @router.get("/account", response_model=None)
    async def account(request: Request) -> Response:
        try:
            login = await current(request)
        except DatabaseUnavailable:
            return page("Account", message(UNAVAILABLE), 503)
        if login is None:
            return RedirectResponse("/login?next=/account", status_code=303)
        return page("Account", account_body(login))

    @router.post("/account/password", response_model=None)
    async def change_password(request: Request) -> Response:
        address = request.client.host if request.client else "unknown"
        if cross_site_post(request):
            return page("Account", message(CROSS_SITE), 403)
        try:
            login = await current(request)
        except DatabaseUnavailable:
            return page("Account", message(UNAVAILABLE), 503)
        if login is None:
            return RedirectResponse("/login?next=/account", status_code=303)
        try:
            form = await read_form(request)
            check_password_strength(form.get("new", ""), login.user.username)
            if await check_credentials(login.user.username, form.get("current", ""), address) is None:
                return page("Account", account_body(login, "The current password is not right."), 400)
            new_hash = await guard.hash_in_turn(hash_password, form["new"])
            await repository().change_password(login.user.id, str(new_hash), keep_session=login.id_hash)
        except FormTooLarge:
            return page("Account", account_body(login, "The form is too large."), 413)
        except WeakPassword as error:
            return page("Account", account_body(login, f"Not changed: {error}."), 400)
        except (Throttled, HashingBusy) as error:
            return page("Account", account_body(login, str(error)), 429)
        except (SQLAlchemyError, OSError, StorageUnavailable, DatabaseUnavailable) as error:
            return page("Account", account_body(login, database_fault(error)), 503)
        return page("Account", account_body(login, note="Password changed. Your other logins were ended."))

    @router.post("/account/logout-everywhere", response_model=None)
    async def logout_everywhere(request: Request) -> Response:
        if cross_site_post(request):
            return page("Account", message(CROSS_SITE), 403)
        login = await current(request)
        response = RedirectResponse("/login", status_code=303)
        if login is not None:
            await sessions().end_everywhere(login.user.id, response)
        return response

    if signup_open:
        signup_form = (
            '<form method="post" action="/signup">'
            '<label>Username<input name="username" required maxlength="64" autocomplete="username"></label>'
            '<label>Password (8+ characters, not easy to guess)'
            '<input name="password" type="password" required maxlength="1024" '
            'autocomplete="new-password"></label><button type="submit">Sign up</button></form>'
            '<p><a href="/login">Back to log in</a></p>'
        )

        @router.get("/signup", response_class=HTMLResponse)
        async def signup_page() -> Response:
            return page("Create an account", signup_form)

        limiter = signups if signups is not None else SignupLimiter()

        @router.post("/signup", response_model=None)
        async def signup(request: Request) -> Response:
            address = request.client.host if request.client else "unknown"
            if cross_site_post(request):
                return page("Create an account", message(CROSS_SITE) + signup_form, 403)
            wait = limiter.retry_after(address)
            if wait:
                minutes = math.ceil(wait / 60)
                text = (f"Too many accounts were created from your address; try again in {minutes} "
                        f"minute{'s' * (minutes != 1)}.")
                response = page("Create an account", message(text) + signup_form, 429)
                response.headers["Retry-After"] = str(wait)
                return response
            try:
                form = await read_form(request)
                username, password = form.get("username", ""), form.get("password", "")
                check_password_strength(password, username)
                password_hash = await guard.hash_in_turn(hash_password, password)
                await repository().create_user(username, str(password_hash))
                limiter.hit(address)  # only accounts made count
            except FormTooLarge:
                return page("Create an account", message("The form is too large.") + signup_form, 413)
            except (WeakPassword, InvalidInput, Conflict) as error:
                return page("Create an account", message(str(error)) + signup_form, 400)
            except HashingBusy as error:
                return page("Create an account", message(str(error)) + signup_form, 503)
            except (SQLAlchemyError, OSError, StorageUnavailable, DatabaseUnavailable) as error:
                return page("Create an account", message(database_fault(error)) + signup_form, 503)
            return RedirectResponse("/login", status_code=303)

    return router
