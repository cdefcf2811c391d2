"""Blind battles: two models' chats side by side for one tester, and that tester's one vote.

One row per battle: who rated, which model was shown on which side, each side's chat
(NULL once deleted: the vote keeps its own copy of both sides in ``sides``), the vote
and when, and why the battle was not blind if a reply named a model (``flag``).
Indexed for a tester's own battles, newest first, the leaderboard's "since", and each side's chat.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.models import UTCDateTime

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def create_battles() -> None:
    op.create_table(
        "battles",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_a", sa.String(200), nullable=False),
        sa.Column("model_b", sa.String(200), nullable=False),
        sa.Column(
            "conversation_a", sa.String(36), sa.ForeignKey("conversations.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column(
            "conversation_b", sa.String(36), sa.ForeignKey("conversations.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("winner", sa.String(16), nullable=True),
        sa.Column("voted_at", UTCDateTime(), nullable=True),
        sa.Column("flag", sa.String(200), nullable=True),
        sa.Column("sides", sa.JSON(), nullable=True),
    )
    op.create_index("ix_battles_user_created", "battles", ["user_id", "created_at"])
    op.create_index("ix_battles_voted", "battles", ["voted_at"])
    # "is this chat one side of a battle not voted on yet?" on every opening of a chat, and
    # deleting a chat sets its battle's side to NULL: both found by index, not by a scan
    op.create_index("ix_battles_conversation_a", "battles", ["conversation_a"])
    op.create_index("ix_battles_conversation_b", "battles", ["conversation_b"])


def upgrade() -> None:
    create_battles()


def downgrade() -> None:
    op.drop_index("ix_battles_conversation_b", table_name="battles")
    op.drop_index("ix_battles_conversation_a", table_name="battles")
    op.drop_index("ix_battles_voted", table_name="battles")
    op.drop_index("ix_battles_user_created", table_name="battles")
    op.drop_table("battles")
