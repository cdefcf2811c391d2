"""Export files of one chat or all of a tester's chats, written where the web layer can serve them."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from app.services.conversations import ConversationsMixin
from app.services.errors import CANNOT_READ, ChatError, database_faults
from app.services.export_formats import FILE_SUFFIX, write_export

EXPORT_FILES_KEPT_SECONDS = 3600


class ExportsMixin(ConversationsMixin):
    """Writes export files under ``export_dir``, one temporary folder each, and clears old ones."""

    def _remove_old_exports(self) -> None:
        """Gradio copies a returned file into its own cache; our copy is only needed briefly."""
        cutoff = time.time() - EXPORT_FILES_KEPT_SECONDS
        for folder in self.export_dir.glob("*"):
            with contextlib.suppress(OSError):
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)

    async def export(self, username: str | None, fmt: str, conversation_id: str | None = None) -> Path:
        """Write an export file of one chat or all of the user's chats; returns its path."""
        user_id = await self.user_id(username)
        if fmt not in FILE_SUFFIX:
            raise ChatError(f"Unknown export format {fmt!r}.")
        if conversation_id is not None:
            await self.open(username, conversation_id)  # ownership check, same error as unknown
        await asyncio.to_thread(self._remove_old_exports)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"chat-{conversation_id[:8]}-{stamp}" if conversation_id else f"all-chats-{username}-{stamp}"
        folder = Path(tempfile.mkdtemp(dir=self.export_dir))
        path = folder / (name + FILE_SUFFIX[fmt])
        conversations = self.repository.iter_conversations(user_id, conversation_id)
        with database_faults(CANNOT_READ), path.open("w", encoding="utf-8") as out:
            await write_export(conversations, out, fmt)
        return path
