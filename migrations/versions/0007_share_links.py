"""Share links: a frozen copy of one chat under a random link, and the links themselves.

``share_links`` holds who shared which chat, when, and whether the link was revoked
or expires; ``share_snapshots`` the copy it shows (the branch on screen with its
token ids, as JSON), separate so that listing a tester's links never reads the copies.
Deleting the source chat keeps the copy (the link's ``conversation_id`` becomes NULL);
revoking a link deletes its copy and keeps the row, so the link can say it was revoked.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.models import UTCDateTime

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def create_share_links() -> None:
    op.create_table(
        "share_links",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "conversation_id", sa.String(36), sa.ForeignKey("conversations.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
    )
    # a tester's links, newest first (the account page)
    op.create_index("ix_share_links_user_created", "share_links", ["user_id", "created_at"])
    # deleting a chat sets its links' conversation_id to NULL: found by index, not by a scan
    op.create_index("ix_share_links_conversation", "share_links", ["conversation_id"])


def create_share_snapshots() -> None:
    op.create_table(
        "share_snapshots",
        sa.Column(
            "link_id", sa.String(64), sa.ForeignKey("share_links.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
    )


def upgrade() -> None:
    create_share_links()
    create_share_snapshots()


def downgrade() -> None:
    op.drop_table("share_snapshots")
    op.drop_index("ix_share_links_conversation", table_name="share_links")
    op.drop_index("ix_share_links_user_created", table_name="share_links")
    op.drop_table("share_links")
