"""Admin audit: every action taken on the admin page (or with the users CLI), who did it and when.

A new table only, so an upgraded database keeps every row as it was. The actor and
target are names rather than user ids: the record of removing a user outlives them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.models import UTCDateTime

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def create_admin_audit() -> None:
    op.create_table(
        "admin_audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("detail", sa.String(200), nullable=False),
    )


def index_by_time() -> None:
    op.create_index("ix_admin_audit_created", "admin_audit", ["created_at"])


def upgrade() -> None:
    create_admin_audit()
    index_by_time()


def downgrade() -> None:
    op.drop_index("ix_admin_audit_created", table_name="admin_audit")
    op.drop_table("admin_audit")
