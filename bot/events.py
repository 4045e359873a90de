"""The session event contract: every kind of event a session's log holds, one typed model each.

The log is the source of truth for every client (Slack, the web page, stats), so this module is
the one place that says what an event means. Payloads are validated when appended; when read,
old shapes are upgraded (`_UPGRADES`) and unknown or malformed events are skipped with a warning,
never a crash. It sits below every layer that emits or reads events (agent, sessions, clients).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

log = logging.getLogger(__name__)

VERSION = 2
"""Version of the payload shapes below; a stored event without `v` is version 1."""


class Origin(StrEnum):
    """Where a request came from; the session row keeps its origin, prompts keep theirs."""

    SLACK_THREAD = "slack_thread"
    SLACK_DM = "slack_dm"
    WEB = "web"
    APP_HOME = "app_home"
    SHORTCUT = "shortcut"
    PARENT_SESSION = "parent_session"
    GITHUB = "github"

    @classmethod
    def parse(cls, value: str | None) -> Origin:
        """A stored origin; `slack` (and anything unknown) is what rows before version 2 say."""
        try:
            return cls(value or "slack")
        except ValueError:
            return cls.SLACK_THREAD


class Outcome(StrEnum):
    DONE = "done"
    STOPPED = "stopped"
    ERROR = "error"
    INTERRUPTED = "interrupted"


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Author(_Payload):
    """Who asked: an id in the origin's namespace (a Slack user id) and how to show them."""

    id: str = Field(min_length=1, max_length=128)
    name: str | None = None
    email: str | None = None
    origin: Origin = Origin.SLACK_THREAD
    team: str | None = None
    """The author's own workspace or organisation as the surface reported it (Slack's `user_team`)."""

    @property
    def handle(self) -> str:
        """How text addressed to people names this author: a Slack mention for Slack ids, else the name."""
        if self.origin in SLACK_ORIGINS or (self.origin in SLACK_ID_ORIGINS and _SLACK_USER_ID.match(self.id)):
            return f"<@{self.id}>"
        return self.name or self.id


SLACK_ORIGINS = frozenset({Origin.SLACK_THREAD, Origin.SLACK_DM, Origin.APP_HOME, Origin.SHORTCUT})
"""Origins in Slack itself."""
SLACK_ID_ORIGINS = SLACK_ORIGINS | {Origin.WEB, Origin.GITHUB, Origin.PARENT_SESSION}
"""Origins whose author ids are Slack user ids: people sign in to the web with Slack, a GitHub
comment speaks for the Slack account linked to its author (unlinked authors are not let in), and a
sub-session's prompts speak for the person who prompted its parent."""
_SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")


class PromptQueued(_Payload):
    kind: Literal["prompt_queued"] = "prompt_queued"
    prompt_id: int
    text: str
    author: Author
    queued_ahead: int = 0


class TurnStarted(_Payload):
    kind: Literal["turn_started"] = "turn_started"
    prompt_id: int
    text: str
    author: Author


class TextDelta(_Payload):
    kind: Literal["text_delta"] = "text_delta"
    text: str


class ToolCallSpec(_Payload):
    id: str
    name: str
    arguments: str = ""


class AssistantMessage(_Payload):
    """One finished (or cut) model step, as the model's conversation needs it again."""

    kind: Literal["assistant_message"] = "assistant_message"
    content: str = ""
    tool_calls: list[ToolCallSpec] = Field(default_factory=list)
    complete: bool = True


class ToolCalled(_Payload):
    kind: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    arguments: str = ""


class ToolResult(_Payload):
    kind: Literal["tool_result"] = "tool_result"
    id: str
    name: str
    ok: bool
    output: str


class FileChanged(_Payload):
    kind: Literal["file_changed"] = "file_changed"
    path: str
    action: str
    diff: str | None = None
    """The file's `git diff` against the last commit after the change (capped), when it could be read."""


class Note(_Payload):
    """A milestone the agent posts to the people following the session."""

    kind: Literal["note"] = "note"
    text: str


