"""Share links over HTTP: make one, read one, continue one in your chats, list and revoke yours.

- ``POST /shares`` (form: ``conversation_id``, optional ``expires_in_days``): a link to a frozen
  copy of one's own chat, as JSON; ``GET /shares``: one's links as JSON.
- ``GET /share/{id}``: the copy as a page, for anyone logged in (anonymous readers only when
  ``CHAT_PUBLIC_SHARES=1``); ``POST /share/{id}/continue``: copy it into one's own chats and
  open it on the chat page; ``POST /share/{id}/revoke``: one's own link, or any link for an admin.
- ``GET /account/shares``: one's links as a page, with Revoke buttons.

Every refusal is one sentence with its status (404 unknown, 410 revoked or expired, 401 not
logged in, 403 from another site), never a traceback. The security middleware lets these three
routes (``SHARE_PATHS``) through without a login so that this module alone decides who may read a link.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from app.accounts.sessions import CurrentLogin, DatabaseUnavailable
from app.services.errors import ChatError, ConversationNotFound, Unavailable
from app.services.shares import ShareGone, ShareNotFound, ShareService, link_state
from app.web.auth_routes import CROSS_SITE, UNAVAILABLE, FormTooLarge, cross_site_post, read_form, wants_html
from app.web.login_cookie import SessionManager
from app.web.share_page import links_page, sentence_page, shared_chat_page
from storage.repository import ShareLinkRecord

log = logging.getLogger(__name__)

PRIVATE = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex"}
SHARE_PREFIX = "/share/"
# the paths that answer anonymous readers themselves (see SecurityMiddleware.own_login_check)
SHARE_PATHS = r"/share/[^/]{1,4096}(/continue|/revoke)?"


def status_of(error: ChatError) -> int:
    if isinstance(error, ShareNotFound | ConversationNotFound):
        return 404
    if isinstance(error, ShareGone):
        return 410
    if isinstance(error, Unavailable):
        return 503
    return 400


def link_json(link: ShareLinkRecord) -> dict[str, str | None]:
    return {
        "id": link.id,
        "url": SHARE_PREFIX + link.id,
        "title": link.title,
        "conversation_id": link.conversation_id,
        "created_at": link.created_at.isoformat(),
        "expires_at": link.expires_at.isoformat() if link.expires_at else None,
        "state": link_state(link),
    }


def build_share_router(
    shares: Callable[[], ShareService], sessions: Callable[[], SessionManager], *, public: bool
) -> APIRouter:
    """The routes; ``shares``/``sessions`` are looked up per request (they appear at start-up)."""
    router = APIRouter()

    def html_page(text: str, status_code: int = 200) -> HTMLResponse:
        return HTMLResponse(text, status_code=status_code, headers=PRIVATE)

    def refusal(request: Request, error: ChatError | str, status_code: int | None = None) -> Response:
        sentence = str(error)
        code = status_code or (status_of(error) if isinstance(error, ChatError) else 400)
        if wants_html(request):
            title = "Share link" if code in (404, 410) else "Cannot do that"
            return html_page(sentence_page(title, sentence), code)
        return JSONResponse({"detail": sentence}, status_code=code, headers=PRIVATE)

    async def login_of(request: Request) -> CurrentLogin | None:
        return await sessions().current(request)

    def to_login(link_id: str) -> RedirectResponse:
        return RedirectResponse("/login?next=" + quote(SHARE_PREFIX + link_id[:100], safe=""), status_code=303)

    @router.get("/share/{link_id}", response_model=None)
    async def read_share(link_id: str, request: Request) -> Response:
        try:
            login = await login_of(request)
            if login is None and not public:
                return to_login(link_id)
            shared = await shares().view(link_id)
        except DatabaseUnavailable:
            return html_page(sentence_page("Share link", UNAVAILABLE), 503)
        except ChatError as error:
            return html_page(sentence_page("Share link", str(error)), status_of(error))
        may_revoke = login is not None and (login.user.is_admin or login.user.id == shared.link.user_id)
        return html_page(shared_chat_page(shared, can_continue=login is not None, can_revoke=may_revoke))

    @router.post("/share/{link_id}/continue", response_model=None)
    async def continue_share(link_id: str, request: Request) -> Response:
        if cross_site_post(request):
            return refusal(request, CROSS_SITE, 403)
        try:
            login = await login_of(request)
            if login is None:
                return to_login(link_id)
            conversation_id = await shares().continue_in_my_chats(login.user.username, link_id)
        except DatabaseUnavailable:
            return refusal(request, UNAVAILABLE, 503)
        except ChatError as error:
            return refusal(request, error)
        if wants_html(request):
            return RedirectResponse("/?c=" + quote(conversation_id), status_code=303)
        return JSONResponse({"conversation_id": conversation_id}, status_code=201, headers=PRIVATE)

    @router.post("/share/{link_id}/revoke", response_model=None)
    async def revoke_share(link_id: str, request: Request) -> Response:
        if cross_site_post(request):
            return refusal(request, CROSS_SITE, 403)
        try:
            login = await login_of(request)
            if login is None:
                return refusal(request, "Please log in first.", 401)
            link = await shares().revoke(login.user.username, link_id)
        except DatabaseUnavailable:
            return refusal(request, UNAVAILABLE, 503)
        except ChatError as error:
            return refusal(request, error)
        if not wants_html(request):
            return JSONResponse(link_json(link), headers=PRIVATE)
        # a form: to a page a reload does not post again (an admin's is the link itself, now saying "revoked")
        if link.user_id != login.user.id:
            return RedirectResponse(SHARE_PREFIX + quote(link.id), status_code=303)
        return RedirectResponse("/account/shares?revoked=" + quote(link.id), status_code=303)

    @router.api_route("/share/{rest:path}", methods=["GET", "POST"], response_model=None)
    async def no_such_share(rest: str, request: Request) -> Response:
        """Any other address under /share/ (an id with a slash in it, say): the same sentence, not Gradio's 404."""
        if request.method == "GET":
            return html_page(sentence_page("Share link", str(ShareNotFound())), 404)
        return refusal(request, ShareNotFound())

    @router.get("/account/shares", response_model=None)
    async def my_links_page(request: Request, revoked: str = "") -> Response:
        try:
            login = await login_of(request)
            if login is None:
                return RedirectResponse("/login?next=/account/shares", status_code=303)
            mine = await shares().links(login.user.username)
        except DatabaseUnavailable:
            return html_page(sentence_page("Your share links", UNAVAILABLE), 503)
        except ChatError as error:
            return html_page(sentence_page("Your share links", str(error)), status_of(error))
        gone = next((link for link in mine if link.id == revoked and link.revoked_at is not None), None)
        return html_page(links_page(mine, note=f"Revoked the link to “{gone.title}”." if gone else ""))

    @router.get("/shares", response_model=None)
    async def my_links(request: Request) -> Response:
        try:
            login = await login_of(request)
            if login is None:
                return refusal(request, "Please log in first.", 401)
            mine = await shares().links(login.user.username)
        except DatabaseUnavailable:
            return refusal(request, UNAVAILABLE, 503)
        except ChatError as error:
            return refusal(request, error)
        return JSONResponse([link_json(link) for link in mine], headers=PRIVATE)

    @router.post("/shares", response_model=None)
    async def make_link(request: Request) -> Response:
        if cross_site_post(request):
            return refusal(request, CROSS_SITE, 403)
        try:
            login = await login_of(request)
            if login is None:
                return refusal(request, "Please log in first.", 401)
            form = await read_form(request)
            days = form.get("expires_in_days", "").strip()
            if days and not (days.isascii() and days.isdigit() and len(days) <= 4):
                return refusal(request, "expires_in_days must be a whole number of days.", 400)
            link = await shares().share(
                login.user.username, form.get("conversation_id", ""), expires_in_days=int(days) if days else None
            )
        except FormTooLarge:
            return refusal(request, "The form is too large.", 413)
        except DatabaseUnavailable:
            return refusal(request, UNAVAILABLE, 503)
        except ChatError as error:
            return refusal(request, error)
        return JSONResponse(link_json(link), status_code=201, headers=PRIVATE)

    return router
