"""The executor's messages, host side: one typed request per operation, each naming the typed
result it gets back. The in-container executor (executor_agent.py) is plain standard-library
Python and reads the same fields from JSON; the shell executor turns requests into scripts.

Replies arrive from inside a sandbox, so they are validated like any untrusted input.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from sandbox.workspace import CommandResult, DirEntry, FileText

SANDBOX_UID = 1000
"""Commands and file operations run as this unprivileged user, never as the executor's root: a
command then cannot open the executor's descriptors (`/proc/<pid>/fd`) or signal it. 1000, the
usual first user, rather than `nobody` (65534), which must own no files; the executor adds it to
/etc/passwd as `sandbox` when the image has no user 1000 (tools that look the user up)."""
SANDBOX_HOME = "/home/sandbox"
"""HOME of the sandbox user; caches filled by warm-up steps live here."""
WORKSPACE = "/workspace"
OWN_SOURCE = "/opt/hosted-agents/source"
"""This project's own source, mounted read-only in every sandbox; reads, listings and searches
may name absolute paths under it (executor_agent.py: SOURCE)."""
OUTPUTS = ".hosted-agents/outputs"
"""Where a command's output longer than its cap is saved whole, in the repository and excluded
from git (executor_agent.py: OUTPUTS; bot/agent/conversation.py's stubs name these paths)."""

R = TypeVar("R", bound=BaseModel)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PingResult(_Model):
    model_config = ConfigDict(frozen=True, extra="ignore")
    pid: int | None = None
    """The executor's own process id (None for the shell executor)."""
    root: str


class WriteResult(_Model):
    bytes: int


class EditResult(_Model):
    replacements: int


class ListResult(_Model):
    entries: list[DirEntry]
    total: int | None = None
    """Entries in the directory; more than `entries` when the listing was cut at its limit."""


class CancelResult(_Model):
    cancelled: bool


class Request(_Model, Generic[R]):
    """One operation; `result` is the model its reply's result is validated against."""

    result: ClassVar[type[BaseModel]]
    retry_safe: ClassVar[bool] = False
    """May be sent again to a fresh executor when the first one died during the call."""
    cancellable: ClassVar[bool] = False
    """Runs a process group that a cancel (Stop) must kill."""

    def host_timeout(self, margin: float) -> float:
        """How long the host waits for the reply before it gives the executor up."""
        return 60.0 + margin


class Ping(Request[PingResult]):
    result: ClassVar[type[BaseModel]] = PingResult
    retry_safe: ClassVar[bool] = True
    op: Literal["ping"] = "ping"

    def host_timeout(self, margin: float) -> float:
        return 120.0 + margin  # a first start may chown an old image's workspace


class Exec(Request[CommandResult]):
    """A shell command (`cmd`) or a program without a shell (`argv`)."""

    result: ClassVar[type[BaseModel]] = CommandResult
    cancellable: ClassVar[bool] = True
    op: Literal["exec"] = "exec"
    cmd: str | None = None
    argv: list[str] | None = None
    cwd: str = "."
    timeout: float = Field(default=120.0, gt=0)
    cap: int = Field(default=100_000, ge=0)
    """Output kept, in bytes (its first 2/3 and last 1/3); the rest is counted, not sent."""
    save: bool = False
    """Output longer than the cap is also saved whole under OUTPUTS (the agent's commands)."""
    env: dict[str, str] = Field(default_factory=dict)
    as_root: bool = False
    """Only for image setup steps from the repos config, never for the agent's commands."""

    def host_timeout(self, margin: float) -> float:
        return self.timeout + margin


class Read(Request[FileText]):
    result: ClassVar[type[BaseModel]] = FileText
    retry_safe: ClassVar[bool] = True
    op: Literal["read"] = "read"
    path: str
    offset: int = Field(default=1, ge=1)
    """The first line (1-based)."""
    limit: int | None = Field(default=None, ge=1)
    """At most this many lines; None: to the end."""
    max_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    """At most this many bytes, whole lines (a single longer line is cut)."""


class Write(Request[WriteResult]):
    result: ClassVar[type[BaseModel]] = WriteResult
    op: Literal["write"] = "write"
    path: str
    content: str


class Edit(Request[EditResult]):
    result: ClassVar[type[BaseModel]] = EditResult
    op: Literal["edit"] = "edit"
    path: str
    old: str
    new: str
    replace_all: bool = False


class ListDir(Request[ListResult]):
    result: ClassVar[type[BaseModel]] = ListResult
    retry_safe: ClassVar[bool] = True
    op: Literal["list"] = "list"
    path: str = "."
    limit: int = Field(default=2000, ge=1)


class Search(Request[CommandResult]):
    result: ClassVar[type[BaseModel]] = CommandResult
    retry_safe: ClassVar[bool] = True
    cancellable: ClassVar[bool] = True
    op: Literal["search"] = "search"
    pattern: str
    path: str = "."
    glob: str | None = None
    timeout: float = Field(default=30.0, gt=0)
    cap: int = Field(default=50_000, ge=0)

    def host_timeout(self, margin: float) -> float:
        return self.timeout + margin


class Cancel(Request[CancelResult]):
    """Kill the process group of request `target`."""

    result: ClassVar[type[BaseModel]] = CancelResult
    op: Literal["cancel"] = "cancel"
    target: int


class Reply(BaseModel):
    """The executor's answer to request `id`: a result, or the reason it refused."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    id: int
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None


class Absent(BaseModel):
    """Said instead of starting when the image has no usable python3."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    absent: Literal["python3"]
