"""One projection of a session's events: the view every client renders (Slack, web, stats).

`SessionView.apply` folds events in log order; it is pure (no I/O), so a client can build a
view from a replay and keep it current from the live tail with the same code. Clients never
read the log's storage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from bot.events import (
    AssistantMessage,
    Author,
    ChildSession,
    ContextCompacted,
    Egress,
    ErrorRaised,
    Event,
    FileChanged,
    GitSynced,
    ModelCall,
    Note,
    Outcome,
    ParticipantsAdded,
    PromptQueued,
    PullRequest,
    QueueChanged,
    SandboxReady,
    Status,
    TextDelta,
    ToolCalled,
    ToolResult,
    TurnEnded,
    TurnStarted,
    WarmUp,
)


@dataclass
class ToolCallView:
    id: str
    name: str
    arguments: str
    ok: bool | None = None
    """None while it runs."""
    output: str | None = None
    seq: int = 0
    """The seq of its `tool_call` event: its anchor (`#e<seq>`) in the session page's trace."""
    cut: bool = False
    """It was still running when its turn ended."""


@dataclass
class Usage:
    """Model usage summed over calls: tokens, cost (of the calls with a price), time."""

    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    priced: bool = True
    """Every call had a price (else `cost_usd` covers only those that did)."""
    estimated: bool = False
    """Some counts were estimated (the server sent no usage)."""
    model_ms: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, call: ModelCall) -> None:
        self.calls += 1
        self.prompt_tokens += call.prompt_tokens
        self.cached_tokens += call.cached_tokens
        self.completion_tokens += call.completion_tokens
        self.model_ms += call.duration_ms
        self.estimated = self.estimated or call.estimated
        if call.cost_usd is None:
            self.priced = False
        else:
            self.cost_usd += call.cost_usd


@dataclass
class TurnView:
    """One prompt and what the agent did with it."""

    prompt_id: int
    author: Author
    prompt: str
    text: str = ""
    """The model's streamed answer so far (all steps)."""
    tools: list[ToolCallView] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    """Changed paths and what happened to them, in order of first change."""
    diffs: dict[str, str] = field(default_factory=dict)
    """The latest diff of each changed path, when the tool could read it."""
    settled: int = 0
    """How much of `text` belongs to finished model steps (the rest is still streaming)."""
    notes: list[str] = field(default_factory=list)
    outcome: Outcome | None = None
    error: str | None = None
    stopped_by: str | None = None
    first_token_ms: float | None = None
    duration_ms: float | None = None
    usage: Usage = field(default_factory=Usage)
    seq: int = 0
    """The seq of its `turn_started` event (the prompt's anchor in the trace)."""
    note_seqs: list[int] = field(default_factory=list)
    """The seq of each note, alongside `notes`."""
    end_seq: int | None = None
    """The seq of its `turn_ended` event (the outcome's anchor in the trace)."""

    @property
    def running(self) -> bool:
        return self.outcome is None

    @property
    def trace_seq(self) -> int | None:
        """Where a failed (or interrupted) turn failed, as an anchor in the session page's trace: the
        first tool that was still running when it ended, else its outcome line; None otherwise."""
        if self.outcome not in (Outcome.ERROR, Outcome.INTERRUPTED) or self.end_seq is None:
            return None
        unfinished = [t.seq for t in self.tools if t.cut and t.seq]
        return unfinished[0] if unfinished else self.end_seq

    @property
    def activity(self) -> str | None:
        """What the agent is doing right now, if it is running a tool."""
        running = [t.name for t in self.tools if t.ok is None]
        return f"Running {running[-1]}…" if running and self.running else None


@dataclass
class QueuedPrompt:
    prompt_id: int
    author: Author
    text: str


@dataclass
class EgressSummary:
    """Connections to one host:port through the egress proxy."""

    allowed: bool
    count: int = 0
    bytes: int = 0
    reason: str = ""


@dataclass
class PullRequestView:
    number: int
    url: str
    state: str
    """open, merged or closed."""
    approvals: int = 0


@dataclass
class ChildView:
    """A sub-session as its parent shows it: one line, kept current."""

    id: str
    share_token: str | None = None
    title: str | None = None
    repo: str | None = None
    state: str = "working"
    outcome: Outcome | None = None
    error: str | None = None
    pr_number: int | None = None
    pr_url: str | None = None
    pr_state: str | None = None

    @property
    def status(self) -> str:
        """working, done, stopped, failed or interrupted (idle before any turn ended: idle)."""
        if self.state == "working":
            return "working"
        if self.outcome is None:
            return "idle"
        return "failed" if self.outcome is Outcome.ERROR else self.outcome.value


def merge_child(children: dict[str, ChildView], data: ChildSession) -> ChildView:
    """Fold a `child_session` event into the parent's children (fields it leaves out stay)."""
    child = children.get(data.child_id)
    if child is None:
        child = children[data.child_id] = ChildView(data.child_id)
    for name in ("share_token", "title", "repo", "state", "pr_number", "pr_url", "pr_state"):
        value = getattr(data, name)
        if value is not None:
            setattr(child, name, value)
    if data.outcome is not None:
        child.outcome, child.error = data.outcome, data.error
    return child


@dataclass
class Totals:
    turns: int = 0
    tool_calls: int = 0
    files_changed: int = 0
    errors: int = 0
    usage: Usage = field(default_factory=Usage)


