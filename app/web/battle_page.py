"""The blind-battle page: two columns labelled A and B, one message box, the vote, the reveal.

One HTML document with a few lines of script and no dependency. The script posts the
message to ``/battle/send`` and reads both replies from its event stream into the two
columns as they are written; the vote buttons wake only when both replies are complete
(the server checks that again); the vote answers with the labels, shown in place of A
and B. Every text is put on the page with ``textContent``, never as HTML. Light and dark
follow the system; below 700 px the columns stack.
"""

from __future__ import annotations

from app.web.admin_page import STYLE

BATTLE_STYLE = """
.columns{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:12px;margin:12px 0}
.side{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px;min-height:160px}
.side h2{margin:0 0 8px;font-size:1rem}.turn{white-space:pre-wrap;margin:6px 0;padding:6px 8px;border-radius:6px}
.turn.user{background:var(--bg);border:1px solid var(--line)}.turn.err{color:var(--err)}
textarea{font:inherit;color:inherit;background:var(--bg);border:1px solid var(--line);border-radius:6px;
padding:8px;width:100%;min-height:64px}.row{display:flex;gap:8px;flex-wrap:wrap;align-items:center;margin:8px 0}
button:disabled{opacity:.5;cursor:not-allowed}.primary{background:var(--c1);color:#fff;border-color:var(--c1)}
@media (prefers-color-scheme:dark){.primary{color:#0f1216}}
@media (max-width:700px){.columns{grid-template-columns:1fr}}
"""

BATTLE_SCRIPT = """
const $ = (s) => document.querySelector(s);
let battle = '', busy = false, voted = false;
function say(text, bad) { const s = $('#status'); s.textContent = text || ''; s.className = bad ? 'err' : 'ok'; }
function add(side, role, text) {
  const p = document.createElement('div'); p.className = 'turn ' + role; p.textContent = text;
  $('#chat-' + side).append(p); return p;
}
async function answerOf(answer) {
  try { return await answer.json(); } catch (e) { return {error: 'The server answered ' + answer.status + '.'}; }
}
function setVoting(on) { for (const b of document.querySelectorAll('.vote')) b.disabled = !on; }
async function send() {
  const text = $('#prompt').value;
  if (!text.trim() || busy || voted) return;
  busy = true; setVoting(false); say('Both models are writing…');
  const body = new URLSearchParams({text: text, battle_id: battle});
  let answer;
  try { answer = await fetch('/battle/send', {method: 'POST', body: body}); }
  catch (e) { busy = false; say('The server cannot be reached; your message is still in the box.', true); return; }
  if (!answer.ok) {
    const j = await answerOf(answer);
    busy = false; say(j.error, true); return;
  }
  $('#prompt').value = '';
  add('a', 'user', text); add('b', 'user', text);
  const bubbles = {a: add('a', 'assistant', ''), b: add('b', 'assistant', '')};
  const complete = {a: false, b: false};
  const reader = answer.body.getReader(), decoder = new TextDecoder();
  let buffer = '', problem = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf('\\n\\n')) >= 0) {
      const line = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      if (!line.startsWith('data: ')) continue;
      const m = JSON.parse(line.slice(6));
      if (m.side && m.error) { bubbles[m.side].textContent = m.error; bubbles[m.side].classList.add('err'); }
      else if (m.side) { bubbles[m.side].textContent = m.text; if (m.done) complete[m.side] = true; }
      if (m.battle) battle = m.battle;
      if (m.flag) problem = m.flag;
      if (m.error && !m.side) problem = m.error;
    }
  }
  busy = false;
  const ready = complete.a && complete.b;
  setVoting(ready && battle !== '');
  if (problem) say(problem, true);
  else if (ready) say('Which reply is better? Vote, or go on with another message.');
  else say('A reply did not finish; send again.');
}
async function vote(choice) {
  const answer = await fetch('/battle/' + encodeURIComponent(battle) + '/vote',
                             {method: 'POST', body: new URLSearchParams({choice: choice})});
  const j = await answerOf(answer);
  if (!answer.ok) { say(j.error, true); return; }
  voted = true; setVoting(false); $('#send').disabled = true; $('#prompt').disabled = true;
  $('#label-a').textContent = 'A: ' + j.label_a; $('#label-b').textContent = 'B: ' + j.label_b;
  say(j.flag ? 'Your vote is in, but ' + j.flag + '.' : 'Your vote is in. Start a new battle for another.', !!j.flag);
}
$('#send').addEventListener('click', send);
$('#prompt').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); send(); }
});
for (const b of document.querySelectorAll('.vote')) b.addEventListener('click', () => vote(b.dataset.choice));
$('#new-battle').addEventListener('click', () => { location.reload(); });
setVoting(false);
"""

BATTLE_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width,initial-scale=1"><title>Blind battle · Team Chat</title>'
    f"<style>{STYLE}{BATTLE_STYLE}</style></head><body>"
    '<header><h1>Blind battle</h1><a href="/">Back to chats</a><a href="/leaderboard">Leaderboard</a></header>'
    "<main><p class=\"muted\">Two models answer each message; you see which is which only after your vote. "
    "Write as many turns as you like, then vote once.</p>"
    '<div class="columns"><section class="side"><h2 id="label-a">Model A</h2><div id="chat-a"></div></section>'
    '<section class="side"><h2 id="label-b">Model B</h2><div id="chat-b"></div></section></div>'
    '<label for="prompt" class="muted">Your message (Enter sends, Shift+Enter adds a line)</label>'
    '<textarea id="prompt" maxlength="100000"></textarea>'
    '<div class="row"><button id="send" class="primary">Send to both</button>'
    '<button class="vote" id="vote-a" data-choice="a">A is better</button>'
    '<button class="vote" id="vote-b" data-choice="b">B is better</button>'
    '<button class="vote" id="vote-tie" data-choice="tie">Tie</button>'
    '<button class="vote" id="vote-bad" data-choice="both bad">Both are bad</button>'
    '<button id="new-battle">New battle</button></div>'
    f'<p id="status" role="status"></p></main><script>{BATTLE_SCRIPT}</script></body></html>'
)
