"""The page's API as a script or a colleague's client uses it: log in, send through ``/send``, read what was stored.

Shared by the server tests, the end-to-end tests and the benchmarks, so each drives the
page the same way instead of keeping its own copy.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gradio_client import Client

from tests.support import ServerProcess, api_client, read_stored

PASSWORD = "password-123"


def client_for(server: ServerProcess, name: str) -> Client:
    return api_client(server.url, name, PASSWORD)


def bubble_texts(chatbot: list[dict[str, Any]]) -> list[tuple[str, str]]:
    texts = []
    for bubble in chatbot:
        content = bubble["content"]
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        texts.append((bubble["role"], content))
    return texts


def send(client: Client, text: str, conversation_id: str | None = None, max_new_tokens: int = 24,
         temperature: float = 0.7) -> tuple[list[tuple], tuple]:
    """Send through /send; returns every streamed output and the final one."""
    job = client.submit(text, conversation_id or "", "", temperature, 0.9, max_new_tokens, "", api_name="/send")
    updates = list(job)
    return updates, job.result()


def chat_titles(client: Client) -> list[str]:
    chat_list = client.predict(api_name="/load")[1]
    return [label.rsplit(" · ", 1)[0] for label, _ in chat_list["choices"]]  # "title · when"


def stored(server: ServerProcess, username: str, conversation_id: str):
    return asyncio.run(read_stored(server.database_url, username, conversation_id))


def message_count(server: ServerProcess) -> int:
    import sqlite3

    with sqlite3.connect(server.data_dir / "chat.db") as connection:
        return connection.execute("SELECT count(*) FROM messages").fetchone()[0]
