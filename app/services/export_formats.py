"""Conversation logs for whoever evaluates the model: JSON, Markdown, JSONL and preference pairs.

- JSON is the full-fidelity archive: the whole message tree (every version of every
  turn, which one is shown), ratings with comments; ``import_json`` reads it back
  identically, token ids included when exported with them.
- Markdown is a transcript for people: the branch on screen with each reply's rating.
- JSONL is one conversation per line in the ``{"messages": [{"role", "content"}]}``
  shape that fine-tuning and evaluation tools read (the branch on screen), metadata
  and per-message ratings beside it.
- ``preferences`` is TRL's conversational preference layout, one pair per line (see
  :func:`preference_pairs`).

Writers stream conversation by conversation, so exporting everyone's chats never
holds more than one batch in memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from storage.errors import InvalidInput
from storage.repository import (
    ConversationRecord,
    ImportedConversation,
    ImportedNode,
    MessageRecord,
    NewMessage,
    RatingRecord,
    Repository,
)
from storage.tree import children_of, path_to

FORMATS = ("json", "md", "jsonl", "preferences")
EXPORT_FORMAT_NAME = "chat-server-export"
EXPORT_VERSION = 2  # 2: the message tree and ratings; version 1 files (one branch) still import
READABLE_VERSIONS = (1, 2)
FILE_SUFFIX = {"json": ".json", "md": ".md", "jsonl": ".jsonl", "preferences": ".preferences.jsonl"}
MEDIA_TYPE = {
    "json": "application/json", "md": "text/markdown", "jsonl": "application/jsonl",
    "preferences": "application/jsonl",
}
# json.dumps(ensure_ascii=False) leaves these unescaped, yet str.splitlines() breaks lines on them
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def rating_to_dict(rating: RatingRecord) -> dict[str, Any]:
    return {
        "user": rating.username,
        "value": rating.value,
        "comment": rating.comment,
        "created_at": _time(rating.created_at),
        "updated_at": _time(rating.updated_at),
    }


def _short_rating(message: MessageRecord) -> dict[str, Any] | None:
    rating = message.rating
    return None if rating is None else {"value": rating.value, "comment": rating.comment}


def message_to_dict(
    message: MessageRecord, *, include_token_ids: bool, parent_seq: int | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "seq": message.seq,
        "parent_seq": parent_seq,
        "active": message.active,
        "role": message.role,
        "content": message.content,
        "created_at": _time(message.created_at),
        "params": message.params,
        "finish_reason": message.finish_reason,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "latency_ms": message.latency_ms,
        "ratings": [rating_to_dict(rating) for rating in message.ratings],
        "model": message.model,  # the model that wrote it (its weights), and the variant, if one was used
        "variant": message.variant,
    }
    if include_token_ids:
        data["token_ids"] = message.token_ids
    return data


def conversation_to_dict(
    conversation: ConversationRecord, *, include_token_ids: bool
) -> dict[str, Any]:
    everything = conversation.all_messages()
    seq_of = {message.id: message.seq for message in everything}
    return {
        "id": conversation.id,
        "user": conversation.username,
        "title": conversation.title,
        "model": conversation.model,
        "created_at": _time(conversation.created_at),
        "updated_at": _time(conversation.updated_at),
        # every version of every turn, in the order they were stored
        "messages": [
            message_to_dict(
                message, include_token_ids=include_token_ids, parent_seq=seq_of.get(message.parent_id or -1)
            )
            for message in everything
        ],
        "branch": [message.seq for message in conversation.messages],  # what was on screen
    }


def conversation_to_jsonl_line(conversation: ConversationRecord) -> str:
    record = {
        "messages": [{"role": m.role, "content": m.content} for m in conversation.messages],
        "id": conversation.id,
        "user": conversation.username,
        "title": conversation.title,
        "model": conversation.model,
        "created_at": _time(conversation.created_at),
        "updated_at": _time(conversation.updated_at),
        "turns": [
            {
                "seq": m.seq,
                "role": m.role,
                "finish_reason": m.finish_reason,
                "params": m.params,
                "prompt_tokens": m.prompt_tokens,
                "completion_tokens": m.completion_tokens,
                "latency_ms": m.latency_ms,
                "version": m.version,
                "versions": m.version_count,
                "rating": _short_rating(m),
                "model": m.model,
                "variant": m.variant,
            }
            for m in conversation.messages
        ],
    }
    return json.dumps(record, ensure_ascii=False).translate(_LINE_BREAKS)


# a line Markdown would read as a heading, a rule or setext underline, or a code fence
_BLOCK_START = re.compile(r"^( {0,3})(#|-{3,}[ \t]*$|={3,}[ \t]*$|\*{3,}[ \t]*$|_{3,}[ \t]*$)")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def escape_markdown_blocks(text: str) -> str:
    """A message's text made unable to forge the transcript's structure.

    Outside code blocks, lines that would start a heading (``### Assistant``), a rule
    or the ``---`` between conversations get a backslash (they read the same); an
    unclosed code fence is closed, so it cannot swallow the turns after it. Code
    inside fences is left exactly as it is (a heading there is only text).
    """
    lines, fence = [], ""
    for line in text.split("\n"):
        opening = _FENCE.match(line)
        if fence:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = ""
        elif opening:
            fence = opening.group(1)
        else:
            line = _BLOCK_START.sub(lambda m: m.group(1) + "\\" + m.group(2), line)
        lines.append(line)
    if fence:
        lines.append(fence)
    return "\n".join(lines)


RATING_MARKS = {"up": "👍 rated up", "down": "👎 rated down"}


def conversation_to_markdown(conversation: ConversationRecord) -> str:
    lines = [
        f"# {conversation.title}",
        "",
        f"- **User:** {conversation.username}",
        f"- **Model:** {conversation.model}",
        f"- **Started:** {_time(conversation.created_at)}",
        f"- **Last active:** {_time(conversation.updated_at)}",
        f"- **Conversation id:** `{conversation.id}`",
        "",
    ]
    for message in conversation.messages:
        heading = {"user": "User", "assistant": "Assistant", "system": "System"}[message.role]
        notes = []
        if message.version_count > 1:
            notes.append(f"version {message.version} of {message.version_count}")
        written_by = message.variant or message.model
        if message.role == "assistant" and written_by and written_by != conversation.model:
            # a chat that changed models: which one wrote this reply (the header names the chat's model)
            notes.append("by " + written_by.replace("_", "\\_"))
        if message.role == "assistant" and message.finish_reason not in (None, "eos", "stop"):
            notes.append(f"finished: {message.finish_reason}")
        if message.rating is not None:
            mark = RATING_MARKS[message.rating.value]
            if message.rating.comment:
                mark += ": " + message.rating.comment.replace("\n", " ").replace("_", "\\_")
            notes.append(mark)
        note = f" _({'; '.join(notes)})_" if notes else ""
        lines += [f"### {heading}{note}", "", escape_markdown_blocks(message.content), ""]
    return "\n".join(lines) + "\n"


def preference_pairs(conversation: ConversationRecord) -> Iterator[dict[str, Any]]:
    """Preference pairs from sibling reply versions, in TRL's conversational layout.

    For every user message with several replies and every rater: each reply that
    rater rated up is ``chosen`` against each sibling reply they did not rate up
    (rated down or not rated). ``prompt`` is the conversation from its first
    message down to that user message, along its own branch. Empty replies (a
    failed or interrupted generation) are left out.
    """
    everything = conversation.all_messages()
    children = children_of(everything)
    for prompt_end in everything:
        if prompt_end.role != "user":
            continue
        replies = [m for m in children.get(prompt_end.id, []) if m.role == "assistant" and m.content]
        if len(replies) < 2:
            continue
        prompt = [{"role": m.role, "content": m.content} for m in path_to(everything, prompt_end.id)]
        raters = sorted({r.username for reply in replies for r in reply.ratings if r.value == "up"})
        for rater in raters:
            def rated(message: MessageRecord, rater: str = rater) -> RatingRecord | None:
                return next((r for r in message.ratings if r.username == rater), None)

            for chosen in replies:
                chosen_rating = rated(chosen)
                if chosen_rating is None or chosen_rating.value != "up":
                    continue
                for rejected in replies:
                    rejected_rating = rated(rejected)
                    if rejected is chosen or (rejected_rating is not None and rejected_rating.value == "up"):
                        continue
                    yield {
                        "prompt": prompt,
                        "chosen": [{"role": "assistant", "content": chosen.content}],
                        "rejected": [{"role": "assistant", "content": rejected.content}],
                        "conversation_id": conversation.id,
                        "model": conversation.model,
                        "user": conversation.username,
                        "rater": rater,
                        "prompt_seq": prompt_end.seq,
                        "chosen_seq": chosen.seq,
                        "rejected_seq": rejected.seq,
                        "chosen_params": chosen.params,
                        "rejected_params": rejected.params,
                        "chosen_finish_reason": chosen.finish_reason,
                        "rejected_finish_reason": rejected.finish_reason,
                        "chosen_comment": chosen_rating.comment,
                        "rejected_rating": None if rejected_rating is None else rejected_rating.value,
                        "rejected_comment": None if rejected_rating is None else rejected_rating.comment,
                    }


async def write_export(
    conversations: AsyncIterable[ConversationRecord],
    out: TextIO,
    fmt: str,
    *,
    include_token_ids: bool = False,
) -> int:
    """Stream ``conversations`` to ``out`` in ``fmt``; returns how many were written."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    count = 0
    if fmt == "json":
        header = {
            "format": EXPORT_FORMAT_NAME,
            "version": EXPORT_VERSION,
            "exported_at": _time(datetime.now(UTC)),
            "includes_token_ids": include_token_ids,
        }
        out.write(json.dumps(header, ensure_ascii=False)[:-1] + ', "conversations": [\n')
    async for conversation in conversations:
        if fmt == "json":
            body = conversation_to_dict(conversation, include_token_ids=include_token_ids)
            out.write((",\n" if count else "") + json.dumps(body, ensure_ascii=False))
        elif fmt == "jsonl":
            out.write(conversation_to_jsonl_line(conversation) + "\n")
        elif fmt == "preferences":
            for pair in preference_pairs(conversation):
                out.write(json.dumps(pair, ensure_ascii=False).translate(_LINE_BREAKS) + "\n")
        else:
            out.write(("\n---\n\n" if count else "") + conversation_to_markdown(conversation))
        count += 1
    if fmt == "json":
        out.write("\n]}\n")
    return count


# ---------------------------------------------------------------- import


def _parse_time(value: Any, where: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{where}: {value!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def read_export_document(text: str) -> list[dict[str, Any]]:
    """The conversations of a JSON export, after checking it is one of ours."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"not a JSON export: {error}") from None
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT_NAME:
        raise InvalidInput(f"not a {EXPORT_FORMAT_NAME} JSON document (export with --format json)")
    if document.get("version") not in READABLE_VERSIONS:
        raise InvalidInput(f"export version {document.get('version')!r} is not supported")
    conversations = document.get("conversations")
    if not isinstance(conversations, list):
        raise InvalidInput("export has no conversations list")
    return conversations


def tree_from_dict(conversation: dict[str, Any], rename: dict[str, str]) -> list[ImportedNode] | None:
    """Where each message sits and its ratings (None for a version 1 export: one branch in order)."""
    messages = conversation.get("messages") or []
    if not all(isinstance(m, dict) and "parent_seq" in m for m in messages):
        return None
    nodes = []
    for index, message in enumerate(messages):
        where = f"conversation {conversation.get('id')} message {index}"
        ratings = []
        for rating in message.get("ratings") or []:
            if not isinstance(rating, dict):
                raise InvalidInput(f"{where}: a rating must be an object")
            user = rating.get("user")
            ratings.append(RatingRecord(
                rename.get(user, user), rating.get("value"), rating.get("comment"),
                _parse_time(rating.get("created_at"), where), _parse_time(rating.get("updated_at"), where),
            ))
        nodes.append(ImportedNode(message.get("seq"), message.get("parent_seq"), bool(message.get("active", True)),
                                  tuple(ratings)))
    return nodes


def messages_from_dict(conversation: dict[str, Any]) -> Iterator[NewMessage]:
    for index, message in enumerate(conversation.get("messages") or []):
        where = f"conversation {conversation.get('id')} message {index}"
        yield NewMessage(
            role=message.get("role"),
            content=message.get("content"),
            token_ids=message.get("token_ids") or [],
            params=message.get("params"),
            finish_reason=message.get("finish_reason"),
            prompt_tokens=message.get("prompt_tokens"),
            completion_tokens=message.get("completion_tokens"),
            latency_ms=message.get("latency_ms"),
            created_at=_parse_time(message.get("created_at"), where),
            model=_optional_name(message.get("model"), where),
            variant=_optional_name(message.get("variant"), where),
        )


def _optional_name(value: Any, where: str) -> str | None:
    """A message's model or variant from a file: a name, or nothing (version 2 files before 0009)."""
    if value is None or (isinstance(value, str) and value.strip()):
        return value
    raise InvalidInput(f"{where}: model and variant must be names or null")


async def import_json(repository: Repository, text: str, *, as_user: str | None = None) -> int:
    """Restore the conversations of a JSON export, each to its user (or ``as_user``): all or none.

    Ids, times and token ids are kept, so a round trip is exact; a conversation whose
    id already exists is refused rather than merged, and then nothing of the file is
    imported (fix it or remove that chat, and import the same file again).
    """
    users: dict[str, int] = {}
    restored: list[ImportedConversation] = []
    for conversation in read_export_document(text):
        username = as_user or conversation.get("user")
        # imported as someone else: the owner's own ratings become that user's
        rename = {conversation.get("user"): username} if as_user else {}
        tree = tree_from_dict(conversation, rename)
        raters = {username} | {r.username for node in tree or [] for r in node.ratings}
        for name in raters:
            if name not in users:
                users[name] = (await repository.get_user(name)).id
        restored.append(ImportedConversation(
            user_id=users[username],
            conversation_id=conversation.get("id"),
            title=conversation.get("title"),
            model=conversation.get("model"),
            created_at=_parse_time(conversation.get("created_at"), "created_at"),
            updated_at=_parse_time(conversation.get("updated_at"), "updated_at"),
            messages=list(messages_from_dict(conversation)),
            tree=tree,
        ))
    await repository.import_conversations(restored, raters=users)
    return len(restored)
