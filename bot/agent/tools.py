"""What a tool is, what it sees, and the registry that runs one call through the plugin hooks.

Each tool declares a pydantic argument model; the registry validates the model's arguments at
the edge, so a malformed call becomes an error the model can read and fix, never an exception
in the session. Tools come from plugins (`register_tools`, see hookspecs.py and plugins.py);
this module imports neither, so hooks, plugins and tools form no import circle.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import pluggy
from pydantic import BaseModel, Field, ValidationError

from bot.events import Event, EventData, Note
from sandbox.workspace import Workspace

Emit = Callable[[EventData], Event]
"""Appends one typed event to the session's log (in the current turn) and returns it."""


@dataclass(frozen=True)
class ToolContext:
    session_id: str
    emit: Emit
    workspace: Workspace | None = None
    """The session's checkout, or None when the session has no repository."""


@dataclass(frozen=True)
class ToolOutcome:
    ok: bool
    output: str


@dataclass(frozen=True)
class Block:
    """Returned by `tool_execute_before` to refuse a call; the model reads the reason."""

    reason: str


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    writes: bool
    """True for tools that change the workspace (edit, write, run a command)."""


BeforeResult = Block | dict[str, Any] | None


class Tool(Protocol):
    """A tool: its name and description for the model, its arguments (a pydantic model, usually
    a nested class `Args`), whether it changes the workspace, and how it runs."""

    name: ClassVar[str]
    description: ClassVar[str]
    writes: ClassVar[bool]
    """Changes the workspace: such calls wait for the git sync (a plugin decides)."""
    # Optional: `needs_workspace: ClassVar[bool] = True` keeps a tool away from sessions without one.

    @property
    def Args(self) -> type[BaseModel]: ...

    async def run(self, args: Any, ctx: ToolContext) -> str: ...


class ToolError(Exception):
    """Raised by a tool for a failure the model should see and may recover from."""


MAX_OUTPUT_CHARS = 30_000


def cap_output(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    """What the model is shown of a tool's output: binary output is described, not shown; a long one
    keeps its head and tail (where errors and summaries are) with a marker saying what was left out."""
    sample = text[:8192]
    if "\x00" in sample or (sample and sum(not (c.isprintable() or c in "\n\r\t") for c in sample) > len(sample) * 0.3):
        return f"[binary output of {len(text):,} characters, not shown]"
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 2 // 3], text[-(limit // 3):]
    omitted = len(text) - len(head) - len(tail)
    return (f"{head}\n[… {omitted:,} characters left out here; read a file in pages with read_file's offset and "
            f"limit (lines), or narrow a command's output (grep, head, tail) …]\n{tail}")


class ToolRegistry:
    def __init__(self, tools: Sequence[Tool] = (), hooks: pluggy.PluginManager | None = None):
        self._tools: dict[str, Tool] = {}
        self._specs: list[dict[str, Any]] = []
        self._specs_without_workspace: list[dict[str, Any]] = []
        self.hooks = hooks
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"two tools are named {tool.name!r}")
        self._tools[tool.name] = tool
        # Built once: generating JSON schemas costs milliseconds, and every model call sends them.
        self._specs = [
            {"type": "function",
             "function": {"name": t.name, "description": t.description, "parameters": t.Args.model_json_schema()}}
            for t in self._tools.values()
        ]
        self._specs_without_workspace = [
            spec for spec, t in zip(self._specs, self._tools.values(), strict=True) if not getattr(t, "needs_workspace", False)
        ]

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def read_only(self, name: str) -> bool:
        """Whether the tool only reads (`read_only = True`): such calls of one step may run at once."""
        return bool(getattr(self._tools.get(name), "read_only", False))

    def specs(self, workspace: bool = True) -> list[dict[str, Any]]:
        """The tools the model is offered; without a workspace, none of those that need one
        (the model cannot use them, and every request would carry their schemas)."""
        return self._specs if workspace else self._specs_without_workspace

    async def call(self, name: str, raw_arguments: str, ctx: ToolContext) -> ToolOutcome:
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(sorted(self._tools)) or "none"
            return ToolOutcome(False, f"Unknown tool {name!r}. Available tools: {known}.")
        try:
            raw = json.loads(raw_arguments or "{}")
        except json.JSONDecodeError as exc:
            return ToolOutcome(False, f"Arguments are not valid JSON ({exc.msg} at position {exc.pos}).")
        try:
            args = tool.Args.model_validate(raw)
        except ValidationError as exc:
            return ToolOutcome(False, _invalid(name, exc))
        call = ToolCall(name, args.model_dump(), getattr(tool, "writes", False))
        call, outcome = await self._run(tool, call, args, ctx)
        capped = cap_output(outcome.output)
        if capped is not outcome.output:
            outcome = ToolOutcome(outcome.ok, capped)
        if self.hooks is not None:
            await _settle(self.hooks.hook.tool_execute_after(call=call, ctx=ctx, outcome=outcome))
        return outcome

    async def _run(self, tool: Tool, call: ToolCall, args: BaseModel, ctx: ToolContext) -> tuple[ToolCall, ToolOutcome]:
        """The before-hooks (which may block, rewrite or hold the call), then the tool.

        Every hook that was called is also awaited, in hook order, before the call is decided:
        a block by one never leaves another's wait (the git-sync gate) pending. The first block
        wins; otherwise each rewrite replaces the arguments in turn."""
        answers = await _settle(self.hooks.hook.tool_execute_before(call=call, ctx=ctx)) if self.hooks else []
        blocks = [a for a in answers if isinstance(a, Block)]
        if blocks:
            return call, ToolOutcome(False, f"Not run: {blocks[0].reason}")
        for answer in answers:
            if isinstance(answer, dict):
                try:
                    args = tool.Args.model_validate(answer)
                except ValidationError as exc:
                    return call, ToolOutcome(False, _invalid(tool.name, exc))
                call = ToolCall(tool.name, args.model_dump(), call.writes)
        try:
            return call, ToolOutcome(True, await tool.run(args, ctx))
        except ToolError as exc:
            return call, ToolOutcome(False, str(exc))


async def _settle(results: list[Any]) -> list[Any]:
    """Hook results with every awaitable awaited, in order. If one raises (which ends the turn),
    the ones not awaited yet are closed, so none is left pending."""
    settled: list[Any] = []
    for index, result in enumerate(results):
        if inspect.isawaitable(result):
            try:
                result = await result
            except BaseException:
                for rest in results[index + 1:]:
                    _discard(rest)
                raise
        settled.append(result)
    return settled


def _discard(result: Any) -> None:
    if inspect.iscoroutine(result):
        result.close()
    elif isinstance(result, Awaitable) and hasattr(result, "cancel"):
        result.cancel()


def _invalid(name: str, exc: ValidationError) -> str:
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
    return f"Invalid arguments for {name}: {problems}."


class PostNote:
    """Post a short milestone (a plan, a finding) to the thread, apart from the streamed answer."""

    name: ClassVar[str] = "post_note"
    writes: ClassVar[bool] = False
    description: ClassVar[str] = (
        "Post a short note to the people following this session (the Slack thread and the web view), "
        "e.g. your plan or an important finding. Your final answer is shown anyway; do not repeat it here."
    )

    class Args(BaseModel):
        text: str = Field(min_length=1, max_length=3000, description="The note, in Markdown.")

    async def run(self, args: Args, ctx: ToolContext) -> str:
        ctx.emit(Note(text=args.text))
        return "Posted."
