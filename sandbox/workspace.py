"""What the agent may know about a sandbox: a checkout it can read, search, change and run
commands in, and the errors it has to tell apart.

The agent layer imports this module and nothing else of `sandbox`, so a second backend, or a
workspace that is not a container at all, only has to implement `Workspace`.
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict


class WorkspaceError(Exception):
    """The workspace refused a request (a path outside the repository, a missing file): the
    model reads the message and can fix its call."""


class WorkspaceUnavailable(Exception):
    """The workspace could not be prepared (e.g. the image build failed); tools say so."""


class WorkspaceLost(Exception):
    """The container stopped or vanished: the turn ends, the next prompt gets a fresh one."""

    def __str__(self) -> str:
        reason = self.args[0] if self.args else "container gone"
        return f"The sandbox stopped unexpectedly ({reason}); the next prompt gets a fresh one."


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class CommandResult(_Result):
    """How a command ended and what it printed (stdout and stderr together, cut at a cap)."""

    exit_code: int | None
    """None when it timed out."""
    signal: int | None = None
    """The signal that ended it, if one did (and not our timeout)."""
    output: str
    """All of it, or when `truncated` its head (the first 2/3 of the cap)."""
    truncated: bool = False
    total_bytes: int = 0
    total_lines: int = 0
    tail: str = ""
    """When `truncated`: the last 1/3 of the cap."""
    head_lines: int = 0
    """When `truncated`: the line the head ends in."""
    tail_from_line: int = 0
    """When `truncated`: the line the tail starts in."""
    saved_path: str | None = None
    """Where the whole output was saved (relative to the repository root), when it was."""
    saved_bytes: int = 0
    save_error: str | None = None
    """Why saving the whole output failed (e.g. the disk is full)."""
    timed_out: bool = False
    duration: float = 0.0


class FileText(_Result):
    """Lines `first_line`..`last_line` of a file of `total_lines` lines (0 when not counted)."""

    content: str
    truncated: bool = False
    """The lines asked for were more than the read's byte cap: `last_line` is where it stopped."""
    first_line: int = 1
    last_line: int = 0
    total_lines: int = 0
    total_bytes: int = 0


class DirEntry(_Result):
    name: str
    type: Literal["file", "dir", "link"]
    size: int | None = None


class Workspace(Protocol):
    """A session's checkout. Paths are relative to the repository root and confined to it.

    Reads may run as soon as the workspace exists; `wait_synced` returns once the checkout is
    on the session's branch at the base branch tip, which writes wait for (see GitSyncGate).
    Methods raise WorkspaceError for a refusal, WorkspaceUnavailable when it could not be
    prepared, and WorkspaceLost when it is gone.
    """

    @property
    def branch(self) -> str:
        """The session's own branch."""
        ...

    @property
    def disk_quota(self) -> str | None:
        """The size of the workspace's disk (SANDBOX_DISK, e.g. `10g`), None when it has no quota."""
        ...

    @property
    def sync_note(self) -> str | None:
        """Why the checkout is not at the base branch tip, when the sync failed."""
        ...

    @property
    def own_source(self) -> str | None:
        """Where this project's own source can be read (absolute, read-only), or None."""
        ...

    async def wait_synced(self) -> None: ...

    async def read(self, path: str, offset: int = 1, limit: int | None = None, max_bytes: int = 4 * 1024 * 1024) -> FileText:
        """Lines `offset` (1-based) on, at most `limit` lines and `max_bytes`, streamed from a file of any
        size. Reads, listings and searches also take absolute paths under OWN_SOURCE (read-only)."""
        ...

    async def list_dir(self, path: str = ".", limit: int = 2000) -> tuple[list[DirEntry], int]:
        """The first `limit` entries, sorted by name, and how many there are in all."""
        ...

    async def search(self, pattern: str, path: str = ".", glob: str | None = None) -> CommandResult:
        """Lines matching a regular expression, as `path:line:text` (exit code 1: none)."""
        ...

    async def write(self, path: str, content: str) -> int:
        """Creates or replaces the file (and its parent directories); returns the bytes written."""
        ...

    async def edit(self, path: str, old: str, new: str, replace_all: bool = False) -> int:
        """Replaces exact text; returns how many occurrences were replaced."""
        ...

    async def run(self, command: str, timeout: float, cap: int = 30_000) -> CommandResult:
        """A shell command in the repository root; it and everything it started end with it.
        Output longer than `cap` keeps its head and tail here and is saved whole in the workspace
        (`saved_path`, under .hosted-agents/outputs, excluded from git)."""
        ...

    async def diff(self, path: str | None = None) -> CommandResult:
        """`git diff HEAD` of the working tree, or of one path."""
        ...

    async def status(self) -> CommandResult:
        """`git status --short --branch`."""
        ...
