"""linked GitHub accounts, sessions' pull requests, handled webhook deliveries

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "github_accounts",
        sa.Column("user_id", sa.String(length=128), primary_key=True),
        sa.Column("github_id", sa.Integer(), nullable=False),
        sa.Column("login", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("access_token", sa.Text(), nullable=False),
        sa.Column("access_expires_at", sa.Float(), nullable=True),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("refresh_expires_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "pull_requests",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(length=32), sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=500), nullable=False),
        sa.Column("branch", sa.String(length=255), nullable=False),
        sa.Column("author", sa.String(length=128), nullable=False),
        sa.Column("opened_as", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("gh_updated_at", sa.String(length=32), nullable=True),
        sa.Column("approvals", sa.Integer(), nullable=False),
        sa.Column("changes_requested", sa.Integer(), nullable=False),
        sa.Column("first_review_at", sa.Float(), nullable=True),
        sa.Column("pushes_after_review", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("merged_at", sa.Float(), nullable=True),
        sa.Column("closed_at", sa.Float(), nullable=True),
        sa.UniqueConstraint("repo", "number", name="uq_pull_requests_repo_number"),
    )
    op.create_index("ix_pull_requests_session", "pull_requests", ["session_id"])
    op.create_table(
        "github_deliveries",
        sa.Column("delivery_id", sa.String(length=64), primary_key=True),
        sa.Column("received_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_github_deliveries_received_at", "github_deliveries", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_github_deliveries_received_at", table_name="github_deliveries")
    op.drop_table("github_deliveries")
    op.drop_index("ix_pull_requests_session", table_name="pull_requests")
    op.drop_table("pull_requests")
    op.drop_table("github_accounts")
