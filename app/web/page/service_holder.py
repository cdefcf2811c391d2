"""The chat service as the page's handlers reach it: built before the service exists."""

from __future__ import annotations

from app.services.chat import ChatService
from app.services.errors import ChatError


class ServiceHolder:
    """The service appears when the server's lifespan has started it; the UI is built before."""

    def __init__(self) -> None:
        self.service: ChatService | None = None

    def get(self) -> ChatService:
        if self.service is None:
            raise ChatError("The server is still starting; try again in a few seconds.")
        return self.service
