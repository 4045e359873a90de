"""Tools the agent can call: each declares a pydantic argument model; the registry validates
the model's arguments at the edge, so a malformed call becomes an error the model can read and
fix, never an exception in the session."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import pluggy
from pydantic import BaseModel, Field, ValidationError

from bot.agent.hookspecs import Block, ToolCall
from bot.events import Event, EventData, Note

Emit = Callable[[EventData], Event]


@dataclass(frozen=True)
class ToolContext:
    session_id: str
    emit: Emit
    sandbox: Any = None
    """The session's `sandbox.sessions.SessionSandbox`, or None when it has no repository."""


@dataclass(frozen=True)
class ToolOutcome:
    ok: bool
    output: str


class Tool(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    Args: ClassVar[type[BaseModel]]
    writes: ClassVar[bool]
    """Changes the workspace: such calls wait for the git sync (a plugin decides)."""

    async def run(self, args: Any, ctx: ToolContext) -> str: ...


class ToolError(Exception):
    """Raised by a tool for a failure the model should see and may recover from."""


MAX_OUTPUT_CHARS = 30_000


class ToolRegistry:
    def __init__(self, tools: list[Tool] | None = None, hooks: pluggy.PluginManager | None = None):
        self._tools: dict[str, Tool] = {}
        self._specs: list[dict[str, Any]] = []
        self.hooks = hooks
        for tool in tools or []:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        self._tools[tool.name] = tool
        # Built once: generating JSON schemas costs milliseconds, and every model call sends them.
        self._specs = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.Args.model_json_schema()}}
            for t in self._tools.values()
        ]

    def specs(self) -> list[dict[str, Any]]:
        return self._specs

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
        if len(outcome.output) > MAX_OUTPUT_CHARS:
            outcome = ToolOutcome(outcome.ok, outcome.output[:MAX_OUTPUT_CHARS] + f"\n[output cut at {MAX_OUTPUT_CHARS} characters]")
        if self.hooks is not None:
            for result in self.hooks.hook.tool_execute_after(call=call, ctx=ctx, outcome=outcome):
                if inspect.isawaitable(result):
                    await result
        return outcome

    async def _run(self, tool: Tool, call: ToolCall, args: BaseModel, ctx: ToolContext) -> tuple[ToolCall, ToolOutcome]:
        """The before-hooks (which may block, rewrite or hold the call), then the tool."""
        if self.hooks is not None:
            for result in self.hooks.hook.tool_execute_before(call=call, ctx=ctx):
                if inspect.isawaitable(result):
                    result = await result
                if isinstance(result, Block):
                    return call, ToolOutcome(False, f"Not run: {result.reason}")
                if isinstance(result, dict):
                    try:
                        args = tool.Args.model_validate(result)
                    except ValidationError as exc:
                        return call, ToolOutcome(False, _invalid(tool.name, exc))
                    call = ToolCall(tool.name, args.model_dump(), call.writes)
        try:
            return call, ToolOutcome(True, await tool.run(args, ctx))
        except ToolError as exc:
            return call, ToolOutcome(False, str(exc))


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


def default_tools(hooks: pluggy.PluginManager | None = None, command_timeout: float = 600.0) -> ToolRegistry:
    from bot.agent.sandbox_tools import sandbox_tools

    return ToolRegistry([PostNote(), *sandbox_tools(command_timeout)], hooks)
