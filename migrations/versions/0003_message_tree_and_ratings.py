"""Turn each chat into a message tree and add ratings.

Retry used to throw the old reply away. Now every message knows its parent
(``parent_id``; None for the first) and siblings are versions of one turn; the
``active`` one of each sibling group is the version on screen. ``ratings`` keeps
one thumbs up / down (+1 / -1) with an optional comment per user per reply version.

Upgrading a populated database: every message's parent becomes the message before
it (by ``seq``) in its chat and every message is active, so each chat is a single
branch with its text, token ids, params, timings and statuses untouched.

A downgrade is only possible while no chat has a second version and nothing is
rated; otherwise it refuses, saying why, and changes nothing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.models import UTCDateTime

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def add_parent_and_active_columns() -> None:
    # batch: SQLite changes a table by copying it (ids and every value are copied as they are)
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.create_foreign_key(
            "fk_messages_parent_id_messages", "messages", ["parent_id"], ["id"], ondelete="CASCADE"
        )


def link_each_message_to_the_one_before() -> None:
    op.execute(
        sa.text(
            "UPDATE messages SET parent_id = ("
            " SELECT previous.id FROM messages AS previous"
            " WHERE previous.conversation_id = messages.conversation_id AND previous.seq < messages.seq"
            " ORDER BY previous.seq DESC LIMIT 1)"
        )
    )


def drop_the_temporary_default() -> None:
    # the application always says which version is active; the default only filled old rows
    with op.batch_alter_table("messages") as batch:
        batch.alter_column("active", existing_type=sa.Boolean(), existing_nullable=False, server_default=None)
    op.create_index("ix_messages_parent", "messages", ["parent_id"])


def create_ratings() -> None:
    op.create_table(
        "ratings",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.Integer(), sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("comment", sa.String(200), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("message_id", "user_id", name="uq_ratings_message_user"),
    )


def upgrade() -> None:
    add_parent_and_active_columns()
    link_each_message_to_the_one_before()
    drop_the_temporary_default()
    create_ratings()


def refuse_if_anything_would_be_lost() -> None:
    connection = op.get_bind()
    ratings = connection.execute(sa.text("SELECT COUNT(*) FROM ratings")).scalar() or 0
    versions = connection.execute(sa.text("SELECT COUNT(*) FROM messages WHERE NOT active")).scalar() or 0
    branching = connection.execute(
        sa.text(
            "SELECT COUNT(*) FROM (SELECT conversation_id, parent_id FROM messages"
            " GROUP BY conversation_id, parent_id HAVING COUNT(*) > 1) AS groups"
        )
    ).scalar() or 0
    if ratings or versions or branching:
        raise RuntimeError(
            f"Refusing to downgrade below 0003: {ratings} rating(s) and {versions + branching} extra message "
            "version(s) exist, and the older schema cannot hold them. Export the chats "
            "(python -m app export --all-users --format json --token-ids) and keep this version."
        )


def downgrade() -> None:
    refuse_if_anything_would_be_lost()
    op.drop_table("ratings")
    op.drop_index("ix_messages_parent", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_constraint("fk_messages_parent_id_messages", type_="foreignkey")
        batch.drop_column("active")
        batch.drop_column("parent_id")
