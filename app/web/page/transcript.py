"""A stored chat as the page's chat bubbles: text, notes, figures, version switches and ratings.

No Gradio here: the page (app/web/page/ui.py) hands these lists to its Chatbot. Bubble i
shows message i of the branch on screen, so an event on a bubble (a rating, an
edit) finds its message by position; a reply still streaming is the bubble after
the last stored message.

A message with several versions carries a "‹ 2 / 3 ›" line whose arrows are
links to ``#v-<message id>``: the page's script (app/web/page/assets.py) turns a
click on one into the switch-version event, so nothing navigates.
"""

from __future__ import annotations

import html

from app.services.chat import interrupted
from app.web.page.message_window import PAGE_MESSAGES, newest
from app.web.page.rendering import safe_markdown
from storage.repository import ConversationRecord, MessageRecord

FINISH_NOTES = {
    "stopped": "(stopped)",
    "disconnected": "(stopped: the page was closed)",
    "length": "… cut at the max new tokens limit",
    "error": "⚠ the model failed on this reply; press Retry",
    "interrupted": "⚠ interrupted (the server stopped)",
    "shutdown": "(stopped by the server)",
}
PENDING_NOTE = "💾 saved locally, will be stored when the database is back"
INTERRUPTED_NOTE = "⚠ This reply was interrupted (the server stopped). Press **Retry** to generate it."


def shown_as_text(text: str) -> str:
    """Markdown for the page: code as code, no live HTML, no remote images (see app/web/page/rendering.py)."""
    return safe_markdown(text).markdown


def reply_stats(message: MessageRecord) -> str:
    """``42 tokens · first token 0.31 s · 12.5 tokens/s`` from the stored fields ('' if unknown)."""
    parts = []
    tokens = message.completion_tokens
    if tokens:
        parts.append(f"{tokens} token{'s' if tokens != 1 else ''}")
    first = (message.params or {}).get("time_to_first_token_ms")
    if isinstance(first, int | float):
        parts.append(f"first token {first / 1000:.2f} s")
        if tokens and message.latency_ms and message.latency_ms > first and tokens > 1:
            parts.append(f"{(tokens - 1) / ((message.latency_ms - first) / 1000):.1f} tokens/s")
    return " · ".join(parts)


def message_bubble(message: MessageRecord) -> dict[str, str]:
    if message.role == "user":
        # its versions are switched from the bubble below it, so the edit box holds only the text
        return {"role": "user", "content": shown_as_text(message.content)}
    if message.role == "system":
        return {"role": "assistant", "content": "*System prompt:* " + shown_as_text(message.content)}
    content = shown_as_text(message.content)
    note = FINISH_NOTES.get(message.finish_reason or "")
    if note:
        content = (content + "\n\n" if content else "") + f"*{note}*"
    if message.pending:
        content = (content + "\n\n" if content else "") + f"*{PENDING_NOTE}*"
    stats = reply_stats(message)
    if stats:
        content += f'\n\n<small class="reply-stats">{stats}</small>'
    content += rating_note(message)
    return with_versions({"role": "assistant", "content": content}, message)


def shown_messages(
    conversation: ConversationRecord | None, shown: int = PAGE_MESSAGES
) -> tuple[list[MessageRecord], int]:
    """The messages drawn as bubbles (the newest ``shown``) and how many earlier ones are left out.

    Bubble i is message ``hidden + i`` of the branch: events on a bubble add ``hidden``.
    """
    if conversation is None:
        return [], 0
    return newest(conversation.messages, shown)


def conversation_bubbles(
    conversation: ConversationRecord | None, live_text: str | None = None, shown: int = PAGE_MESSAGES
) -> list[dict[str, str]]:
    """A stored chat, its newest ``shown`` messages; ``live_text`` is its reply being generated now, if any."""
    if conversation is None:
        return []
    messages, _hidden = shown_messages(conversation, shown)
    bubbles = with_model_changes(messages, [message_bubble(m) for m in messages])
    if interrupted(conversation):
        if live_text is not None:
            bubbles.append({"role": "assistant", "content": shown_as_text(live_text) or "…"})
        else:
            bubbles.append({"role": "assistant", "content": INTERRUPTED_NOTE})
    return with_user_versions(messages, bubbles)


