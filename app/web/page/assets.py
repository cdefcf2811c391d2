"""The page's own CSS and the few lines of browser script Gradio has no setting for.

Colours come only from the theme's variables, so light and dark (which Gradio picks
from the OS, and the ◐ button toggles) both stay readable. The scripts: Enter sends
and Shift+Enter adds a line (Gradio does the opposite for a multi-line box), Escape
stops a reply, the address bar follows the chat on screen, export links download
through the page (a refusal shows as a note, not as a saved file), and on a phone the
chat list gets out of the way.
"""

from __future__ import annotations

PHONE_WIDTH = 700

# The sidebar's chat list (app/web/page/chat_list.py renders it), its row menu and the delete dialog.
CHAT_LIST_CSS = """
#chat-list { font-size: var(--text-md); }
#chat-list .chat-groups { display: flex; flex-direction: column; gap: 10px; }
#chat-list .chat-group-title {
  margin: 0 8px 2px; font-size: var(--text-xs); font-weight: 600; color: var(--body-text-color); opacity: 0.7;
}
#chat-list ul { list-style: none; margin: 0; padding: 0; }
#chat-list .chat-row { display: flex; align-items: center; border-radius: var(--radius-md); }
#chat-list .chat-row:hover, #chat-list .chat-row:focus-within { background: var(--background-fill-secondary); }
#chat-list .chat-row.active { background: var(--color-accent-soft); }
#chat-list .chat-open {
  flex: 1; min-width: 0; display: flex; align-items: baseline; gap: 8px; padding: 7px 4px 7px 8px;
  color: var(--body-text-color); text-decoration: none;
}
#chat-list .chat-title { flex: 1; min-width: 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#chat-list .chat-when { flex: none; font-size: var(--text-xs); color: var(--body-text-color); opacity: 0.7; }
#chat-list .chat-menu-button {
  flex: none; width: 30px; height: 30px; margin-right: 2px; border: 0; border-radius: var(--radius-sm);
  background: transparent; color: var(--body-text-color); cursor: pointer; font-size: 18px; line-height: 1;
  opacity: 0.45;
}
#chat-list .chat-row:hover .chat-menu-button, #chat-list .chat-row.active .chat-menu-button,
#chat-list .chat-menu-button:focus-visible { opacity: 1; }
#chat-list .chat-menu-button:hover { background: var(--background-fill-primary); }
#chat-list .chat-rename {
  flex: 1; min-width: 0; margin: 3px 4px; padding: 4px 6px; font: inherit; color: var(--body-text-color);
  background: var(--input-background-fill); border: 1px solid var(--color-accent); border-radius: var(--radius-sm);
}
#chat-list .chat-list-empty { margin: 8px; color: var(--body-text-color); opacity: 0.75; font-style: italic; }
#chat-row-menu {
  position: fixed; z-index: 1000; min-width: 180px; padding: 4px; display: flex; flex-direction: column;
  background: var(--background-fill-primary); border: 1px solid var(--border-color-primary);
  border-radius: var(--radius-lg); box-shadow: var(--shadow-drop-lg);
}
#chat-row-menu[hidden] { display: none; }
#chat-row-menu > * {
  padding: 8px 10px; border: 0; border-radius: var(--radius-sm); background: transparent; text-align: left;
  color: var(--body-text-color); font-size: var(--text-md); text-decoration: none; cursor: pointer;
}
#chat-row-menu > *:hover, #chat-row-menu > *:focus-visible { background: var(--background-fill-secondary); }
#chat-row-menu [data-action=delete] { color: var(--error-text-color); }
.dark #chat-row-menu [data-action=delete] { color: var(--color-red-400, #f87171); }
#delete-dialog {
  max-width: min(420px, 90vw); padding: 20px; color: var(--body-text-color);
  background: var(--background-fill-primary); border: 1px solid var(--border-color-primary);
  border-radius: var(--radius-lg); box-shadow: var(--shadow-drop-lg);
}
#delete-dialog::backdrop { background: rgba(0, 0, 0, 0.45); }
#delete-dialog .delete-question { margin: 0 0 6px; font-weight: 600; overflow-wrap: anywhere; }
#delete-dialog .delete-note { margin: 0 0 16px; opacity: 0.8; }
#delete-dialog .delete-buttons { display: flex; justify-content: flex-end; gap: 8px; }
#delete-dialog button {
  padding: 6px 14px; border-radius: var(--radius-md); cursor: pointer; font: inherit;
  border: 1px solid var(--button-secondary-border-color); background: var(--button-secondary-background-fill);
  color: var(--button-secondary-text-color);
}
#delete-dialog .delete-confirm {
  border-color: var(--button-cancel-border-color); background: var(--button-cancel-background-fill);
  color: var(--button-cancel-text-color);
}
#sidebar-footer { display: flex; flex-wrap: wrap; gap: 4px 12px; font-size: var(--text-sm); }
#sidebar-footer a { display: block; margin: 2px 0; color: var(--body-text-color); opacity: 0.8; }
@media (hover: none) { #chat-list .chat-menu-button { opacity: 1; } }
"""

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
/* the empty chat's hint: centred, quieter than messages, never touching the edges */
#chat .placeholder-content {{ padding: 0 var(--spacing-xxl); }}
#chat .placeholder, #chat .placeholder .prose {{ text-align: center; color: var(--body-text-color); opacity: 0.75; }}
#chat .reply-stats {{ color: var(--body-text-color); opacity: 0.7; font-size: var(--text-xs); }}
#chat .versions {{ font-size: var(--text-sm); color: var(--body-text-color); opacity: 0.8; white-space: nowrap; }}
#chat .versions a {{ text-decoration: none; padding: 0 0.35em; font-weight: bold; color: var(--link-text-color); }}
#chat .versions .version-edge {{ padding: 0 0.35em; opacity: 0.4; }}
#chat .rating-comment {{ color: var(--body-text-color); opacity: 0.7; font-size: var(--text-xs); }}
/* the Chatbot's clear/copy-all icons float at its top right: keep the first bubble below them */
#chat .bubble-wrap {{ padding-top: calc(var(--spacing-xxl) + 30px); }}
#export-note {{
  position: fixed; left: 50%; bottom: 24px; transform: translateX(-50%); z-index: 1000; max-width: min(92vw, 36em);
  padding: 10px 14px; border-radius: var(--radius-lg); border: 1px solid var(--border-color-primary);
  background: var(--background-fill-primary); color: var(--body-text-color); box-shadow: var(--shadow-drop-lg);
}}
#export-note[hidden] {{ display: none; }}
#status {{ min-height: 1.5em; }}
#status p {{ color: var(--body-text-color); }}
#no-match p {{ color: var(--body-text-color); font-style: italic; }}
{CHAT_LIST_CSS}#search-row, #sidebar-actions {{ flex-wrap: nowrap; gap: 4px; }}
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

  // Export links download through fetch, so a refusal (too many exports, a chat deleted in another
  // tab) is shown as a note on the page instead of being saved as a file that looks like an export.
  const exportNote = document.createElement('div');
  exportNote.id = 'export-note';
  exportNote.setAttribute('role', 'alert');
  exportNote.hidden = true;
  (document.querySelector('.gradio-container') || document.body).appendChild(exportNote);
  let exportNoteTimer = null;
  const showExportNote = (text) => {{
    exportNote.textContent = text;
    exportNote.hidden = false;
    clearTimeout(exportNoteTimer);
    exportNoteTimer = setTimeout(() => {{ exportNote.hidden = true; }}, 10000);
  }};
  const savedName = (response) => {{
    const header = response.headers.get('Content-Disposition') || '';
    const encoded = header.match(/filename\\*=(?:UTF-8'')?([^;]+)/i);
    if (encoded) return decodeURIComponent(encoded[1].replace(/"/g, ''));
    const plain = header.match(/filename="?([^";]+)"?/i);
    return plain ? plain[1] : 'chat-export';
  }};
  document.addEventListener('click', async (event) => {{
    const link = event.target.closest && event.target.closest('a[download][href^="export/"]');
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    let response;
    try {{
      response = await fetch(link.href, {{credentials: 'same-origin', cache: 'no-store'}});
    }} catch (error) {{
      showExportNote('The export could not be downloaded: the server did not answer. Try again in a moment.');
      return;
    }}
    if (!response.ok) {{
      const reason = (await response.text()).trim();
      showExportNote(reason || 'The export was refused (HTTP ' + response.status + ').');
      return;
    }}
    const url = URL.createObjectURL(await response.blob());
    const save = document.createElement('a');
    save.href = url;
    save.download = savedName(response);
    document.body.appendChild(save);
    save.click();
    save.remove();
    exportNote.hidden = true;
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }});

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


# The chat list's script (gr.HTML's js_on_load: ``element`` is the list, ``trigger``
# sends an event with data to the server). Clicks are handled once on the list
# itself, so they survive every re-render of its rows. A row opens its chat
# ("open_chat"); its ⋯ button opens one shared menu: Rename (in place: Enter or leaving
# the box saves, Escape cancels; "rename_chat"), Pin/Unpin ("pin_chat"), two export
# links (one click; the page script downloads them, see PAGE_JS), Share ("share_chat") and
# Delete, which asks in a dialog that names the chat before it sends "delete_chat". Titles are only ever set as text.
CHAT_LIST_JS = f"""
const host = element.closest('.gradio-container') || document.body;
document.querySelectorAll('#chat-row-menu, #delete-dialog').forEach((old) => old.remove());
const menu = document.createElement('div');
menu.id = 'chat-row-menu';
menu.setAttribute('role', 'menu');
menu.hidden = true;
host.appendChild(menu);
const dialog = document.createElement('dialog');
dialog.id = 'delete-dialog';
dialog.innerHTML = '<p class="delete-question"></p><p class="delete-note">The chat and its messages are removed '
  + 'for good.</p><div class="delete-buttons"><button type="button" class="delete-cancel">Cancel</button>'
  + '<button type="button" class="delete-confirm">Delete</button></div>';
host.appendChild(dialog);
let menuRow = null;
let deleting = null;

const closeSidebarOnPhone = () => {{
  if (window.innerWidth >= {PHONE_WIDTH}) return;
  const toggle = document.querySelector('#chats-sidebar .toggle-button, .sidebar:not(.right) .toggle-button');
  const sidebar = toggle && toggle.closest('.sidebar');
  if (sidebar && sidebar.classList.contains('open')) toggle.click();
}};
const exportLink = (id, format) => 'export/' + encodeURIComponent(id) + '?format=' + format;
const menuItem = (text, action, href) => {{
  const node = document.createElement(href ? 'a' : 'button');
  node.textContent = text;
  node.dataset.action = action;
  node.setAttribute('role', 'menuitem');
  if (href) {{ node.href = href; node.setAttribute('download', ''); }} else {{ node.type = 'button'; }}
  return node;
}};
const closeMenu = () => {{
  if (menuRow) menuRow.querySelector('.chat-menu-button')?.setAttribute('aria-expanded', 'false');
  menu.hidden = true;
  menuRow = null;
}};
const openMenu = (row, button) => {{
  const id = row.dataset.id;
  menu.replaceChildren(
    menuItem('Rename', 'rename'),
    menuItem(row.dataset.pinned === 'true' ? 'Unpin' : 'Pin to the top', 'pin'),
    menuItem('Export JSON', 'export', exportLink(id, 'json')),
    menuItem('Export Markdown', 'export', exportLink(id, 'md')),
    menuItem('Share (read-only link)', 'share'),
    menuItem('Delete…', 'delete'),
  );
  menuRow = row;
  button.setAttribute('aria-expanded', 'true');
  menu.hidden = false;
  const box = button.getBoundingClientRect();
  const width = menu.offsetWidth, height = menu.offsetHeight;
  menu.style.left = Math.max(4, Math.min(box.right - width, window.innerWidth - width - 4)) + 'px';
  menu.style.top = Math.max(4, box.bottom + height + 4 > window.innerHeight ? box.top - height : box.bottom) + 'px';
  menu.querySelector('[role=menuitem]').focus();
}};
const markActive = (row) => {{
  element.querySelectorAll('.chat-row.active').forEach((other) => {{
    other.classList.remove('active');
    other.querySelector('.chat-open')?.removeAttribute('aria-current');
  }});
  if (row) {{
    row.classList.add('active');
    row.querySelector('.chat-open')?.setAttribute('aria-current', 'page');
  }}
}};
window.teamChatMarkActive = markActive;
const startRename = (row) => {{
  const link = row.querySelector('.chat-open');
  const input = document.createElement('input');
  input.className = 'chat-rename';
  input.value = row.dataset.title;
  input.maxLength = 200;
  input.setAttribute('aria-label', 'New title');
  link.hidden = true;
  row.insertBefore(input, link);
  input.focus();
  input.select();
  let finished = false;
  const finish = (save) => {{
    if (finished) return;
    finished = true;
    const title = input.value.trim();
    input.remove();
    link.hidden = false;
    if (!save || !title || title === row.dataset.title) return;
    row.dataset.title = title;
    row.querySelector('.chat-title').textContent = title;
    trigger('rename_chat', {{id: row.dataset.id, title: title}});
  }};
  input.addEventListener('keydown', (event) => {{
    if (event.key === 'Enter') {{ event.preventDefault(); finish(true); }}
    if (event.key === 'Escape') {{ event.preventDefault(); finish(false); }}
  }});
  input.addEventListener('blur', () => finish(true));
}};
const askDelete = (row) => {{
  deleting = row.dataset.id;
  dialog.querySelector('.delete-question').textContent = 'Delete the chat “' + row.dataset.title + '”?';
  dialog.showModal();
  dialog.querySelector('.delete-cancel').focus();
}};

element.addEventListener('click', (event) => {{
  const row = event.target.closest('.chat-row');
  if (!row) return;
  const button = event.target.closest('.chat-menu-button');
  if (button) {{
    event.preventDefault();
    if (menuRow === row) closeMenu(); else openMenu(row, button);
    return;
  }}
  if (!event.target.closest('.chat-open')) return;
  if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;  // a new tab: the link
  event.preventDefault();
  markActive(row);
  trigger('open_chat', {{id: row.dataset.id}});
  closeSidebarOnPhone();
}});
menu.addEventListener('click', (event) => {{
  const item = event.target.closest('[data-action]');
  const row = menuRow;
  if (!item || !row) return;
  closeMenu();  // an export link goes on to the page's download handler (PAGE_JS)
  if (item.dataset.action === 'rename') startRename(row);
  if (item.dataset.action === 'pin') trigger('pin_chat', {{id: row.dataset.id, pinned: row.dataset.pinned !== 'true'}});
  if (item.dataset.action === 'delete') askDelete(row);
  if (item.dataset.action === 'share') trigger('share_chat', {{id: row.dataset.id}});
}});
dialog.querySelector('.delete-cancel').addEventListener('click', () => dialog.close());
dialog.querySelector('.delete-confirm').addEventListener('click', () => {{
  dialog.close();
  if (deleting) trigger('delete_chat', {{id: deleting}});
  deleting = null;
}});
document.addEventListener('pointerdown', (event) => {{
  if (!menu.hidden && !menu.contains(event.target) && !event.target.closest('.chat-menu-button')) closeMenu();
}}, true);
document.addEventListener('keydown', (event) => {{
  if (event.key === 'Escape' && !menu.hidden) closeMenu();
}});
document.addEventListener('scroll', () => {{ if (!menu.hidden) closeMenu(); }}, true);
window.addEventListener('resize', () => {{ if (!menu.hidden) closeMenu(); }});
"""

# New chat: nothing in the list is the open chat any more; on a phone the list closes.
NEW_CHAT_JS = f"""
() => {{
  if (window.teamChatMarkActive) window.teamChatMarkActive(null);
  if (window.innerWidth < {PHONE_WIDTH}) {{
    const toggle = document.querySelector('#chats-sidebar .toggle-button, .sidebar:not(.right) .toggle-button');
    const sidebar = toggle && toggle.closest('.sidebar');
    if (sidebar && sidebar.classList.contains('open')) toggle.click();
  }}
  return [];
}}
"""
