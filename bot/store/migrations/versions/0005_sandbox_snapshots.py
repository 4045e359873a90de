"""sandbox snapshots move off the session rows into the sandbox layer's own table

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

The column is dropped in place (`recreate="never"`; SQLite has had ALTER TABLE ... DROP COLUMN
since 3.35): recreating `sessions` on SQLite would drop the old table with foreign keys on, and
that cascades into `turns`.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sandbox_snapshots",
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("image", sa.String(length=300), nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("session_id"),
    )
    op.execute(
        "INSERT INTO sandbox_snapshots (session_id, image, repo, updated_at) "
        "SELECT id, snapshot_image, COALESCE(repo, ''), COALESCE(updated_at, CURRENT_TIMESTAMP) "
        "FROM sessions WHERE snapshot_image IS NOT NULL"
    )
    with op.batch_alter_table("sessions", recreate="never") as batch:
        batch.drop_column("snapshot_image")


def downgrade() -> None:
    with op.batch_alter_table("sessions", recreate="never") as batch:
        batch.add_column(sa.Column("snapshot_image", sa.String(length=300), nullable=True))
    op.execute(
        "UPDATE sessions SET snapshot_image = "
        "(SELECT image FROM sandbox_snapshots WHERE sandbox_snapshots.session_id = sessions.id)"
    )
    op.drop_table("sandbox_snapshots")