def written_by(message: MessageRecord) -> str | None:
    """The name a reply was written by: its variant's, else its model's (None: not recorded)."""
    return message.variant or message.model


def with_model_changes(messages: list[MessageRecord], bubbles: list[dict[str, str]]) -> list[dict[str, str]]:
    """Where a chat continued with another model, the first reply of that model says so, once.

    Said on the reply (not as a message of its own) so the bubbles stay one per message;
    re-encoding is mentioned only when the weights changed (a variant reads the same ids).
    """
    bubbles = list(bubbles)
    previous: MessageRecord | None = None
    for index, message in enumerate(messages):
        if message.role != "assistant" or not written_by(message):
            continue
        if previous is not None and written_by(previous) != written_by(message):
            name = html.escape(written_by(message) or "")
            line = f'<small class="model-change">continued with <code>{name}</code>'
            if previous.model != message.model:
                line += " (earlier messages re-encoded from text)"
            bubbles[index] = {**bubbles[index], "content": line + "</small>\n\n" + bubbles[index]["content"]}
        previous = message
    return bubbles


def with_user_versions(messages: list[MessageRecord], bubbles: list[dict[str, str]]) -> list[dict[str, str]]:
    """Put each edited user message's "‹ 2 / 3 ›" on top of the bubble that answers it."""
    bubbles = list(bubbles)
    for index, message in enumerate(messages):
        switch = version_switch(message) if message.role == "user" else ""
        if switch and index + 1 < len(bubbles) and bubbles[index + 1]["role"] == "assistant":
            below = bubbles[index + 1]
            line = f'<small class="user-versions">your message: {switch}</small>\n\n'
            bubbles[index + 1] = {**below, "content": line + below["content"]}
    return bubbles


RATING_FEEDBACK = {"up": "Like", "down": "Dislike"}
VERSION_LINK_PREFIX = "#v-"


def version_switch(message: MessageRecord) -> str:
    """``‹ 2 / 3 ›`` with the arrows linking to the neighbouring versions ('' for a single version)."""
    if message.version_count < 2:
        return ""
    index = message.version - 1
    parts = []
    if index > 0:
        parts.append(f'<a class="version-prev" href="{VERSION_LINK_PREFIX}{message.versions[index - 1]}">‹</a>')
    else:
        parts.append('<span class="version-edge">‹</span>')
    parts.append(f"{message.version} / {message.version_count}")
    if index + 1 < message.version_count:
        parts.append(f'<a class="version-next" href="{VERSION_LINK_PREFIX}{message.versions[index + 1]}">›</a>')
    else:
        parts.append('<span class="version-edge">›</span>')
    return '<span class="versions">' + " ".join(parts) + "</span>"


def with_versions(bubble: dict[str, str], message: MessageRecord) -> dict[str, str]:
    switch = version_switch(message)
    if switch:
        bubble = {**bubble, "content": bubble["content"] + "\n\n" + switch}
    return bubble


def rating_note(message: MessageRecord) -> str:
    if message.rating is None or not message.rating.comment:
        return ""
    comment = safe_markdown(" ".join(message.rating.comment.split())).markdown
    return f'\n\n<small class="rating-comment">💬 {comment}</small>'


def feedback_values(messages: list[MessageRecord], bubbles: list[dict[str, str]]) -> list[str | None]:
    """The Chatbot's like/dislike state: one entry per bubble drawn on the model's side."""
    values: list[str | None] = []
    for index, bubble in enumerate(bubbles):
        if bubble["role"] != "assistant":
            continue
        message = messages[index] if index < len(messages) else None
        rating = message.rating if message is not None and message.role == "assistant" else None
        values.append(RATING_FEEDBACK[rating.value] if rating is not None else None)
    return values
