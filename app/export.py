"""Conversation logs for whoever evaluates the model: JSON, Markdown and JSONL.

- JSON is the full-fidelity archive (``import_json`` reads it back identically,
  token ids included when exported with them).
- Markdown is a transcript for people.
- JSONL is one conversation per line in the ``{"messages": [{"role", "content"}]}``
  shape that fine-tuning and evaluation tools read, metadata beside it.

Writers stream conversation by conversation, so exporting everyone's chats never
holds more than one batch in memory.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from storage.errors import InvalidInput
from storage.repository import ConversationRecord, MessageRecord, NewMessage, Repository

FORMATS = ("json", "md", "jsonl")
EXPORT_FORMAT_NAME = "chat-server-export"
EXPORT_VERSION = 1
FILE_SUFFIX = {"json": ".json", "md": ".md", "jsonl": ".jsonl"}
MEDIA_TYPE = {"json": "application/json", "md": "text/markdown", "jsonl": "application/jsonl"}
# json.dumps(ensure_ascii=False) leaves these unescaped, yet str.splitlines() breaks lines on them
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def message_to_dict(message: MessageRecord, *, include_token_ids: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "seq": message.seq,
        "role": message.role,
        "content": message.content,
        "created_at": _time(message.created_at),
        "params": message.params,
        "finish_reason": message.finish_reason,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "latency_ms": message.latency_ms,
    }
    if include_token_ids:
        data["token_ids"] = message.token_ids
    return data


def conversation_to_dict(
    conversation: ConversationRecord, *, include_token_ids: bool
) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "user": conversation.username,
        "title": conversation.title,
        "model": conversation.model,
        "created_at": _time(conversation.created_at),
        "updated_at": _time(conversation.updated_at),
        "messages": [
            message_to_dict(message, include_token_ids=include_token_ids)
            for message in conversation.messages
        ],
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
            }
            for m in conversation.messages
        ],
    }
    return json.dumps(record, ensure_ascii=False).translate(_LINE_BREAKS)


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
        note = ""
        if message.role == "assistant" and message.finish_reason not in (None, "eos", "stop"):
            note = f" _(finished: {message.finish_reason})_"
        lines += [f"### {heading}{note}", "", message.content, ""]
    return "\n".join(lines) + "\n"


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
    if document.get("version") != EXPORT_VERSION:
        raise InvalidInput(f"export version {document.get('version')!r} is not supported")
    conversations = document.get("conversations")
    if not isinstance(conversations, list):
        raise InvalidInput("export has no conversations list")
    return conversations


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
        )


async def import_json(repository: Repository, text: str, *, as_user: str | None = None) -> int:
    """Restore conversations from a JSON export, each to its user (or ``as_user``).

    Ids, times and token ids are kept, so a round trip is exact; a conversation whose
    id already exists is refused rather than merged.
    """
    conversations = read_export_document(text)
    users: dict[str, int] = {}
    imported = 0
    for conversation in conversations:
        username = as_user or conversation.get("user")
        if username not in users:
            users[username] = (await repository.get_user(username)).id
        await repository.import_conversation(
            users[username],
            conversation_id=conversation.get("id"),
            title=conversation.get("title"),
            model=conversation.get("model"),
            created_at=_parse_time(conversation.get("created_at"), "created_at"),
            updated_at=_parse_time(conversation.get("updated_at"), "updated_at"),
            messages=list(messages_from_dict(conversation)),
        )
        imported += 1
    return imported
