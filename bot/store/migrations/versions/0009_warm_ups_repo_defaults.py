"""warm-ups and whether sessions used them; places' default repositories

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "repo_defaults",
        sa.Column("place", sa.String(length=200), primary_key=True),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("set_by", sa.String(length=128), nullable=False),
        sa.Column("set_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "warm_ups",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=True),
        sa.Column("used", sa.Boolean(), nullable=True),
        sa.Column("saved_ms", sa.Float(), nullable=True),
    )
    op.create_index("ix_warm_ups_user_repo", "warm_ups", ["user_id", "repo", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_warm_ups_user_repo", table_name="warm_ups")
    op.drop_table("warm_ups")
    op.drop_table("repo_defaults")
