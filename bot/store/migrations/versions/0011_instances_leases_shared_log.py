"""several instances on PostgreSQL: instances, session leases, the shared event log, prompt queue,
refs and commands, scheduled job runs, workspace states

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "session_leases",
        sa.Column("session_id", sa.String(length=32), primary_key=True),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_session_leases_owner", "session_leases", ["owner"])
    op.create_table(
        "session_events",
        sa.Column("session_id", sa.String(length=32), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("turn", sa.BigInteger(), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
    )
    op.create_table(
        "session_prompts",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("order_key", sa.Float(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("author_id", sa.String(length=128), nullable=False),
        sa.Column("author_name", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_session_prompts_session_status", "session_prompts", ["session_id", "status"])
    op.create_index("ix_session_prompts_author_created", "session_prompts", ["author_id", "created_at"])
    op.create_table(
        "session_refs",
        sa.Column("session_id", sa.String(length=32), primary_key=True),
        sa.Column("key", sa.String(length=200), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_table(
        "session_commands",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
    )
    op.create_index("ix_session_commands_owner", "session_commands", ["owner"])
    op.create_table(
        "workspace_states",
        sa.Column("session_id", sa.String(length=32), primary_key=True),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("base_commit", sa.String(length=64), nullable=False),
        sa.Column("start_tree", sa.String(length=64), nullable=False),
        sa.Column("patch", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "job_runs",
        sa.Column("name", sa.String(length=200), primary_key=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_runs")
    op.drop_table("workspace_states")
    op.drop_index("ix_session_commands_owner", table_name="session_commands")
    op.drop_table("session_commands")
    op.drop_table("session_refs")
    op.drop_index("ix_session_prompts_author_created", table_name="session_prompts")
    op.drop_index("ix_session_prompts_session_status", table_name="session_prompts")
    op.drop_table("session_prompts")
    op.drop_table("session_events")
    op.drop_index("ix_session_leases_owner", table_name="session_leases")
    op.drop_table("session_leases")
    op.drop_table("instances")
