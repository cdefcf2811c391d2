"""Record on each message the model (and variant) that wrote it.

Until now a chat had one model (``conversations.model``); with several models offered
(``CHAT_MODELS``) a chat may continue with another one, so each message keeps its own:
``messages.model`` is the model whose weights wrote the reply (or whose tokenizer
encoded the tester's message) and ``messages.variant`` the variant of it, when one was
used (NULL otherwise). Every existing message gets its conversation's model, which is
exactly what wrote it; no variant existed before.

Plain ALTER TABLE ... ADD COLUMN (nullable, no batch copy: on SQLite a batch would copy
the table and dropping the old one would cascade into the ratings), then one UPDATE.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MODEL_NAME_MAX = 200  # storage.models.MODEL_NAME_MAX when this revision was written


def add_model_and_variant_columns() -> None:
    op.add_column("messages", sa.Column("model", sa.String(MODEL_NAME_MAX), nullable=True))
    op.add_column("messages", sa.Column("variant", sa.String(MODEL_NAME_MAX), nullable=True))


def fill_each_message_from_its_conversation() -> None:
    op.execute(
        "UPDATE messages SET model = "
        "(SELECT conversations.model FROM conversations WHERE conversations.id = messages.conversation_id)"
    )


def upgrade() -> None:
    add_model_and_variant_columns()
    fill_each_message_from_its_conversation()


def downgrade() -> None:
    # in place (SQLite 3.35+ drops an unindexed column without copying the table)
    op.drop_column("messages", "variant")
    op.drop_column("messages", "model")
