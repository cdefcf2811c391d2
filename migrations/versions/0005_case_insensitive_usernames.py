"""Make user names unique whatever their case or width: add users.username_key.

``username`` was unique byte for byte, so "Admin" and "ADMIN" could be created next to
"admin" (and look like the admin to everyone). ``username_key`` holds the name as
compared (Unicode NFKC, casefold, NFKC) and is unique; logins look names up by it.

Existing rows get their key. If earlier names already clash, the oldest keeps the
plain key and the others get ``key#id``: no account is lost, each still logs in with
its exact name, and no new clash can be made.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def username_key(username: str) -> str:
    # a copy of storage.repository.username_key as of this revision (a migration must not change later)
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username.strip()).casefold())


def add_username_key() -> None:
    # a plain ADD COLUMN (no table copy: on SQLite, copying users would cascade into their chats);
    # NOT NULL needs a default for the rows already there, which get their real key below
    op.add_column("users", sa.Column("username_key", sa.String(80), nullable=False, server_default=""))
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("username", sa.String),
                     sa.column("username_key", sa.String))
    bind = op.get_bind()
    taken: set[str] = set()
    for user_id, username in bind.execute(sa.select(users.c.id, users.c.username).order_by(users.c.id)).all():
        key = username_key(username)
        if key in taken:
            key = f"{key}#{user_id}"
        taken.add(key)
        bind.execute(sa.update(users).where(users.c.id == user_id).values(username_key=key))
    op.create_index("ix_users_username_key", "users", ["username_key"], unique=True)


def upgrade() -> None:
    add_username_key()


def downgrade() -> None:
    op.drop_index("ix_users_username_key", table_name="users")
    op.drop_column("users", "username_key")
