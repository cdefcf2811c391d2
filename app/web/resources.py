"""What the server's lifespan opens and its routes use, in one typed object.

The routes are built before the lifespan runs (FastAPI wants them at start), so
each field is None until the lifespan has opened it; a route that finds None
answers "still starting" rather than failing.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.contract import ChatEngine
from app.services.served_models import ServedModels
from app.web.login_cookie import SessionManager
from storage.database import Database
from storage.journal import Journal


@dataclass
class ServerResources:
    database: Database | None = None
    engine: ChatEngine | None = None  # the default model's engine
    models: ServedModels | None = None  # every offered name and its engine (one entry without CHAT_MODELS)
    sessions: SessionManager | None = None
    journal: Journal | None = None
    drained: bool = False  # the replies were finished or stopped once: a second drain does nothing
    first_admin_password: str | None = None  # generated at the first start, shown once and forgotten
