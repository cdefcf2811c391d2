"""Same-origin only: one ASGI middleware in front of everything the server answers.

- Any request that carries an ``Origin`` other than our own (or one the operator
  listed in ``CHAT_ALLOWED_ORIGINS``) is refused with 403 before it reaches a route.
  Browsers send ``Origin`` on every cross-origin fetch and on every form POST, so a
  page elsewhere (another port of the same host included, which ``SameSite`` cookies
  do not separate) can neither read our answers nor post forms or Gradio events with
  the user's cookie. Gradio's own CORS layer, which allows any localhost origin with
  credentials, stands down because the parent app configures ``CORSMiddleware``.
- Every response gets anti-framing and a Content-Security-Policy: scripts, styles and
  images only from this server (plus inline code, which Gradio's page needs), nothing
  fetched from elsewhere, no framing, forms post only here.
- The page takes no files, so Gradio's upload routes are refused.
- FastAPI's schema and docs are off (404).
- Nothing answers without a login except the login, sign-up and log-out pages,
  ``/healthz`` and the routes that check logins themselves (a share link's three routes,
  matched whole): the chat page sends people to the login page, every other route
  (Gradio's API, ``/gradio_api/cancel``, its assets and schema) answers 401.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import quote, urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        # Gradio's page has inline bootstrap scripts and compiles event JavaScript at run time
        "script-src 'self' 'unsafe-inline' 'unsafe-eval'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "frame-src 'none'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'self'",
    ]
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}
# FastAPI's schema and docs (Gradio's mounted app has its own): a map of every route, for no one
SCHEMA_PATHS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/gradio_api/openapi.json")
PUBLIC_PATHS = ("/login", "/signup", "/logout", "/healthz", "/metrics")  # /metrics checks its own bearer token
UPLOAD_PATHS = ("/gradio_api/upload", "/gradio_api/process_recording")
DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def normalise_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case, default ports dropped; None when not an origin."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or str(port) == DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def _host_without_default_port(host: str, scheme: str) -> str:
    host = host.strip().lower()
    default = DEFAULT_PORTS.get(scheme)
    if default and host.endswith(":" + default):
        return host[: -len(default) - 1]
    return host


# what ``login_of`` answers when the database cannot say who is asking: let the route answer
# for itself (the page says the server cannot reach its database) instead of a bare 401
UNKNOWN_LOGIN = "\0unknown"


class SecurityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        login_of: Callable[[Request], Awaitable[str | None]],
        allowed_origins: Iterable[str] = (),
        page_paths: Iterable[str] = ("/",),
        public_paths: Iterable[str] = PUBLIC_PATHS,
        own_login_check: str = "",
    ) -> None:
        self.app = app
        self.login_of = login_of
        self.allowed_origins = {o for o in (normalise_origin(x) for x in allowed_origins) if o}
        self.page_paths = set(page_paths)
        self.public_paths = set(public_paths)
        # a pattern of whole paths whose routes decide about logins themselves (share links:
        # CHAT_PUBLIC_SHARES); whole paths, so nothing else mounted at "/" slips through with them
        self.own_login_check = re.compile(own_login_check) if own_login_check else None

    def checks_login_itself(self, path: str) -> bool:
        return self.own_login_check is not None and self.own_login_check.fullmatch(path) is not None

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        normal = normalise_origin(origin)
        if normal is None:
            return False  # "null" (sandboxed frames, files) and anything odd
        if normal in self.allowed_origins:
            return True
        if not host:
            return False
        # compare host[:port] only: behind a TLS proxy the scheme we see may differ
        scheme, _, rest = normal.partition("://")
        return _host_without_default_port(rest, scheme) == _host_without_default_port(host, scheme)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, headers.get("host")):
            log.info("refused a cross-origin request from %s to %s", origin[:100], scope["path"])
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self._answer(scope, receive, send, PlainTextResponse("Cross-origin requests are refused.", 403))
            return
        path = scope["path"]
        if scope["type"] == "websocket":
            if not await self.login_of(Request(scope)):
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if path.rstrip("/") in SCHEMA_PATHS:
            await self._answer(scope, receive, send, PlainTextResponse("Not Found", 404))
            return
        if path.rstrip("/") in UPLOAD_PATHS:
            response = PlainTextResponse("This server accepts no file uploads.", 403)
            await self._answer(scope, receive, send, response)
            return
        public = (path.rstrip("/") or "/") in self.public_paths or self.checks_login_itself(path)
        login = None if public else await self.login_of(Request(scope))
        if login is not None:
            scope.setdefault("state", {})["login"] = login  # for SessionBinding, which runs next
        elif not public:
            if method in ("GET", "HEAD") and path in self.page_paths:
                target = path + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
                response = RedirectResponse("/login?next=" + quote(target, safe=""), 303)
            else:
                response = PlainTextResponse("Please log in first.", 401)
            await self._answer(scope, receive, send, response)
            return
        await self.app(scope, receive, self.with_headers(send))

    async def _answer(self, scope: Scope, receive: Receive, send: Send, response: Response) -> None:
        await response(scope, receive, self.with_headers(send))

    @staticmethod
    def with_headers(send: Send) -> Send:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        return send_with_headers
