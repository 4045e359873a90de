"""Tools that work in the session's workspace (see sandbox/workspace.py), whatever backs it.

Reads (read, list, search, git status/diff) run as soon as the workspace exists; writes (edit,
write, run a command) are marked `writes` and wait for the git sync through the gate plugin.
Refusals (a path outside the repository, a missing file) and a workspace that could not be
prepared become tool errors the model can read; a lost workspace ends the turn (`WorkspaceLost`
passes through).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from pydantic import BaseModel, Field

from bot.agent.tools import Tool, ToolContext, ToolError
from bot.events import FileChanged
from sandbox.protocol import OWN_SOURCE
from sandbox.workspace import CommandResult, Workspace, WorkspaceError, WorkspaceUnavailable

Path = Field(description="Path relative to the repository root.", max_length=4096)
READ_PATH = Field(description=f"Path relative to the repository root, or absolute under {OWN_SOURCE} "
                  "(this agent's own source, read-only).", max_length=4096)
DIFF_CAP = 20_000
"""Characters of a changed file's diff kept in its event (the web page shows it)."""
COMMAND_CAP = 24_000
"""Bytes of a command's output the model sees (its first 2/3 and last 1/3); the whole is saved in
the sandbox. Below the registry's cap (tools.MAX_OUTPUT_CHARS), so the marker is never cut away."""
READ_LINES = 2000
"""Lines read_file shows when no limit is given."""
READ_PAGE = 24_000
"""Bytes of one read_file page at most (whole lines); the header says where to go on."""
LIST_LIMIT = 500
"""Entries list_directory shows."""
SEARCH_LIMIT = 200
"""Matching lines search shows."""
SEARCH_LINE = 400
"""Characters of one matching line shown (minified files have very long ones)."""
log = logging.getLogger(__name__)


def _workspace(ctx: ToolContext) -> Workspace:
    if ctx.workspace is None:
        raise ToolError("This session has no repository, so there is no sandbox to work in.")
    return ctx.workspace


NO_SPACE = "No space left on device"


def _quota_note(ws: Workspace, text: str) -> str:
    """A clear line when the sandbox's disk is full, so the model frees space instead of retrying."""
    if NO_SPACE not in text or ws.disk_quota is None:
        return ""
    return (f"\ndisk quota exceeded: this sandbox has SANDBOX_DISK={ws.disk_quota}; "
            "free space (rm build outputs) and go on")


@contextmanager
def _refusals(ws: Workspace | None = None) -> Iterator[None]:
    """The workspace's refusals, as errors the model reads."""
    try:
        yield
    except WorkspaceUnavailable as exc:
        raise ToolError(f"The sandbox could not be prepared: {exc}") from None
    except WorkspaceError as exc:
        raise ToolError(str(exc) + (_quota_note(ws, str(exc)) if ws is not None else "")) from None


def _format_exec(result: CommandResult, timeout: float | None = None) -> str:
    if result.timed_out:
        head = f"timed out after {timeout or 0:g} s; the command and everything it started were killed"
    elif result.signal:
        head = f"killed by signal {result.signal}"
    else:
        head = f"exit code {result.exit_code}"
    out = result.output
    if result.truncated:
        out = f"{out}\n{_cut_marker(result)}\n{result.tail}"
    return f"{head} ({result.duration:.1f} s)\n{out}".rstrip()


def _cut_marker(result: CommandResult) -> str:
    """Between the head and the tail of a cut output: how much there was, what is shown, where the rest is."""
    size = f"{result.total_bytes:,} bytes, {result.total_lines:,} lines in all"
    shown = f"shown: its start (to line {result.head_lines:,}) and its end (from line {result.tail_from_line:,})"
    if result.saved_path:
        path = result.saved_path
        partial = (f" (its first {result.saved_bytes:,} bytes; the file was cut there)"
                   if result.saved_bytes < result.total_bytes else "")
        where = (f"The whole output is saved at {path}{partial}: read it in pages with "
                 f'read_file(path="{path}", offset=<first line>, limit=<lines>), or search it')
    else:
        reason = f" (saving it failed: {result.save_error})" if result.save_error else ""
        where = f"It was not saved{reason}; narrow the command's output (grep, head, tail) and run it again"
    return f"[… output cut: {size}; {shown}. {where} …]"


