"""What every part of ChatService shares (storage, the engine, the prompt format, the limits), and who the user is.

The parts (conversations, judgments, replies, exports) are mixins over this one
state so that the web layer keeps holding a single object. The state is set here
only; a part that calls another part's methods subclasses that part.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from app.engine import ChatEngine, PromptFormat
from app.services.errors import CANNOT_READ, ChatError, database_faults
from app.services.limits import SearchGate
from app.services.observer import NO_OBSERVER, ReplyObserver
from app.services.persist import ReplyStore
from app.services.reply_stream import LiveReplies
from app.services.served_models import ServedModels
from app.services.throttle import MessageThrottle
from storage.errors import NotFound
from storage.journal import Journal
from storage.repository import Repository


class ServiceState:
    """The shared state of the chat service and the one lookup every method starts with."""

    def __init__(
        self,
        repository: Repository,
        engine: ChatEngine,
        prompt_format: PromptFormat,
        model_name: str,
        *,
        max_input_chars: int = 8000,
        max_new_tokens: int = 1024,
        rate_limit: int = 10,
        rate_period: float = 60.0,
        export_dir: Path | None = None,
        journal: Journal | None = None,
        observer: ReplyObserver = NO_OBSERVER,
        models: ServedModels | None = None,
    ) -> None:
        self.repository = repository
        self.journal = journal or Journal(None)
        self.engine = engine
        self.prompt_format = prompt_format
        self.model_name = model_name
        # every model a chat may use, the default (``engine``, ``model_name``) first; one without CHAT_MODELS
        self.models = models or ServedModels.single(model_name, engine, prompt_format)
        self.max_input_chars = max_input_chars
        self.max_new_tokens = max_new_tokens
        self.rate_limit = rate_limit
        self.rate_period = rate_period
        self.export_dir = export_dir or Path(tempfile.mkdtemp(prefix="chat-exports-"))
        self._message_throttle = MessageThrottle(rate_limit, rate_period)
        self._searches = SearchGate()
        self.observer = observer  # hears how replies end (the server's metrics)
        # replies being generated, by conversation id: one at a time per chat
        self._live = LiveReplies(engine, ReplyStore(repository, self.journal, prompt_format, observer))

    async def user_id(self, username: str | None) -> int:
        """Looked up on every call (one indexed query), so a user removed by the CLI is gone at once."""
        if not username:
            raise ChatError("Please log in.")
        try:
            with database_faults(CANNOT_READ):
                return (await self.repository.get_user(username)).id
        except NotFound:
            raise ChatError("Your account no longer exists; ask an admin.") from None
