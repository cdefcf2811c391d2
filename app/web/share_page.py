"""The HTML of a shared chat and of a tester's list of links: plain pages, rendered on the server.

A shared chat is read by people who may never open the chat page, on a phone as often as
not, so it is one small page with no Gradio and no script beyond the theme: each message
is made inert by the chat page's own rules (app/web/page/rendering.py: no HTML, no remote
images; code stays code) and then turned into HTML by markdown-it with raw HTML off.
"""

from __future__ import annotations

import html

from markdown_it import MarkdownIt

from app.services.shares import link_state
from app.web.page.rendering import safe_markdown
from app.web.page.transcript import FINISH_NOTES, reply_stats
from storage.repository import SharedChat, SharedMessage, ShareLinkRecord

MARKDOWN = MarkdownIt("default", {"html": False}).disable("image")
RATING_MARKS = {"up": "👍", "down": "👎"}
ROLE_NAMES = {"user": "Message", "assistant": "Reply", "system": "System prompt"}

STYLE = """
:root{--bg:#fff;--fg:#1f2328;--muted:#59636e;--user:#eef3ff;--bot:#f6f8fa;--line:#d0d7de;--accent:#0b57d0}
@media (prefers-color-scheme:dark){:root:not(.light){--bg:#0f1115;--fg:#e6e6e6;--muted:#a0a8b3;--user:#1b2740;
--bot:#181b21;--line:#30363d;--accent:#8ab4f8}}
:root.dark{--bg:#0f1115;--fg:#e6e6e6;--muted:#a0a8b3;--user:#1b2740;--bot:#181b21;--line:#30363d;--accent:#8ab4f8}
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,sans-serif}
main{max-width:820px;margin:0 auto;padding:16px}
a{color:var(--accent)}h1{font-size:1.4rem;margin:.2em 0;overflow-wrap:anywhere}
.meta,.note,.stats{color:var(--muted);font-size:.85rem}
ol.messages{list-style:none;padding:0;margin:16px 0}
.message{border:1px solid var(--line);border-radius:10px;padding:8px 12px;margin:10px 0;overflow-wrap:anywhere}
.message.user{background:var(--user);margin-left:12%}.message.assistant,.message.system{background:var(--bot)}
.message header{font-size:.8rem;color:var(--muted);display:flex;gap:8px;flex-wrap:wrap}
pre{overflow-x:auto;padding:8px;border-radius:6px;background:rgba(127,127,127,.15)}
code{font-family:ui-monospace,monospace;font-size:.9em}table{border-collapse:collapse;display:block;overflow-x:auto}
td,th{border:1px solid var(--line);padding:4px 8px}
.actions{display:flex;gap:12px;flex-wrap:wrap;align-items:center;margin:20px 0}
button{font:inherit;padding:10px 16px;border-radius:8px;border:1px solid var(--accent);background:var(--accent);
color:var(--bg);cursor:pointer}button.secondary{background:transparent;color:var(--accent)}
.links td,.links th{text-align:left;vertical-align:top}.links form{margin:0}.links button{padding:4px 10px}
.err{color:#d1242f}.ok{color:#1a7f37}
@media (max-width:700px){main{padding:10px}.message.user{margin-left:0}}
"""
# the chat page's ◐ choice (stored by its script) applies here too; without one, the OS decides
THEME_SCRIPT = (
    "<script>try{const t=localStorage.getItem('team-chat-theme');"
    "if(t)document.documentElement.classList.add(t==='dark'?'dark':'light')}catch(e){}</script>"
)


def document(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} · Team Chat</title><style>{STYLE}</style>{THEME_SCRIPT}</head>"
        f"<body><main>{body}</main></body></html>"
    )


def message_html(text: str) -> str:
    """Text from a tester or the model as HTML: inert first (the chat page's rules), then Markdown."""
    return MARKDOWN.render(safe_markdown(text).markdown)


def settings_line(message: SharedMessage) -> str:
    """The model and the sampling settings the message was sent or written with."""
    params = message.params or {}
    parts = [message.model] if message.model else []
    for key, label in (("temperature", "temperature"), ("top_p", "top p"), ("max_new_tokens", "max new tokens")):
        if isinstance(params.get(key), int | float) and not isinstance(params.get(key), bool):
            parts.append(f"{label} {params[key]:g}")
    return " · ".join(parts)


