"""Tools the agent can call: each declares a pydantic argument model; the registry validates
the model's arguments at the edge, so a malformed call becomes an error the model can read and
fix, never an exception in the session."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, Field, ValidationError

from bot.sessions.events import Event, Kind

Emit = Callable[[Kind, dict[str, Any]], Event]


@dataclass(frozen=True)
class ToolContext:
    session_id: str
    emit: Emit


@dataclass(frozen=True)
class ToolOutcome:
    ok: bool
    output: str


class Tool(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    Args: ClassVar[type[BaseModel]]

    async def run(self, args: Any, ctx: ToolContext) -> str: ...


class ToolError(Exception):
    """Raised by a tool for a failure the model should see and may recover from."""


MAX_OUTPUT_CHARS = 30_000


class ToolRegistry:
    def __init__(self, tools: list[Tool] | None = None):
        self._tools: dict[str, Tool] = {}
        for tool in tools or []:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        self._tools[tool.name] = tool

    def specs(self) -> list[dict[str, Any]]:
        return [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.Args.model_json_schema(),
                },
            }
            for t in self._tools.values()
        ]

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
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            return ToolOutcome(False, f"Invalid arguments for {name}: {problems}.")
        try:
            output = await tool.run(args, ctx)
        except ToolError as exc:
            return ToolOutcome(False, str(exc))
        if len(output) > MAX_OUTPUT_CHARS:
            output = output[:MAX_OUTPUT_CHARS] + f"\n[output cut at {MAX_OUTPUT_CHARS} characters]"
        return ToolOutcome(True, output)


class PostNote:
    """Post a short milestone (a plan, a finding) to the thread, apart from the streamed answer."""

    name: ClassVar[str] = "post_note"
    description: ClassVar[str] = (
        "Post a short note to the people following this session (the Slack thread and the web view), "
        "e.g. your plan or an important finding. Your final answer is shown anyway; do not repeat it here."
    )

    class Args(BaseModel):
        text: str = Field(min_length=1, max_length=3000, description="The note, in Markdown.")

    async def run(self, args: Args, ctx: ToolContext) -> str:
        ctx.emit(Kind.NOTE, {"text": args.text})
        return "Posted."


def default_tools() -> ToolRegistry:
    return ToolRegistry([PostNote()])
