"""sessions bound to surfaces instead of Slack columns; origin-neutral held requests

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _colon(column: str) -> str:
    """Where the first ':' of a column is, in this database's dialect."""
    return f"instr({column}, ':')" if op.get_bind().dialect.name == "sqlite" else f"strpos({column}, ':')"


def _ts_text(column: str) -> str:
    """A float column as a Slack ts (six decimals)."""
    if op.get_bind().dialect.name == "sqlite":
        return f"printf('%.6f', {column})"
    return f"round(CAST({column} AS numeric), 6)::text"


def upgrade() -> None:
    op.create_table(
        "session_surfaces",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "key", name="uq_session_surfaces_kind_key"),
    )
    op.create_index("ix_session_surfaces_session", "session_surfaces", ["session_id"])
    op.execute(
        "INSERT INTO session_surfaces (session_id, kind, key, created_at)"
        " SELECT id, 'slack_thread', slack_channel || ':' || slack_thread_ts, created_at FROM sessions"
        " WHERE slack_channel IS NOT NULL AND slack_thread_ts IS NOT NULL"
    )
    op.execute("UPDATE sessions SET origin = CASE WHEN slack_channel LIKE 'D%' THEN 'slack_dm' ELSE 'slack_thread' END"
               " WHERE origin = 'slack'")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_constraint("uq_sessions_slack_thread", type_="unique")
        batch.drop_column("slack_channel")
        batch.drop_column("slack_thread_ts")

    with op.batch_alter_table("pending_requests") as batch:
        batch.add_column(sa.Column("origin", sa.String(length=16), nullable=False, server_default="slack_thread"))
        batch.add_column(sa.Column("author_name", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("surface_kind", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("surface_key", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("order_key", sa.Float(), nullable=True))
        batch.alter_column("user", new_column_name="author_id", existing_type=sa.String(length=64), type_=sa.String(length=128))
        batch.alter_column("prompt_ts", new_column_name="ui_ref", existing_type=sa.String(length=32), type_=sa.String(length=64))
        batch.alter_column("picked_by", existing_type=sa.String(length=64), type_=sa.String(length=128))
    op.execute("UPDATE pending_requests SET surface_kind = 'slack_thread', surface_key = channel || ':' || thread_ts,"
               " order_key = CAST(message_ts AS FLOAT)")
    with op.batch_alter_table("pending_requests") as batch:
        batch.alter_column("origin", server_default=None, existing_type=sa.String(length=16))
        batch.drop_column("channel")
        batch.drop_column("thread_ts")
        batch.drop_column("message_ts")


def downgrade() -> None:
    with op.batch_alter_table("pending_requests") as batch:
        batch.add_column(sa.Column("channel", sa.String(length=32), nullable=False, server_default=""))
        batch.add_column(sa.Column("thread_ts", sa.String(length=32), nullable=False, server_default=""))
        batch.add_column(sa.Column("message_ts", sa.String(length=32), nullable=False, server_default=""))
    at = _colon("surface_key")
    op.execute(f"UPDATE pending_requests SET channel = substr(surface_key, 1, {at} - 1),"
               f" thread_ts = substr(surface_key, {at} + 1), message_ts = {_ts_text('order_key')}"
               " WHERE surface_kind = 'slack_thread'")
    with op.batch_alter_table("pending_requests") as batch:
        for name in ("channel", "thread_ts", "message_ts"):
            batch.alter_column(name, server_default=None, existing_type=sa.String(length=32))
        batch.alter_column("author_id", new_column_name="user", existing_type=sa.String(length=128), type_=sa.String(length=64))
        batch.alter_column("ui_ref", new_column_name="prompt_ts", existing_type=sa.String(length=64), type_=sa.String(length=32))
        batch.alter_column("picked_by", existing_type=sa.String(length=128), type_=sa.String(length=64))
        for name in ("order_key", "surface_key", "surface_kind", "author_name", "origin"):
            batch.drop_column(name)

    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("slack_channel", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("slack_thread_ts", sa.String(length=32), nullable=True))
    at = _colon("key")
    op.execute(
        f"UPDATE sessions SET"
        f" slack_channel = (SELECT substr(key, 1, {at} - 1) FROM session_surfaces s"
        f"   WHERE s.session_id = sessions.id AND s.kind = 'slack_thread'),"
        f" slack_thread_ts = (SELECT substr(key, {at} + 1) FROM session_surfaces s"
        f"   WHERE s.session_id = sessions.id AND s.kind = 'slack_thread')"
    )
    op.execute("UPDATE sessions SET origin = 'slack' WHERE origin IN ('slack_thread', 'slack_dm')")
    with op.batch_alter_table("sessions") as batch:
        batch.create_unique_constraint("uq_sessions_slack_thread", ["slack_channel", "slack_thread_ts"])
    op.drop_index("ix_session_surfaces_session", table_name="session_surfaces")
    op.drop_table("session_surfaces")
