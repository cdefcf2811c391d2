"""A page's Gradio session belongs to the login that first used it.

Gradio names each open page by a ``session_hash`` its client picks, and every queue
route takes it on trust: whoever sends a hash reads that page's stream
(``queue/data``), sends events into it (``queue/join``), ends its running reply
(``cancel``, or a ``heartbeat`` that disconnects). The hash is random, but it travels
in URLs, so a logged-in user who learns another's could do all of that. Here:

- the first login to use a hash owns it; any other login gets 403 on every route that
  names it (in the query, the path or the JSON body), before Gradio sees the request;
- the hash Gradio sees is a digest of (login, hash), so Gradio's own per-session state
  and the page's views are keyed by login + hash: even a binding forgotten from the
  bounded table cannot join two logins' pages;
- event ids handed out by ``queue/join`` and ``call`` are bound the same way, and the
  routes that act on an event id alone (``cancel``, ``stream/<event>``,
  ``call/<api>/<event>``) refuse ids bound to another login, or never handed out.

The login comes from ``SecurityMiddleware`` (``scope["state"]["login"]``), which runs
first and has already refused anyone not logged in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Container
from urllib.parse import parse_qsl, urlencode

from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.services.limits import BoundedTable
from app.web.security import UNKNOWN_LOGIN

log = logging.getLogger(__name__)

PREFIX = "/gradio_api"
MAX_BODY_BYTES = 2 * 1024 * 1024
BINDINGS_KEPT = 200_000
# POST routes whose JSON body names a session; those marked True hand out an event id
BODY_ROUTES = re.compile(r"^/(queue/join|call/(v2/)?[^/]+|run/[^/]+|api/[^/]+|component_server|cancel)/?$")
EVENT_ISSUING = re.compile(r"^/(queue/join|call/(v2/)?[^/]+)/?$")
QUERY_ROUTES = re.compile(r"^/(queue/data|deep_link)/?$")
PATH_HASH_ROUTES = re.compile(r"^/(heartbeat/(?P<a>[^/]+)|stream/(?P<b>[^/]+)/[^/]+/[^/]+/.+)$")
EVENT_PATH_ROUTES = re.compile(r"^/(stream/(?P<a>[^/]+)(/close)?|call/(v2/)?[^/]+/(?P<b>[^/]+))/?$")
NOT_YOURS = "This page session belongs to another login."


def keyed_hash(login: str, session_hash: str) -> str:
    """The hash Gradio sees: one per (login, page), so no two logins ever share Gradio's state."""
    return hashlib.sha256(f"{login}\0{session_hash}".encode("utf-8", "surrogatepass")).hexdigest()[:40]


