"""session participants (who may prompt when SESSION_PROMPTERS=participants); held requests keep their channel

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_participants",
        sa.Column("session_id", sa.String(length=32), sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("added_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", "user_id"),
    )
    with op.batch_alter_table("pending_requests", recreate="never") as batch:
        batch.add_column(sa.Column("channel_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("channel_name", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pending_requests", recreate="never") as batch:
        batch.drop_column("channel_name")
        batch.drop_column("channel_id")
    op.drop_table("session_participants")