class TurnEnded(_Payload):
    """A turn is over: done, stopped (by whom), failed (error) or interrupted by a restart."""

    kind: Literal["turn_ended"] = "turn_ended"
    prompt_id: int
    outcome: Outcome
    error: str | None = None
    by: str | None = None
    first_token_ms: float | None = None
    duration_ms: float | None = None


class QueueChanged(_Payload):
    """The queue of waiting prompts changed other than by a prompt queued or started (a clear)."""

    kind: Literal["queue_changed"] = "queue_changed"
    queued: int
    cleared: int = 0
    by: str | None = None


class Status(_Payload):
    """The session started working (a prompt arrived) or went idle (its queue is empty).

    Followers of a working period stop at `idle`."""

    kind: Literal["status"] = "status"
    state: Literal["working", "idle"]


class SandboxReady(_Payload):
    kind: Literal["sandbox_ready"] = "sandbox_ready"
    source: str
    """pool, snapshot, image or build."""
    wait_ms: float | None = None
    """How long the turn waited for it (0 when a warm-up had it ready)."""
    warm_up: str | None = None
    """The trigger of the warm-up that prepared it ahead of the turn (e.g. `web`), if one did."""
    saved_ms: float | None = None
    """How much of the sandbox's preparation the warm-up took off the turn's wait."""


class WarmUp(_Payload):
    """Someone looked about to prompt (typing in the web box): the session's sandbox is prepared now."""

    kind: Literal["warm_up"] = "warm_up"
    trigger: str
    """Where it came from: `web` (the prompt box), later App Home, the agent pane, ..."""
    repo: str
    action: str
    """`started` (its sandbox is being prepared), `ready` (it already was) or `pool` (a warm container asked for)."""


class GitSynced(_Payload):
    kind: Literal["git_synced"] = "git_synced"
    branch: str
    note: str | None = None


class ErrorRaised(_Payload):
    """Something went wrong outside a turn's own outcome (e.g. the sandbox could not start)."""

    kind: Literal["error"] = "error"
    message: str


class Egress(_Payload):
    """A connection the sandbox made through the egress proxy: allowed or refused, and how much moved."""

    kind: Literal["egress"] = "egress"
    host: str
    port: int
    allowed: bool
    reason: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    duration_ms: float = 0.0


class ParticipantsAdded(_Payload):
    """The session's starter added people who may prompt it (SESSION_PROMPTERS=participants)."""

    kind: Literal["participants_added"] = "participants_added"
    people: list[str]
    by: str


class Overheard(_Payload):
    """A reply in the session's thread between people (it names someone else, not the bot): context for
    the agent's next turn, never a prompt and never instructions."""

    kind: Literal["overheard"] = "overheard"
    author: Author
    text: str


class ContextCompacted(_Payload):
    """The model's view of the session was shrunk to fit its context window (the log keeps everything):
    these tool results are shown as stubs from now on, and the first `turns` turns as one summary."""

    kind: Literal["context_compacted"] = "context_compacted"
    stubbed: list[str] = []
    """Tool call ids whose results the model now sees as a stub."""
    turns: int = 0
    """How many turns, from the first, the summary replaces (0: no summary)."""
    summary: str = ""
    """What the fast model wrote of those turns (the prompts themselves are kept verbatim)."""
    tokens_before: int = 0
    tokens_after: int = 0
    window: int = 0


class ModelCall(_Payload):
    """One model request of a turn: its tokens (as the server reported them, or estimated), cost, time."""

    kind: Literal["model_call"] = "model_call"
    model: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    """The server sent no usage: the counts are estimated from the text (about 4 characters a token)."""
    cost_usd: float | None = None
    """From MODEL_PRICES; None for a model without a price."""
    duration_ms: float = 0.0


class PullRequest(_Payload):
    """The session's pull request moved: opened, pushed to, reviewed, commented on, merged, closed."""

    kind: Literal["pull_request"] = "pull_request"
    repo: str
    number: int
    url: str
    action: str
    """opened, pushed, approved, changes_requested, commented, merged, closed, reopened."""
    by: str | None = None
    """Who: a Slack id for what the session did (opened, pushed), a GitHub login for what happened on GitHub."""
    as_app: bool = False
    """Opened as the GitHub App (the person had no linked account)."""
    text: str | None = None
    """A comment's text, or what a push added."""