def shared_message(message: SharedMessage) -> str:
    head = [ROLE_NAMES.get(message.role, message.role)]
    if message.version_count > 1:
        head.append(f"version {message.version} of {message.version_count}")
    if message.rating in RATING_MARKS:
        head.append(f'<span class="rating" title="rated {message.rating}">{RATING_MARKS[message.rating]}</span>')
    notes = []
    note = FINISH_NOTES.get(message.finish_reason or "") if message.role == "assistant" else None
    if note:
        notes.append(f'<p class="note"><em>{html.escape(note)}</em></p>')
    details = " · ".join(part for part in (reply_stats(message), settings_line(message)) if part)  # type: ignore[arg-type]
    if details and message.role != "system":
        notes.append(f'<p class="stats">{html.escape(details)}</p>')
    if message.comment:
        notes.append(f'<p class="note">💬 {html.escape(message.comment)}</p>')
    return (
        f'<li class="message {html.escape(message.role)}"><header>{" · ".join(head)}</header>'
        f'{message_html(message.content)}{"".join(notes)}</li>'
    )


def shared_chat_page(shared: SharedChat, *, can_continue: bool, can_revoke: bool = False) -> str:
    """The whole page of a shared chat: its messages, who shared it, "Continue in my chats", and for its
    owner (or an admin) "Revoke this link"."""
    link = shared.link
    when = link.created_at.strftime("%d %b %Y %H:%M UTC")
    messages = "".join(shared_message(m) for m in shared.messages) or '<li class="note">This chat is empty.</li>'
    action = f"/share/{html.escape(link.id, quote=True)}/continue"
    if can_continue:
        continue_part = (
            f'<form method="post" action="{action}"><button type="submit" id="continue-chat">'
            "Continue in my chats</button></form><a href=\"/\">Back to my chats</a>"
        )
    else:
        login = f"/login?next=/share/{html.escape(link.id, quote=True)}"
        continue_part = f'<a href="{login}">Log in to continue this chat</a>'
    if can_revoke:
        continue_part += (
            f'<form method="post" action="/share/{html.escape(link.id, quote=True)}/revoke">'
            '<button type="submit" class="secondary" id="revoke-link">Revoke this link</button></form>'
        )
    body = (
        f"<h1>{html.escape(link.title)}</h1>"
        f'<p class="meta">Shared by <b>{html.escape(link.username)}</b> · {when} · model '
        f"{html.escape(shared.model)} · a read-only copy: later changes to the chat do not show here</p>"
        f'<ol class="messages">{messages}</ol><div class="actions">{continue_part}</div>'
    )
    return document(link.title, body)


def sentence_page(title: str, sentence: str) -> str:
    """A refusal or a note as a page of its own (unknown, revoked or expired links)."""
    return document(title, f'<h1>{html.escape(title)}</h1><p class="err" role="alert">{html.escape(sentence)}</p>'
                           '<p><a href="/">Back to my chats</a></p>')


def links_page(links: list[ShareLinkRecord], *, note: str = "", error: str = "") -> str:
    """A tester's links, newest first, each with its state and (while active) a Revoke button."""
    rows = []
    for link in links:
        state = link_state(link)
        path = f"/share/{html.escape(link.id, quote=True)}"
        title = html.escape(link.title)
        opened = f'<a href="{path}">{title}</a>' if state == "active" else title
        revoke = (
            f'<form method="post" action="{path}/revoke"><button type="submit" class="secondary">Revoke</button></form>'
            if state == "active" else ""
        )
        deleted = link.conversation_id is None and state != "revoked"
        source = ' <span class="meta">(chat deleted; the copy stays)</span>' if deleted else ""
        rows.append(
            f'<tr data-link="{html.escape(link.id, quote=True)}"><td>{opened}{source}</td>'
            f'<td>{link.created_at.strftime("%d %b %Y %H:%M")}</td><td class="state">{state}</td><td>{revoke}</td></tr>'
        )
    table = (
        '<table class="links"><thead><tr><th>Chat</th><th>Shared (UTC)</th><th>State</th><th></th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>" if rows else "<p>You have not shared any chat yet: use Share in a "
        "chat's ⋯ menu.</p>"
    )
    notes = (f'<p class="ok" role="status">{html.escape(note)}</p>' if note else "") + (
        f'<p class="err" role="alert">{html.escape(error)}</p>' if error else "")
    body = (
        "<h1>Your share links</h1><p class=\"meta\">Anyone logged in to this server can open an active link. "
        'Revoking one removes its copy for good. <a href="/account">Account</a> · <a href="/">Back to my chats</a></p>'
        + notes + table
    )
    return document("Your share links", body)