class ReadFile:
    name: ClassVar[str] = "read_file"
    description: ClassVar[str] = (
        f"Read a text file of the repository, or of this agent's own source under {OWN_SOURCE}, in pages: "
        f"`offset` is the first line (1-based), `limit` the number of lines (default {READ_LINES}). Works on files "
        "of any size, e.g. a command's saved output; the result says which lines it shows and how many there are."
    )
    writes: ClassVar[bool] = False
    read_only: ClassVar[bool] = True
    """Changes nothing: several in one step run at once."""
    needs_workspace: ClassVar[bool] = True

    class Args(BaseModel):
        path: str = READ_PATH
        offset: int = Field(1, ge=1, description="The first line to show (1-based).")
        limit: int | None = Field(None, ge=1, le=100_000, description=f"How many lines to show (default {READ_LINES}).")

    async def run(self, args: Args, ctx: ToolContext) -> str:
        with _refusals():
            result = await _workspace(ctx).read(args.path, args.offset, args.limit or READ_LINES, READ_PAGE)
        total = result.total_lines
        if args.offset > max(total, 1):
            raise ToolError(f"{args.path} has {total:,} lines; offset {args.offset:,} is past the end.")
        first, last = result.first_line, result.last_line
        if first == 1 and last >= total and not result.truncated:
            return result.content
        header = f"[{args.path}: lines {first:,}-{last:,} of {total:,} ({result.total_bytes:,} bytes)"
        if result.truncated and last == first and not result.content.endswith("\n"):
            header += (f"; line {first:,} alone is longer than a page, only its start is shown "
                       "(see the rest with run_command, e.g. cut -c or fold)")
        elif result.truncated:
            header += f"; the page stopped at {READ_PAGE:,} bytes"
        if last < total:
            header += f"; next: offset={last + 1}"
        return f"{header}]\n{result.content}"


class ListDirectory:
    name: ClassVar[str] = "list_directory"
    description: ClassVar[str] = (
        f"List a directory of the repository, or of this agent's own source under {OWN_SOURCE} (names, kinds "
        f"and sizes; at most {LIST_LIMIT} entries)."
    )
    writes: ClassVar[bool] = False
    read_only: ClassVar[bool] = True
    """Changes nothing: several in one step run at once."""
    needs_workspace: ClassVar[bool] = True

    class Args(BaseModel):
        path: str = Field(".", description=f"Directory relative to the repository root, or absolute under {OWN_SOURCE}.",
                          max_length=4096)

    async def run(self, args: Args, ctx: ToolContext) -> str:
        with _refusals():
            entries, total = await _workspace(ctx).list_dir(args.path, LIST_LIMIT)
        lines = [e.name + ("/" if e.type == "dir" else "@" if e.type == "link" else f"  ({e.size} bytes)") for e in entries]
        if total > len(entries):
            lines.append(f"[… {total - len(entries):,} more not shown ({total:,} entries in all, sorted by name); "
                         "list a subdirectory, or search with a glob …]")
        return "\n".join(lines) or "(empty)"


class Search:
    name: ClassVar[str] = "search"
    description: ClassVar[str] = (
        "Search file contents with a regular expression (ripgrep or grep -E); prints path:line:text, at most "
        f"{SEARCH_LIMIT} lines (50 per file). Searches the repository, or this agent's own source under {OWN_SOURCE}."
    )
    writes: ClassVar[bool] = False
    read_only: ClassVar[bool] = True
    """Changes nothing: several in one step run at once."""
    needs_workspace: ClassVar[bool] = True

    class Args(BaseModel):
        pattern: str = Field(min_length=1, max_length=1000)
        path: str = Field(".", max_length=4096, description=f"Relative to the repository root, or absolute under {OWN_SOURCE}.")
        glob: str | None = Field(None, description="Only files matching this glob, e.g. '*.py'.", max_length=200)

    async def run(self, args: Args, ctx: ToolContext) -> str:
        with _refusals():
            result = await _workspace(ctx).search(args.pattern, args.path, args.glob)
        if result.exit_code == 1 and not result.output:
            return "No matches."
        if result.exit_code not in (0, 1):
            return _format_exec(result)
        lines = result.output.splitlines()
        if result.truncated and lines and not result.output.endswith("\n"):
            lines.pop()  # cut in the middle
        total = max(result.total_lines, len(lines))
        shown = [line if len(line) <= SEARCH_LINE else line[:SEARCH_LINE] + " …" for line in lines[:SEARCH_LIMIT]]
        if total > len(shown):
            shown.append(f"[… {total - len(shown):,} more matching lines not shown ({total:,} in all); "
                         "narrow the pattern, the path or the glob …]")
        return "\n".join(shown) or "No matches."


