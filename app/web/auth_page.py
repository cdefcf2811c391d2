"""The frame of the login, sign-up, log-out and account pages: the chat page's colours, light and dark.

The chat page is Gradio's default theme; these pages are plain HTML (no Gradio, no
script but the theme choice), so its colours are repeated here as CSS variables:
light by default, dark when the system prefers it, and the choice a person made with
the chat page's ◐ button (kept in ``localStorage``) wins over both. Every text colour
keeps a contrast of at least 4.5:1 on its background (the primary button is the
theme's orange one shade darker for that reason); inputs use 16 px text so phones do
not zoom into the form.
"""

from __future__ import annotations

import html

from fastapi.responses import HTMLResponse

PRODUCT = "Team Chat"
LIGHT = ("--bg:#ffffff;--card:#fafafa;--fg:#27272a;--muted:#52525b;--border:#d4d4d8;--input:#ffffff;"
         "--accent:#c2410c;--accent-hover:#9a3412;--on-accent:#ffffff;--link:#1d4ed8;--err:#b91c1c;--ok:#15803d;")
DARK = ("--bg:#0f0f11;--card:#18181b;--fg:#f4f4f5;--muted:#bbbbc2;--border:#3f3f46;--input:#27272a;"
        "--accent:#c2410c;--accent-hover:#ea580c;--on-accent:#ffffff;--link:#60a5fa;--err:#fca5a5;--ok:#86efac;")
STYLE = (
    f":root{{color-scheme:light;{LIGHT}}}"
    f"@media (prefers-color-scheme:dark){{:root:not(.light){{color-scheme:dark;{DARK}}}}}"
    f":root.dark{{color-scheme:dark;{DARK}}}"
    "*{box-sizing:border-box}"
    "body{margin:0;min-height:100vh;background:var(--bg);color:var(--fg);"
    "font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}"
    "main{max-width:400px;margin:0 auto;padding:8vh 16px 32px}"
    ".brand{margin:0 0 4px;font-size:0.95rem;font-weight:600;color:var(--muted);letter-spacing:0.02em}"
    ".brand b{color:var(--accent)}:root.dark .brand b{color:#fb923c}"
    "@media (prefers-color-scheme:dark){:root:not(.light) .brand b{color:#fb923c}}"
    "h1{margin:0 0 20px;font-size:1.6rem;line-height:1.25}h2{font-size:1.15rem;margin:24px 0 8px}"
    ".card{background:var(--card);border:1px solid var(--border);border-radius:12px;padding:20px}"
    "label{display:block;margin:0 0 12px;font-weight:500}"
    "input{display:block;width:100%;margin-top:4px;padding:10px 12px;font:inherit;font-size:16px;color:var(--fg);"
    "background:var(--input);border:1px solid var(--border);border-radius:8px}"
    "input:focus{outline:2px solid var(--accent);outline-offset:1px;border-color:var(--accent)}"
    "button{display:block;width:100%;margin:8px 0 0;padding:10px 12px;font:inherit;font-weight:600;"
    "color:var(--on-accent);background:var(--accent);border:0;border-radius:8px;cursor:pointer}"
    "button:hover,button:focus-visible{background:var(--accent-hover)}"
    "form{margin:0 0 16px}a{color:var(--link)}p{margin:12px 0}"
    ".err{color:var(--err)}.ok{color:var(--ok)}"
)
THEME_CHOICE = ("<script>try{var t=localStorage.getItem('team-chat-theme');"
                "if(t)document.documentElement.classList.add(t)}catch(e){}</script>")
HEAD = ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">')


def page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    """``body`` is HTML already escaped by its maker; the title is escaped here."""
    name = html.escape(title)
    document = (f"{HEAD}<title>{name} · {PRODUCT}</title>{THEME_CHOICE}<style>{STYLE}</style></head><body><main>"
                f'<p class="brand"><b>●</b> {PRODUCT}</p><h1>{name}</h1><div class="card">{body}</div></main>'
                "</body></html>")
    return HTMLResponse(document, status_code=status_code)
def message(text: str, kind: str = "err") -> str:
    return f'<p class="{kind}" role="alert">{html.escape(text)}</p>' if text else ""
