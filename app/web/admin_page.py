"""The admin page itself: one HTML document, its styles and a few lines of script, no dependency.

The script fetches ``/admin/data`` (accounts, usage for the chosen period, ratings,
the audit) and polls ``/admin/figures`` every few seconds, drawing the last hour as
inline SVG lines. Every name is put on the page as text (``textContent``), never as
HTML. Light and dark follow the system (``prefers-color-scheme``); below 700 px the
plots stack and the tables scroll sideways.
"""

from __future__ import annotations

STYLE = """
:root{color-scheme:light dark;--bg:#fff;--fg:#1b1f24;--muted:#5c6670;--line:#d8dde3;--card:#f6f8fa;
--c1:#2563eb;--c2:#d97706;--ok:#15803d;--err:#b91c1c}
@media (prefers-color-scheme:dark){:root{--bg:#0f1216;--fg:#e6e9ed;--muted:#9aa4ae;--line:#2c333b;--card:#171b21;
--c1:#60a5fa;--c2:#fbbf24;--ok:#4ade80;--err:#f87171}}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,sans-serif}
header{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap;padding:12px 16px;border-bottom:1px solid var(--line)}
header h1{font-size:1.2rem;margin:0}header a{color:var(--c1)}main{padding:8px 16px 40px;max-width:1200px;margin:auto}
h2{font-size:1.05rem;margin:24px 0 8px}.muted{color:var(--muted)}
.plots{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.card h3{font-size:.9rem;margin:0 0 4px;font-weight:600}.card .now{font-size:.85rem;color:var(--muted)}
svg{width:100%;height:120px;display:block}svg .axis{stroke:var(--line);stroke-width:1}
svg text{fill:var(--muted);font-size:9px}.s1{stroke:var(--c1)}.s2{stroke:var(--c2)}
svg polyline{fill:none;stroke-width:1.6;vector-effect:non-scaling-stroke}.dot1{fill:var(--c1)}.dot2{fill:var(--c2)}
.key1{color:var(--c1)}.key2{color:var(--c2)}
.facts{display:flex;flex-wrap:wrap;gap:8px 20px;margin:8px 0}.facts b{font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);white-space:nowrap}
th{font-weight:600;color:var(--muted);font-size:.85rem}
button,input,select{font:inherit;color:inherit;background:var(--bg);border:1px solid var(--line);border-radius:6px;
padding:5px 9px}button{cursor:pointer}button:hover{border-color:var(--c1)}td button{padding:2px 7px;font-size:.85rem}
form.add{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:8px 0}
#status{min-height:1.4em;margin:6px 0}#status.ok{color:var(--ok)}#status.err{color:var(--err)}
@media (max-width:700px){.plots{grid-template-columns:1fr}main{padding:4px 10px 30px}form.add input{flex:1 1 100%}}
"""