class EditFile:
    name: ClassVar[str] = "edit_file"
    description: ClassVar[str] = (
        "Replace an exact piece of text in a file. old_text must occur exactly once unless replace_all is set; "
        "include enough surrounding lines to make it unique."
    )
    writes: ClassVar[bool] = True
    needs_workspace: ClassVar[bool] = True

    class Args(BaseModel):
        path: str = Path
        old_text: str = Field(min_length=1)
        new_text: str
        replace_all: bool = False

    async def run(self, args: Args, ctx: ToolContext) -> str:
        ws = _workspace(ctx)
        with _refusals(ws):
            replaced = await ws.edit(args.path, args.old_text, args.new_text, args.replace_all)
        ctx.emit(FileChanged(path=args.path, action="edited",
                             diff=await _file_diff(ws, args.path, args.old_text, args.new_text)))
        return f"Replaced {replaced} occurrence(s) in {args.path}."


class WriteFile:
    name: ClassVar[str] = "write_file"
    description: ClassVar[str] = "Create or overwrite a file with the given content (parent directories are created)."
    writes: ClassVar[bool] = True
    needs_workspace: ClassVar[bool] = True

    class Args(BaseModel):
        path: str = Path
        content: str = Field(max_length=2_000_000)

    async def run(self, args: Args, ctx: ToolContext) -> str:
        ws = _workspace(ctx)
        with _refusals(ws):
            written = await ws.write(args.path, args.content)
        ctx.emit(FileChanged(path=args.path, action="written", diff=await _file_diff(ws, args.path, "", args.content)))
        return f"Wrote {written} bytes to {args.path}."


class RunCommand:
    name: ClassVar[str] = "run_command"
    description: ClassVar[str] = (
        "Run a shell command in the repository root (e.g. the tests). Output is stdout and stderr together; "
        f"past {COMMAND_CAP:,} bytes you see its start and end, and the whole is saved in a file under "
        ".hosted-agents/outputs/ (named in the result) that you can read in pages with read_file. "
        "Processes it starts end with it."
    )
    writes: ClassVar[bool] = True
    needs_workspace: ClassVar[bool] = True

    def __init__(self, max_timeout: float = 600.0):
        self.max_timeout = max_timeout

    class Args(BaseModel):
        command: str = Field(min_length=1, max_length=20_000)
        timeout_seconds: float = Field(120, gt=0, le=3600)

    async def run(self, args: Args, ctx: ToolContext) -> str:
        timeout = min(args.timeout_seconds, self.max_timeout)
        ws = _workspace(ctx)
        with _refusals(ws):
            result = await ws.run(args.command, timeout, cap=COMMAND_CAP)
        failed = result.exit_code != 0
        return _format_exec(result, timeout) + (_quota_note(ws, result.output) if failed else "")


class GitStatus:
    name: ClassVar[str] = "git_status"
    description: ClassVar[str] = "Show the branch and the changed, added and untracked files."
    writes: ClassVar[bool] = False
    read_only: ClassVar[bool] = True
    """Changes nothing: several in one step run at once."""
    needs_workspace: ClassVar[bool] = True

    class Args(BaseModel):
        pass

    async def run(self, args: Args, ctx: ToolContext) -> str:
        with _refusals():
            result = await _workspace(ctx).status()
        return result.output or _format_exec(result)


class GitDiff:
    name: ClassVar[str] = "git_diff"
    description: ClassVar[str] = "Show the diff of the working tree (or of one path) against the last commit."
    writes: ClassVar[bool] = False
    read_only: ClassVar[bool] = True
    """Changes nothing: several in one step run at once."""
    needs_workspace: ClassVar[bool] = True

    class Args(BaseModel):
        path: str | None = Field(None, max_length=4096)

    async def run(self, args: Args, ctx: ToolContext) -> str:
        with _refusals():
            result = await _workspace(ctx).diff(args.path)
        return result.output or ("No changes." if result.exit_code == 0 else _format_exec(result))


def workspace_tools(command_timeout: float = 600.0) -> list[Tool]:
    return [ReadFile(), ListDirectory(), Search(), EditFile(), WriteFile(), RunCommand(command_timeout), GitStatus(), GitDiff()]


async def _file_diff(ws: Workspace, path: str, before: str, after: str) -> str | None:
    """What the change did to the file, for people watching: git's diff against the last commit, or,
    for a file git does not track yet, the change itself. None when it cannot be read."""
    try:
        diff = (await ws.diff(path)).output
    except WorkspaceError as exc:
        log.info("no diff of %s: %s", path, exc)
        return None
    if not diff.strip():
        lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                     "/dev/null" if not before else f"a/{path}", f"b/{path}")
        diff = "".join(lines)
    return diff if len(diff) <= DIFF_CAP else diff[:DIFF_CAP] + "\n… (diff cut here; the full change is in the sandbox)\n"
