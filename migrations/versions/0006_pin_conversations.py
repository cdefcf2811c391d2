"""Pin conversations: a chat a tester pins stays at the top of their sidebar.

Adds ``conversations.pinned`` (false for every existing chat, so an upgraded
database lists exactly as before) and an index for the sidebar's order: one
user's chats, pinned ones first, then most recently active first.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def add_pinned_column() -> None:
    # A plain ALTER TABLE ... ADD COLUMN, not a batch copy: on SQLite a batch copies the
    # table and drops the old one, and with foreign keys on that drop would cascade
    # into every message. A literal default ('0', read as false by both backends)
    # keeps SQLite on the in-place path.
    op.add_column("conversations", sa.Column("pinned", sa.Boolean(), nullable=False, server_default="0"))


def index_the_sidebar_order() -> None:
    op.create_index("ix_conversations_user_pinned_updated", "conversations", ["user_id", "pinned", "updated_at"])


def upgrade() -> None:
    add_pinned_column()
    index_the_sidebar_order()


def downgrade() -> None:
    op.drop_index("ix_conversations_user_pinned_updated", table_name="conversations")
    # in place as well (SQLite 3.35+ drops an unindexed column without copying the table)
    op.drop_column("conversations", "pinned")
