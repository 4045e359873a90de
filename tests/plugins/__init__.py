"""A plugin as a team would write one, loaded through the PLUGINS setting in tests."""

from __future__ import annotations

from typing import ClassVar

from bot.agent.hookspecs import Block, ToolCall, hookimpl


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