class ChildSession(_Payload):
    """On a parent: one of its sub-sessions was started or changed (working, idle, a turn's outcome,
    its pull request). Who it is comes every time; a field left out (None) is unchanged."""

    kind: Literal["child_session"] = "child_session"
    child_id: str
    share_token: str | None = None
    title: str | None = None
    repo: str | None = None
    state: Literal["working", "idle"] | None = None
    outcome: Outcome | None = None
    """Of its latest finished turn."""
    error: str | None = None
    """What went wrong in its latest turn, if it failed."""
    pr_number: int | None = None
    pr_url: str | None = None
    pr_state: str | None = None
    """open, merged or closed."""


EventData = Annotated[
    PromptQueued | TurnStarted | TextDelta | AssistantMessage | ToolCalled | ToolResult | FileChanged | Note
    | TurnEnded | QueueChanged | Status | SandboxReady | GitSynced | ErrorRaised | Egress | ParticipantsAdded | WarmUp
    | PullRequest | ModelCall | ChildSession | Overheard | ContextCompacted,
    Field(discriminator="kind"),
]
_adapter: TypeAdapter[EventData] = TypeAdapter(EventData)
KINDS: frozenset[str] = frozenset(
    m.model_fields["kind"].default
    for m in (PromptQueued, TurnStarted, TextDelta, AssistantMessage, ToolCalled, ToolResult, FileChanged, Note,
              TurnEnded, QueueChanged, Status, SandboxReady, GitSynced, ErrorRaised, Egress, ParticipantsAdded,
              WarmUp, PullRequest, ModelCall, ChildSession, Overheard, ContextCompacted)
)


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a session's log: its place (seq), time, the turn (prompt id) it belongs to."""

    seq: int
    ts: float
    turn: int | None
    data: EventData

    @property
    def kind(self) -> str:
        return self.data.kind


def dump(data: EventData) -> dict[str, Any]:
    """The stored form of a payload (without `kind`, which has its own column), with its version."""
    return {**data.model_dump(mode="json", exclude={"kind"}, exclude_none=True), "v": VERSION}


def load(kind: str, raw: dict[str, Any]) -> EventData | None:
    """The typed payload of a stored event, or None (logged) when it is unknown or malformed."""
    version = raw.get("v", 1)
    if not isinstance(version, int):
        log.warning("skipping a %s event with a malformed version %r", kind, version)
        return None
    if kind in _UPGRADES and version < VERSION:
        try:
            kind, raw = _UPGRADES[kind](raw)
        except (TypeError, ValueError, AttributeError):
            log.warning("skipping a malformed %s event (version %s)", kind, version)
            return None
    if kind not in KINDS:
        log.warning("skipping an event of unknown kind %r (version %s)", kind, version)
        return None
    try:
        return _adapter.validate_python({**raw, "kind": kind})
    except ValidationError as exc:
        log.warning("skipping a malformed %s event: %s", kind, exc.errors()[0].get("msg"))
        return None


# -- version 1 → 2 --------------------------------------------------------------------------


def _v1_author(raw: dict[str, Any]) -> dict[str, Any]:
    author = dict(raw.get("author") or {})
    if author.pop("source", "slack") == "slack":
        author["origin"] = Origin.SLACK_THREAD.value
    return {**raw, "author": author}


def _v1_queue_cleared(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "queue_changed", {"queued": 0, "cleared": raw.get("count", 0), "by": raw.get("by")}


_UPGRADES: dict[str, Any] = {
    "prompt_queued": lambda raw: ("prompt_queued", _v1_author(raw)),
    "turn_started": lambda raw: ("turn_started", _v1_author(raw)),
    "queue_cleared": _v1_queue_cleared,
    "session_idle": lambda raw: ("status", {"state": "idle"}),
}
