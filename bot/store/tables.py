"""Central database tables (SQLAlchemy 2). Alembic migrations in `migrations/` must match these."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class SessionRow(Base):
    """The index of sessions; each session's events live in its own SQLite file.

    A session knows where it came from (`origin`), not how a client shows it: the places it
    is bound to (a Slack thread, later a web page) are its surfaces."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_status", "status"), Index("ix_sessions_creator_created", "creator", "created_at"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    share_token: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    """`working` while prompts are queued or running, else `idle`; restart recovery reads it."""
    repo: Mapped[str | None] = mapped_column(String(200))
    base_branch: Mapped[str | None] = mapped_column(String(200))
    work_branch: Mapped[str | None] = mapped_column(String(200))
    origin: Mapped[str] = mapped_column(String(16))
    """A `bot.events.Origin`: slack_thread, slack_dm, web, app_home, shortcut, parent_session, github."""
    creator: Mapped[str | None] = mapped_column(String(64))
    title: Mapped[str | None] = mapped_column(String(200))
    """The start of the first prompt, for lists."""
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("sessions.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ParticipantRow(Base):
    """Someone the session's starter added: with SESSION_PROMPTERS=participants, they may prompt it too."""

    __tablename__ = "session_participants"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    added_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SurfaceRow(Base):
    """A place a session is bound to, e.g. `slack_thread` + `C123:1700000000.000100`; one session per place."""

    __tablename__ = "session_surfaces"
    __table_args__ = (
        UniqueConstraint("kind", "key", name="uq_session_surfaces_kind_key"),
        Index("ix_session_surfaces_session", "session_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SlackEventRow(Base):
    """Slack deliveries already handled; Slack redelivers, and a mention arrives as two events."""

    __tablename__ = "slack_events"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    received_at: Mapped[float] = mapped_column(Float, index=True)


class TurnRow(Base):
    """One agent turn, for metrics (time to first model token, outcome)."""

    __tablename__ = "turns"
    __table_args__ = (Index("ix_turns_session", "session_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    prompt_id: Mapped[int] = mapped_column(Integer)
    author: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)
    first_token_ms: Mapped[float | None] = mapped_column(Float)
    request_ms: Mapped[float | None] = mapped_column(Float)
    """From the turn's start to its first model request: the infrastructure's part of the first token."""
    outcome: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    """Of the calls with a price (MODEL_PRICES); None when none had one."""


class ImageRow(Base):
    """A repo's sandbox image build: clone at a commit, setup, warm-up, committed."""

    __tablename__ = "images"
    __table_args__ = (Index("ix_images_repo", "repo", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repo: Mapped[str] = mapped_column(String(200))
    tag: Mapped[str | None] = mapped_column(String(300), unique=True)
    commit: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    """`building`, `ready`, `failed` or `pruned`."""
    started_at: Mapped[float] = mapped_column(Float)
    duration_s: Mapped[float | None] = mapped_column(Float)
    log: Mapped[str] = mapped_column(Text, default="")
    engine: Mapped[str | None] = mapped_column(String(100))
    """The Docker engine the image is in (`docker info` ID): each engine builds its own. None: an
    older build, claimed by the first engine that has its tag."""


class PoolEntryRow(Base):
    """A started, generic container of a repo's image, waiting to be claimed by a session."""

    __tablename__ = "pool_entries"
    __table_args__ = (Index("ix_pool_repo_status", "repo", "status"),)

    container_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    repo: Mapped[str] = mapped_column(String(200))
    image: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16))
    """`warm` or `claimed`."""
    session_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)
    instance: Mapped[str | None] = mapped_column(String(64))
    """The instance whose warm container it is (None: an older version's)."""


class SandboxSnapshotRow(Base):
    """The sandbox layer's record of a session's workspace image as of its last finished turn."""

    __tablename__ = "sandbox_snapshots"

    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    image: Mapped[str] = mapped_column(String(300))
    repo: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    """When the snapshot was taken; snapshots untouched past the retention are collected."""
    engine: Mapped[str | None] = mapped_column(String(100))
    """The Docker engine whose store holds the image (None: recorded before engines were)."""


class PendingRequestRow(Base):
    """A request held until someone picks its repository (the classifier could not tell)."""

    __tablename__ = "pending_requests"
    __table_args__ = (Index("ix_pending_status", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    origin: Mapped[str] = mapped_column(String(16))
    author_id: Mapped[str] = mapped_column(String(128))
    author_name: Mapped[str | None] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    surface_kind: Mapped[str | None] = mapped_column(String(32))
    surface_key: Mapped[str | None] = mapped_column(String(200))
    """Where the session goes once a repository is picked (e.g. the Slack thread)."""
    channel_id: Mapped[str | None] = mapped_column(String(64))
    channel_name: Mapped[str | None] = mapped_column(String(200))
    """Where it was asked: a pick is checked against the repositories allowed there."""
    order_key: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    """`waiting`, `started` or `expired`."""
    ui_ref: Mapped[str | None] = mapped_column(String(64))
    """What the surface showed to ask (e.g. the ts of the Slack message with the select)."""
    repo: Mapped[str | None] = mapped_column(String(200))
    picked_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)


class SignInLinkRow(Base):
    """A personal, single-use web sign-in link (from the App Home); only its token's hash is kept."""

    __tablename__ = "signin_links"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(200))
    team: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    used_at: Mapped[float | None] = mapped_column(Float)


class GitHubAccountRow(Base):
    """A person's linked GitHub account: who they are there, and their user tokens, encrypted."""

    __tablename__ = "github_accounts"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    """The person's id where they signed in (their Slack user id)."""
    github_id: Mapped[int] = mapped_column(Integer)
    login: Mapped[str] = mapped_column(String(100))
    name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    access_token: Mapped[str] = mapped_column(Text)
    """Encrypted (bot/github/crypto.py), as is the refresh token."""
    access_expires_at: Mapped[float | None] = mapped_column(Float)
    refresh_token: Mapped[str | None] = mapped_column(Text)
    refresh_expires_at: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class PullRequestRow(Base):
    """A session's pull request and where it stands, moved forward by GitHub's webhooks."""

    __tablename__ = "pull_requests"
    __table_args__ = (UniqueConstraint("repo", "number", name="uq_pull_requests_repo_number"),
                      Index("ix_pull_requests_session", "session_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    repo: Mapped[str] = mapped_column(String(200))
    number: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(String(500))
    branch: Mapped[str] = mapped_column(String(255))
    author: Mapped[str] = mapped_column(String(128))
    """Who asked for it (their Slack id)."""
    opened_as: Mapped[str] = mapped_column(String(16))
    """`user` (with the person's own token) or `app` (as the GitHub App, marked as such)."""
    state: Mapped[str] = mapped_column(String(16))
    """`open`, `closed` or `merged`."""
    gh_updated_at: Mapped[str | None] = mapped_column(String(32))
    """GitHub's `updated_at` of the last event applied: older deliveries change nothing."""
    approvals: Mapped[int] = mapped_column(Integer, default=0)
    changes_requested: Mapped[int] = mapped_column(Integer, default=0)
    first_review_at: Mapped[float | None] = mapped_column(Float)
    pushes_after_review: Mapped[int] = mapped_column(Integer, default=0)
    """Revisions: pushes after the first review."""
    created_at: Mapped[float] = mapped_column(Float)
    merged_at: Mapped[float | None] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float)


class GitHubDeliveryRow(Base):
    """Webhook deliveries already handled (`X-GitHub-Delivery`): GitHub redelivers."""

    __tablename__ = "github_deliveries"

    delivery_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    received_at: Mapped[float] = mapped_column(Float, index=True)


class RepoDefaultRow(Base):
    """The repository a place defaults to (`@bot set repo owner/repo` in a Slack channel)."""

    __tablename__ = "repo_defaults"

    place: Mapped[str] = mapped_column(String(200), primary_key=True)
    """e.g. `slack:C0123`."""
    repo: Mapped[str] = mapped_column(String(200))
    set_by: Mapped[str] = mapped_column(String(128))
    set_at: Mapped[float] = mapped_column(Float)


class WarmUpRow(Base):
    """A warm-up asked for ahead of a session (someone typing, opening the agent pane, a guess),
    and whether the session that followed used it."""

    __tablename__ = "warm_ups"
    __table_args__ = (Index("ix_warm_ups_user_repo", "user_id", "repo", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trigger: Mapped[str] = mapped_column(String(32))
    """`web`, `app_home`, `agent_pane`, `channel_guess`."""
    repo: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)
    session_id: Mapped[str | None] = mapped_column(String(32))
    used: Mapped[bool | None] = mapped_column(Boolean)
    """None until a session followed (or the warm container expired: False)."""
    saved_ms: Mapped[float | None] = mapped_column(Float)


class PromptRow(Base):
    """When each person sent a prompt (for "humans prompting" and per-person figures)."""

    __tablename__ = "prompt_log"
    __table_args__ = (Index("ix_prompt_log_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(32))
    author: Mapped[str] = mapped_column(String(128))
    origin: Mapped[str] = mapped_column(String(16))
    at: Mapped[float] = mapped_column(Float)


# -- several instances on PostgreSQL (bot/sessions/cluster.py, bot/sessions/shared_log.py) ---------
# Created everywhere by the migrations; used only when DATABASE_URL is PostgreSQL.


class InstanceRow(Base):
    """A running `hosted-agents serve`: alive while `expires_at` is in the future (its heartbeat)."""

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SessionLeaseRow(Base):
    """Which instance drives a session; valid while that instance's row has not expired."""

    __tablename__ = "session_leases"
    __table_args__ = (Index("ix_session_leases_owner", "owner"),)

    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SessionEventRow(Base):
    """A session's event log, appended in seq order by its owner (the web and Slack of every instance read it)."""

    __tablename__ = "session_events"

    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(64))
    turn: Mapped[int | None] = mapped_column(BigInteger)
    data: Mapped[str] = mapped_column(Text)


class SessionPromptRow(Base):
    """A session's prompt queue: any instance adds a prompt (`inbox`); the owner claims and runs it."""

    __tablename__ = "session_prompts"
    __table_args__ = (Index("ix_session_prompts_session_status", "session_id", "status"),
                      Index("ix_session_prompts_author_created", "author_id", "created_at"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(32))
    order_key: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)
    author_id: Mapped[str] = mapped_column(String(128))
    author_name: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)


class SessionRefRow(Base):
    """Small values a surface keeps with a session (a Slack message ts), so a new owner finds them."""

    __tablename__ = "session_refs"

    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SessionCommandRow(Base):
    """What another instance asks a session's owner to do (stop, clear the queue, log an event)."""

    __tablename__ = "session_commands"
    __table_args__ = (Index("ix_session_commands_owner", "owner"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)


class JobRunRow(Base):
    """When a scheduled job last ran anywhere: N instances run each housekeeping job once per interval."""

    __tablename__ = "job_runs"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WorkspaceStateRow(Base):
    """A session's work as of its last turn, as text: the commit it started from and one binary git
    patch (commits, edits and untracked files). A new owner on another host restores from it."""

    __tablename__ = "workspace_states"

    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    repo: Mapped[str] = mapped_column(String(200))
    base_commit: Mapped[str] = mapped_column(String(64))
    start_tree: Mapped[str] = mapped_column(String(64))
    patch: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
