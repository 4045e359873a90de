"""turns keep their infrastructure time, tokens and cost; a log of when people prompted

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns", recreate="never") as batch:
        batch.add_column(sa.Column("request_ms", sa.Float(), nullable=True))
        batch.add_column(sa.Column("tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cost_usd", sa.Float(), nullable=True))
    op.create_table(
        "prompt_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("author", sa.String(length=128), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_prompt_log_at", "prompt_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_prompt_log_at", table_name="prompt_log")
    op.drop_table("prompt_log")
    with op.batch_alter_table("turns", recreate="never") as batch:
        batch.drop_column("cost_usd")
        batch.drop_column("tokens")
        batch.drop_column("request_ms")
