"""The page's own CSS and the few lines of browser script Gradio has no setting for.

Colours come only from the theme's variables, so light and dark (which Gradio picks
from the OS, and the ◐ button toggles) both stay readable. The scripts: Enter sends
and Shift+Enter adds a line (Gradio does the opposite for a multi-line box), Escape
stops a reply, the address bar follows the chat on screen, and on a phone the chat
list gets out of the way.
"""

from __future__ import annotations

PHONE_WIDTH = 700

CSS = f"""
#chat {{ min-height: 50vh; }}
#chat .message.user, #chat .user-row .message {{
  background: var(--color-accent-soft); color: var(--body-text-color); border-color: var(--border-color-accent);
}}
#chat .message.bot, #chat .bot-row .message {{
  background: var(--background-fill-secondary); color: var(--body-text-color);
  border-color: var(--border-color-primary);
}}
#chat .message .prose, #chat .message .prose * {{ color: inherit; }}
#chat .message .prose pre, #chat .message .prose code {{ color: var(--body-text-color); }}
#chat .reply-stats {{ color: var(--body-text-color-subdued); font-size: var(--text-xs); }}
#chat .versions {{ font-size: var(--text-sm); color: var(--body-text-color-subdued); white-space: nowrap; }}
#chat .versions a {{ text-decoration: none; padding: 0 0.35em; font-weight: bold; color: var(--link-text-color); }}
#chat .versions .version-edge {{ padding: 0 0.35em; opacity: 0.4; }}
#chat .rating-comment {{ color: var(--body-text-color-subdued); font-size: var(--text-xs); }}
#status {{ min-height: 1.5em; }}
#status p {{ color: var(--body-text-color); }}
#no-match p {{ color: var(--body-text-color-subdued); font-style: italic; }}
#chat-list .wrap {{ flex-direction: column; gap: 2px; }}
#chat-list label {{ width: 100%; }}
#search-row, #sidebar-actions {{ flex-wrap: nowrap; gap: 4px; }}
#reply-actions button {{ max-width: 8em; }}
@media (max-width: {PHONE_WIDTH}px) {{
  .gradio-container {{ padding: 4px !important; }}
  #chat {{ min-height: 55vh; }}
  #reply-actions {{ flex-wrap: nowrap; }}
}}
"""

# Runs once when the page has loaded.
PAGE_JS = f"""
() => {{
  const phone = () => window.innerWidth < {PHONE_WIDTH};
  const saved = localStorage.getItem('team-chat-theme');
  if (saved === 'dark') document.body.classList.add('dark');
  if (saved === 'light') document.body.classList.remove('dark');

  const inMessageBox = (target) => target && target.tagName === 'TEXTAREA' && target.closest('#message');
  const visible = (selector) => {{
    const element = document.querySelector(selector);
    return element && element.offsetParent !== null ? element : null;
  }};
  document.addEventListener('keydown', (event) => {{
    if (event.key === 'Escape') {{
      const stop = visible('#stop');
      if (stop) {{ event.preventDefault(); stop.click(); }}
      return;
    }}
    if (event.key !== 'Enter' || !inMessageBox(event.target) || event.isComposing || event.keyCode === 229) return;
    event.stopImmediatePropagation();
    if (event.shiftKey) return;  // the browser adds the new line
    event.preventDefault();
    const send = visible('#send');
    if (send && event.target.value.trim()) send.click();
  }}, true);
  // Gradio's own handler sends on Shift+Enter in a multi-line box: keep it from seeing Enter at all
  document.addEventListener('keypress', (event) => {{
    if (event.key === 'Enter' && inMessageBox(event.target)) event.stopImmediatePropagation();
  }}, true);

  // a version arrow (‹ ›, a link to #v-<message id>) switches the version instead of navigating
  document.addEventListener('click', (event) => {{
    const link = event.target.closest && event.target.closest('#chat a[href^="#v-"]');
    if (!link) return;
    event.preventDefault();
    event.stopPropagation();
    window.teamChatVersion = link.getAttribute('href').slice(3);
    const button = document.querySelector('#switch-version');
    if (button) button.click();
  }}, true);

  if (phone()) {{
    const close = () => {{
      const toggle = document.querySelector('#chats-sidebar .toggle-button, .sidebar:not(.right) .toggle-button');
      const sidebar = toggle && toggle.closest('.sidebar');
      if (!sidebar) return false;
      if (sidebar.classList.contains('open')) toggle.click();
      return true;
    }};
    let tries = 0;
    const timer = setInterval(() => {{ if (close() || ++tries > 50) clearInterval(timer); }}, 100);
  }}
}}
"""

# The switch-version event takes the arrow's message id from the click above.
PICKED_VERSION_JS = """
(conversationId, picked) => [conversationId, window.teamChatVersion || picked]
"""

SET_ADDRESS_JS = """
(conversationId) => {
  const url = new URL(window.location.href);
  if (conversationId) { url.searchParams.set('c', conversationId); } else { url.searchParams.delete('c'); }
  if (url.href !== window.location.href) window.history.replaceState(null, '', url);
  return [];
}
"""

TIMEZONE_JS = """
() => [Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC']
"""

TOGGLE_THEME_JS = """
() => {
  const dark = document.body.classList.toggle('dark');
  localStorage.setItem('team-chat-theme', dark ? 'dark' : 'light');
  return [];
}
"""

# Passes the picked chat's id on (the event's output) and, on a phone, closes the list.
CLOSE_SIDEBAR_ON_PHONE_JS = f"""
(picked) => {{
  if (window.innerWidth < {PHONE_WIDTH}) {{
    const toggle = document.querySelector('#chats-sidebar .toggle-button, .sidebar:not(.right) .toggle-button');
    const sidebar = toggle && toggle.closest('.sidebar');
    if (sidebar && sidebar.classList.contains('open')) toggle.click();
  }}
  return picked;
}}
"""