SCRIPT = """
const $ = (s) => document.querySelector(s);
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; }
function say(text, bad) { const s = $('#status'); s.textContent = text || ''; s.className = bad ? 'err' : 'ok'; }
function when(iso) { return iso ? new Date(iso).toLocaleString() : '—'; }
function fill(id, rows, cells) {
  const body = $(id); body.replaceChildren();
  if (!rows.length) { const tr = el('tr'); const td = el('td', 'nothing in this period', 'muted');
    td.colSpan = 9; tr.append(td); body.append(tr); return; }
  for (const row of rows) { const tr = el('tr');
    for (const c of cells(row)) { if (c instanceof Node) { const td = el('td'); td.append(c); tr.append(td); }
      else tr.append(el('td', String(c))); }
    body.append(tr); }
}
async function post(action, fields) {
  const r = await fetch('/admin/users/' + action, {method: 'POST', body: new URLSearchParams(fields)});
  let j = {}; try { j = await r.json(); } catch (e) { j = {error: 'The server answered ' + r.status + '.'}; }
  say(j.message || j.error, !r.ok); if (r.ok) load();
}
function actions(a) {
  const box = el('span');
  const b = (label, go) => { const x = el('button', label); x.type = 'button'; x.onclick = go; box.append(x, ' '); };
  b('Reset password', () => { const p = prompt('New password for ' + a.username + ' (8+ characters):');
    if (p) post('password', {name: a.username, password: p}); });
  b('End sessions', () => post('sessions', {name: a.username}));
  b(a.is_admin ? 'Make tester' : 'Make admin', () => post('role', a.is_admin ? {name: a.username}
    : {name: a.username, admin: 'on'}));
  b('Remove', () => { if (confirm('Remove ' + a.username + ' and all their chats?'))
    post('remove', {name: a.username}); });
  return box;
}
async function load() {
  const r = await fetch('/admin/data?days=' + $('#days').value); const d = await r.json();
  if (!r.ok) { say(d.error, true); return; }
  fill('#accounts', d.accounts, (a) => [a.username, a.is_admin ? 'admin' : 'tester', when(a.created_at), a.logins,
    actions(a)]);
  const usage = (u) => [u.name, u.chats, u.messages, u.prompt_tokens, u.output_tokens, when(u.last_active)];
  fill('#by-user', d.by_user, usage); fill('#by-model', d.by_model, usage);
  fill('#ratings', d.ratings, (x) => [x.model, x.up, x.down, x.comments]);
  fill('#audit', d.audit, (x) => [when(x.at), x.actor, x.action, x.target, x.detail]);
}
function plot(svg, samples, keys, unit) {
  // the span the samples cover (at least 5 minutes, at most the hour kept), so a fresh start is readable
  const W = 300, H = 100, now = Date.now() / 1000, first = samples.length ? samples[0].at : now;
  const span = Math.min(3600, Math.max(300, now - first)), start = now - span;
  const values = samples.flatMap((s) => keys.map((k) => s[k])).filter((v) => v !== null);
  const top = Math.max(1, ...values) * 1.15;
  const x = (t) => ((t - start) / span * W).toFixed(1), y = (v) => (H - v / top * H).toFixed(1);
  svg.setAttribute('viewBox', '0 0 ' + W + ' ' + (H + 12)); svg.setAttribute('preserveAspectRatio', 'none');
  svg.replaceChildren();
  const ns = 'http://www.w3.org/2000/svg', mk = (tag, attrs) => { const e = document.createElementNS(ns, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]); return e; };
  svg.append(mk('line', {x1: 0, y1: H, x2: W, y2: H, class: 'axis'}));
  const label = (tx, ty, text, anchor) => { const t = mk('text', {x: tx, y: ty, 'text-anchor': anchor || 'start'});
    t.textContent = text; svg.append(t); };
  label(2, 9, (top / 1.15).toFixed(top < 10 ? 1 : 0) + ' ' + unit);
  label(0, H + 11, '−' + Math.round(span / 60) + ' min'); label(W, H + 11, 'now', 'end');
  keys.forEach((k, i) => { const pts = samples.filter((s) => s[k] !== null).map((s) => x(s.at) + ',' + y(s[k]));
    if (pts.length) svg.append(mk('polyline', {points: pts.join(' '), class: 's' + (i + 1)}));
    const [px, py] = (pts[pts.length - 1] || '').split(',');  // the latest point, visible even when alone
    if (px) svg.append(mk('circle', {cx: px, cy: py, r: 2, class: 'dot' + (i + 1)})); });
}
function latest(samples, k) { const s = samples[samples.length - 1]; return s && s[k] !== null ? s[k] : '—'; }
async function tick() {
  const r = await fetch('/admin/figures'); if (!r.ok) return; const f = await r.json(); const s = f.samples;
  plot($('#p-tps'), s, ['tokens_per_second'], 'tok/s');
  plot($('#p-load'), s, ['running', 'queued'], '');
  plot($('#p-ttft'), s, ['ttft_p50_ms', 'ttft_p95_ms'], 'ms');
  plot($('#p-cache'), s, ['cache_mb'], 'MB');
  $('#n-tps').textContent = latest(s, 'tokens_per_second') + ' tok/s now';
  $('#n-load').textContent = latest(s, 'running') + ' running, ' + latest(s, 'queued') + ' queued';
  $('#n-ttft').textContent = 'last hour: p50 ' + (f.hour.ttft_p50_ms ?? '—') + ' ms, p95 '
    + (f.hour.ttft_p95_ms ?? '—') + ' ms over ' + f.hour.replies + ' replies';
  $('#n-cache').textContent = latest(s, 'cache_mb') + ' MB';
  const h = f.health, facts = $('#facts'); facts.replaceChildren();
  const fact = (name, value) => { const p = el('span', name + ': '); p.append(el('b', String(value)));
    facts.append(p); };
  fact('status', h.status); fact('model', h.model); fact('database', h.database);
  fact('journal waiting', h.journal ? h.journal.waiting : 0);
  const ended = Object.entries(f.outcomes).map(([k, v]) => k + ' ' + v).join(' · ');
  fact('replies since start', ended || 'none yet');
  $('#updated').textContent = 'updated ' + new Date().toLocaleTimeString();
}
$('#days').onchange = load;
$('#add').onsubmit = (e) => { e.preventDefault(); const f = new FormData(e.target);
  post('add', {name: f.get('name'), password: f.get('password'), admin: f.get('admin') ? 'on' : ''});
  e.target.reset(); };
load(); tick(); setInterval(tick, 5000);
"""


