"""``GET /healthz``: whether a tester's next reply would be generated and stored, and why not.

Public (no login), for the operator's monitoring: 200 with ``"status": "ok"``
when healthy, else 503 with ``"degraded"`` and the part at fault. The engine
describes itself (``ChatEngine.health_report``), so this route does not need to
know which engine runs.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.web.model_engines import models_health
from app.web.resources import ServerResources
from storage.database import Database
from storage.errors import StorageUnavailable

log = logging.getLogger(__name__)


def build_health_router(resources: ServerResources, model_name: str) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        report, healthy = await health_report(resources, model_name)
        return JSONResponse(report, status_code=200 if healthy else 503)

    return router


async def health_report(resources: ServerResources, model_name: str) -> tuple[dict[str, Any], bool]:
    """Healthy means a tester's next reply would be stored: the database takes a write
    now, nothing waits in the journal, and the default model's engine can generate."""
    report: dict[str, Any] = {"model": model_name}
    report["database"], healthy = await _database_health(resources.database)
    if resources.journal is not None:
        report["journal"] = {"waiting": resources.journal.backlog}
        healthy = healthy and resources.journal.backlog == 0
    if resources.engine is None:
        report["engine"] = "starting"
        healthy = False
    else:
        engine = await resources.engine.health_report()
        report["engine"] = engine.report
        healthy = healthy and engine.healthy
        # every offered name: another model being down is shown here but does not make the
        # server degraded (its chats say so; the default model's chats keep being served)
        report["models"] = await models_health(resources.models)
    report["status"] = "ok" if healthy else "degraded"
    return report, healthy


async def _database_health(database: Database | None) -> tuple[str, bool]:
    """What ``/healthz`` says of the database, and whether it takes a write now."""
    if database is None:
        return "starting", False
    try:
        await database.check_writable()
    except StorageUnavailable as error:
        return f"not accepting writes ({error.reason})", False
    except Exception as error:
        log.exception("health check of the database failed")
        return f"error: {type(error).__name__}", False
    return "ok", True
