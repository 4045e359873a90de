"""Plugins as a team would write them, loaded through the PLUGINS setting in tests."""

from __future__ import annotations

import time
from typing import ClassVar

from pydantic import BaseModel

from bot.agent.hookspecs import Block, Tool, ToolCall, ToolContext, hookimpl
from bot.agent.tools import ToolOutcome
from bot.events import Note


class NoForcePush:
    seen: ClassVar[list[str]] = []

    @hookimpl
    def tool_execute_before(self, call: ToolCall, ctx):  # type: ignore[no-untyped-def]
        if call.name == "run_command" and "--force" in call.arguments.get("command", ""):
            return Block("force pushes are not allowed here")
        if call.name == "post_note":
            return {"text": call.arguments["text"] + " (checked)"}  # rewrite the arguments
        return None

    @hookimpl
    async def tool_execute_after(self, call: ToolCall, ctx, outcome):  # type: ignore[no-untyped-def]
        NoForcePush.seen.append(f"{call.name}:{outcome.ok}")

    @hookimpl
    def session_context(self, session_id: str, repo: str | None) -> str:
        return "House rule: never force-push."


class Shout:
    """A tool from a plugin: says the text louder, as a note too."""

    name: ClassVar[str] = "shout"
    description: ClassVar[str] = "Repeat the text in capitals."
    writes: ClassVar[bool] = False

    class Args(BaseModel):
        text: str

    async def run(self, args: Args, ctx: ToolContext) -> str:
        ctx.emit(Note(text=args.text.upper()))
        return args.text.upper()


class Megaphone:
    @hookimpl
    def register_tools(self) -> list[Tool]:
        return [Shout()]


class Stopwatch:
    """Records when each tool call started and ended (tests of parallel reads)."""

    spans: ClassVar[list[tuple[str, float, float]]] = []
    _open: ClassVar[dict[str, float]] = {}

    @hookimpl
    def tool_execute_before(self, call: ToolCall, ctx: ToolContext) -> None:
        Stopwatch._open[call.name + repr(sorted(call.arguments.items()))] = time.monotonic()

    @hookimpl
    def tool_execute_after(self, call: ToolCall, ctx: ToolContext, outcome: ToolOutcome) -> None:
        started = Stopwatch._open.pop(call.name + repr(sorted(call.arguments.items())), time.monotonic())
        Stopwatch.spans.append((call.name, started, time.monotonic()))


class LongOutput:
    """A tool whose output is longer than the model is shown (tests of the cap), or binary."""

    class Dump:
        name: ClassVar[str] = "dump"
        description: ClassVar[str] = "Dump a long or binary output."
        writes: ClassVar[bool] = False

        class Args(BaseModel):
            binary: bool = False

        async def run(self, args: Args, ctx: ToolContext) -> str:
            if args.binary:
                return "\x00\x01\x02" * 1000
            return "HEAD" + "a" * 60_000 + "MIDDLE" + "b" * 60_000 + "TAIL"

    @hookimpl
    def register_tools(self) -> list[Tool]:
        return [LongOutput.Dump()]