def _table(body_id: str, *headings: str) -> str:
    head = "".join(f"<th>{h}</th>" for h in headings)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody id="{body_id}"></tbody></table></div>'


def _plot(key: str, title: str, legend: str = "") -> str:
    return (f'<div class="card"><h3>{title} {legend}</h3><svg id="p-{key}" role="img" aria-label="{title}"></svg>'
            f'<div class="now" id="n-{key}">—</div></div>')


USAGE_HEADINGS = ("", "chats", "messages", "prompt tokens", "output tokens", "last active")

ADMIN_PAGE = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Admin · Team Chat</title>
<style>{STYLE}</style></head><body>
<header><h1>Admin</h1><a href="/">Back to the chat</a><span class="muted" id="updated"></span></header>
<main>
<h2>Engine, live (last hour)</h2>
<div class="facts" id="facts"></div>
<div class="plots">
{_plot("tps", "Tokens per second")}
{_plot("load", "Replies", '<span class="key1">running</span> · <span class="key2">queued</span>')}
{_plot("ttft", "Time to first token", '<span class="key1">p50</span> · <span class="key2">p95</span>')}
{_plot("cache", "Prefix-cache memory")}
</div>
<div id="status" role="status" aria-live="polite"></div>
<h2>Accounts</h2>
<form class="add" id="add"><input name="name" placeholder="user name" aria-label="New user name" required
maxlength="64" autocomplete="off"><input name="password" type="password" placeholder="password (8+ characters)"
aria-label="New user password" required maxlength="1024" autocomplete="new-password">
<label><input type="checkbox" name="admin"> admin</label><button type="submit">Add user</button></form>
{_table("accounts", "user", "role", "since", "logins", "")}
<h2>Usage <select id="days" aria-label="Period"><option value="1">last day</option>
<option value="7" selected>last 7 days</option><option value="30">last 30 days</option>
<option value="365">last year</option></select></h2>
<h3 class="muted">Per user</h3>{_table("by-user", *USAGE_HEADINGS)}
<h3 class="muted">Per model</h3>{_table("by-model", *USAGE_HEADINGS)}
<h2>Ratings</h2>{_table("ratings", "model", "up", "down", "comments")}
<h2>Audit</h2>{_table("audit", "when", "who", "what", "whom", "detail")}
</main><script>{SCRIPT}</script></body></html>"""
