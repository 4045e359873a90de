"""images and snapshots are recorded per Docker engine; warm pool entries name the instance whose they are

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", recreate="never") as batch:
        batch.add_column(sa.Column("engine", sa.String(length=100), nullable=True))
    with op.batch_alter_table("pool_entries", recreate="never") as batch:
        batch.add_column(sa.Column("instance", sa.String(length=64), nullable=True))
    with op.batch_alter_table("sandbox_snapshots", recreate="never") as batch:
        batch.add_column(sa.Column("engine", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandbox_snapshots", recreate="never") as batch:
        batch.drop_column("engine")
    with op.batch_alter_table("pool_entries", recreate="never") as batch:
        batch.drop_column("instance")
    with op.batch_alter_table("images", recreate="never") as batch:
        batch.drop_column("engine")
