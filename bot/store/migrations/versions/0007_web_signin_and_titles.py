"""web sign-in links (single use, from the App Home); sessions keep a title for lists

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signin_links",
        sa.Column("token_hash", sa.String(length=64), primary_key=True),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("team", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_signin_links_expires_at", "signin_links", ["expires_at"])
    with op.batch_alter_table("sessions", recreate="never") as batch:
        batch.add_column(sa.Column("title", sa.String(length=200), nullable=True))
    op.create_index("ix_sessions_creator_created", "sessions", ["creator", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_creator_created", table_name="sessions")
    with op.batch_alter_table("sessions", recreate="never") as batch:
        batch.drop_column("title")
    op.drop_index("ix_signin_links_expires_at", table_name="signin_links")
    op.drop_table("signin_links")
