"""The admin audit: what an admin did to whom and when, written after each action and read by the admin page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from storage.models import AUDIT_DETAIL_MAX, USERNAME_MAX, AdminAudit, utcnow
from storage.repository.base import RepositoryBase

AUDIT_PAGE = 100


@dataclass(frozen=True)
class AuditRecord:
    at: datetime
    actor: str
    action: str
    target: str
    detail: str


class AuditStore(RepositoryBase):
    """The ``admin_audit`` table: append one action, list the latest."""

    async def record_admin_action(self, actor: str, action: str, target: str, detail: str = "") -> None:
        """Names are cut to the column's width (a target that was refused may be any text)."""
        row = AdminAudit(
            created_at=utcnow(), actor=actor[:USERNAME_MAX], action=action[:32], target=target[:USERNAME_MAX],
            detail=detail[:AUDIT_DETAIL_MAX],
        )
        async with self.database.writer() as session, session.begin():
            session.add(row)

    async def recent_admin_actions(self, limit: int = AUDIT_PAGE) -> list[AuditRecord]:
        async with self.database.reader() as session:
            rows = await session.scalars(
                select(AdminAudit).order_by(AdminAudit.created_at.desc(), AdminAudit.id.desc()).limit(limit)
            )
            return [AuditRecord(r.created_at, r.actor, r.action, r.target, r.detail) for r in rows]
