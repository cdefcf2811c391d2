"""Create login_sessions: logins kept in the database.

Logins used to live in the server's memory: a restart logged everyone out, and a
changed password or a removed user left old logins working. Each row is one
browser's login, keyed by the SHA-256 of its cookie value, bound to the user's id
(cascade: removing a user ends their logins) and with an expiry.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.models import UTCDateTime

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def create_login_sessions() -> None:
    op.create_table(
        "login_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    # "log out everywhere" and revocation on a password change: all logins of one user
    op.create_index("ix_login_sessions_user", "login_sessions", ["user_id"])


def upgrade() -> None:
    create_login_sessions()


def downgrade() -> None:
    op.drop_index("ix_login_sessions_user", table_name="login_sessions")
    op.drop_table("login_sessions")