class SessionBinding:
    """ASGI middleware: binds session hashes and event ids to logins, refuses them to others."""

    def __init__(self, app: ASGIApp, capacity: int = BINDINGS_KEPT,
                 functions: Callable[[], Container[int]] | None = None) -> None:
        self.app = app
        self.functions = functions  # the page's event ids (Gradio's fn_index): an unknown one is a 404, not a 500
        self.sessions: BoundedTable[str, str] = BoundedTable(capacity)
        self.events: BoundedTable[str, str] = BoundedTable(capacity)

    def _claim(self, login: str, session_hash: str) -> bool:
        owner = self.sessions.get(session_hash)
        if owner is None:
            self.sessions.put(session_hash, login)
            return True
        return owner == login

    def _owns_event(self, login: str, event_id: str) -> bool:
        return self.events.get(event_id) == login

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        route = path[len(PREFIX):]
        login = (scope.get("state") or {}).get("login")
        if not login or login == UNKNOWN_LOGIN:
            if self._names_a_session(route, scope["method"]):
                await PlainTextResponse("The server cannot reach its database; try again in a minute.", 503)(
                    scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and BODY_ROUTES.match(route):
            await self._body_route(scope, receive, send, login, route)
        elif QUERY_ROUTES.match(route):
            await self._query_route(scope, receive, send, login)
        elif scope["method"] == "GET" and (match := PATH_HASH_ROUTES.match(route)):
            await self._path_route(scope, receive, send, login, match)
        elif match := EVENT_PATH_ROUTES.match(route):
            if not self._owns_event(login, match.group("a") or match.group("b")):
                await PlainTextResponse(NOT_YOURS, 403)(scope, receive, send)
                return
            await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    @staticmethod
    def _names_a_session(route: str, method: str) -> bool:
        return bool((method == "POST" and BODY_ROUTES.match(route)) or QUERY_ROUTES.match(route)
                    or PATH_HASH_ROUTES.match(route) or EVENT_PATH_ROUTES.match(route))

    async def _query_route(self, scope: Scope, receive: Receive, send: Send, login: str) -> None:
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        rewritten = []
        for name, value in query:
            if name == "session_hash":
                if not self._claim(login, value):
                    log.warning("refused page session %s.. of login %s to login %s on %s", value[:8],
                                self.sessions.get(value), login, scope["path"])
                    await PlainTextResponse(NOT_YOURS, 403)(scope, receive, send)
                    return
                value = keyed_hash(login, value)
            rewritten.append((name, value))
        scope["query_string"] = urlencode(rewritten).encode("latin-1")
        await self.app(scope, receive, send)

    async def _path_route(self, scope: Scope, receive: Receive, send: Send, login: str, match: re.Match) -> None:
        group = "a" if match.group("a") is not None else "b"
        session_hash, (start, end) = match.group(group), match.span(group)
        if not self._claim(login, session_hash):
            await PlainTextResponse(NOT_YOURS, 403)(scope, receive, send)
            return
        route = match.string
        path = PREFIX + route[:start] + keyed_hash(login, session_hash) + route[end:]
        await self.app({**scope, "path": path, "raw_path": path.encode("latin-1")}, receive, send)

    async def _body_route(self, scope: Scope, receive: Receive, send: Send, login: str, route: str) -> None:
        body = await _read_body(receive)
        if body is None:
            await PlainTextResponse("The request is too large.", 413)(scope, receive, send)
            return
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            await PlainTextResponse("A JSON object was expected.", 400)(scope, receive, send)
            return
        refusal = self._bind_payload(payload, login, route)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        body = json.dumps(payload).encode("utf-8")
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode("ascii")))
        forward = self._capture_event(send, login) if EVENT_ISSUING.match(route) else send
        await self.app({**scope, "headers": headers}, _replay(body, receive), forward)

    def _bind_payload(self, payload: dict, login: str, route: str) -> Response | None:
        """Check and rewrite the body's session (and, for cancel, its event); a refusal or None."""
        session_hash = payload.get("session_hash")
        if session_hash is not None:
            if not isinstance(session_hash, str) or not self._claim(login, session_hash):
                return PlainTextResponse(NOT_YOURS, 403)
            payload["session_hash"] = keyed_hash(login, session_hash)
        fn_index = payload.get("fn_index")
        if route.startswith("/queue/join") and self.functions is not None and isinstance(fn_index, int) \
                and fn_index not in self.functions():
            return PlainTextResponse("This page has no such event.", 404)
        if route.startswith("/cancel"):
            event_id = payload.get("event_id")
            if not isinstance(event_id, str) or not self._owns_event(login, event_id):
                return PlainTextResponse(NOT_YOURS, 403)
        return None

    def _capture_event(self, send: Send, login: str) -> Send:
        """Bind the event id that ``queue/join`` / ``call`` answers with to the login that asked."""
        chunks: list[bytes] = []
        status = [0]

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and status[0] == 200:
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self._remember_event(b"".join(chunks), login)
            await send(message)

        return capture

    def _remember_event(self, body: bytes, login: str) -> None:
        try:
            event_id = json.loads(body).get("event_id")
        except (ValueError, AttributeError):
            return
        if isinstance(event_id, str):
            self.events.put(event_id, login)


async def _read_body(receive: Receive, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The whole request body, or None past ``limit`` bytes."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return bytes(body)
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body"):
            return bytes(body)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the (rewritten) ``body`` once, then the client's own messages
    (a disconnect, when it goes)."""
    sent = [False]

    async def replay() -> Message:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