@dataclass
class SessionView:
    turns: dict[int, TurnView] = field(default_factory=dict)
    queue: list[QueuedPrompt] = field(default_factory=list)
    state: str = "idle"
    """`working` or `idle`."""
    sandbox: str | None = None
    """How the sandbox was acquired, once it is ready."""
    branch: str | None = None
    errors: list[str] = field(default_factory=list)
    participants: set[str] = field(default_factory=set)
    """People the starter added (SESSION_PROMPTERS=participants)."""
    egress: dict[str, EgressSummary] = field(default_factory=dict)
    """`host:port` → what the sandbox did there through the egress proxy."""
    warm_ups: int = 0
    pull_request: PullRequestView | None = None
    children: dict[str, ChildView] = field(default_factory=dict)
    """Sub-sessions this session started, by id, in the order they were started."""
    totals: Totals = field(default_factory=Totals)
    last_seq: int = 0

    @property
    def current(self) -> TurnView | None:
        """The running turn, if any."""
        for turn in reversed(self.turns.values()):
            if turn.running:
                return turn
        return None

    def apply(self, event: Event) -> TurnView | None:
        """Fold one event in; returns the turn it changed, if any. Replays are idempotent by seq."""
        if event.seq <= self.last_seq:
            return None
        self.last_seq = event.seq
        data = event.data
        turn = self.turns.get(event.turn) if event.turn is not None else None
        match data:
            case PromptQueued():
                self.queue.append(QueuedPrompt(data.prompt_id, data.author, data.text))
                return None
            case TurnStarted():
                self.queue = [q for q in self.queue if q.prompt_id != data.prompt_id]
                turn = self.turns[data.prompt_id] = TurnView(data.prompt_id, data.author, data.text, seq=event.seq)
                self.totals.turns += 1
                self.state = "working"
                return turn
            case QueueChanged():
                if data.cleared:
                    self.queue.clear()
                return self.current
            case Status():
                self.state = data.state
                if data.state == "idle":
                    self.queue.clear()
                return None
            case SandboxReady():
                self.sandbox = data.source
                return None
            case ParticipantsAdded():
                self.participants.update(data.people)
                return None
            case GitSynced():
                self.branch = data.branch
                return None
            case ErrorRaised():
                self.errors.append(data.message)
                return None
            case Egress():
                key = f"{data.host}:{data.port}"
                summary = self.egress.setdefault(key, EgressSummary(data.allowed))
                summary.allowed, summary.reason = data.allowed, data.reason
                summary.count += 1
                summary.bytes += data.bytes_up + data.bytes_down
                return None
            case WarmUp():
                self.warm_ups += 1
                return None
            case ChildSession():
                merge_child(self.children, data)
                return None
            case PullRequest():
                pr = self.pull_request
                if pr is None or pr.number != data.number:
                    pr = self.pull_request = PullRequestView(data.number, data.url, "open")
                if data.action in ("merged", "closed"):
                    pr.state = data.action
                elif data.action == "reopened":
                    pr.state = "open"
                elif data.action == "approved":
                    pr.approvals += 1
                return None
        if turn is None:
            return None
        match data:
            case TextDelta():
                turn.text += data.text
            case ToolCalled():
                turn.tools.append(ToolCallView(data.id, data.name, data.arguments, seq=event.seq))
                self.totals.tool_calls += 1
            case ToolResult():
                for call in reversed(turn.tools):
                    if call.id == data.id:
                        call.ok, call.output = data.ok, data.output
                        break
            case FileChanged():
                if data.path not in turn.files:
                    self.totals.files_changed += 1
                turn.files[data.path] = data.action
                if data.diff is not None:
                    turn.diffs[data.path] = data.diff
            case Note():
                turn.notes.append(data.text)
                turn.note_seqs.append(event.seq)
            case ContextCompacted():
                turn.notes.append(compaction_note(data))
                turn.note_seqs.append(event.seq)
            case TurnEnded():
                turn.outcome, turn.error, turn.stopped_by = data.outcome, data.error, data.by
                turn.first_token_ms, turn.duration_ms = data.first_token_ms, data.duration_ms
                turn.end_seq = event.seq
                turn.settled = len(turn.text)
                for call in turn.tools:
                    if call.ok is None:
                        call.ok, call.output, call.cut = False, UNFINISHED, True
                if data.outcome is Outcome.ERROR:
                    self.totals.errors += 1
            case ModelCall():
                turn.usage.add(data)
                self.totals.usage.add(data)
            case AssistantMessage():
                turn.settled = len(turn.text)  # the deltas carried its text; this step is finished
        return turn


UNFINISHED = "(not finished: the turn ended)"
"""The output of a tool that was still running when its turn ended."""


def compaction_note(data: ContextCompacted) -> str:
    done = [f"{len(data.stubbed)} old tool result(s) shown as stubs"] if data.stubbed else []
    done += [f"turns 1-{data.turns} summarised"] if data.turns else []
    return (f"Context compacted to fit the model's window ({', '.join(done) or 'trimmed'}): about "
            f"{data.tokens_before:,} tokens of {data.window:,} before. The log keeps everything.")


def project(events: Iterable[Event], view: SessionView | None = None) -> SessionView:
    view = view or SessionView()
    for event in events:
        view.apply(event)
    return view
