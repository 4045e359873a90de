"""images, pool entries, session snapshots

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("snapshot_image", sa.String(length=300), nullable=True))
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("tag", sa.String(length=300), nullable=True),
        sa.Column("commit", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("log", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tag"),
    )
    op.create_index("ix_images_repo", "images", ["repo", "status"])
    op.create_table(
        "pool_entries",
        sa.Column("container_id", sa.String(length=80), nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("image", sa.String(length=300), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("container_id"),
    )
    op.create_index("ix_pool_repo_status", "pool_entries", ["repo", "status"])


def downgrade() -> None:
    op.drop_index("ix_pool_repo_status", table_name="pool_entries")
    op.drop_table("pool_entries")
    op.drop_index("ix_images_repo", table_name="images")
    op.drop_table("images")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("snapshot_image")
