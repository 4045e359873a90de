"""The plugin manager, and the plugins the service always has."""

from __future__ import annotations

import importlib
from typing import Any

import pluggy

from bot.agent import hookspecs
from bot.agent.hookspecs import PROJECT, ToolCall, hookimpl
from bot.agent.tools import ToolContext
from bot.config import ConfigError


class GitSyncGate:
    """Writes wait until the workspace is synced to the base branch tip; reads never wait."""

    @hookimpl
    def tool_execute_before(self, call: ToolCall, ctx: ToolContext) -> Any:
        if call.writes and ctx.sandbox is not None:
            return _none_after(ctx.sandbox.wait_synced())
        return None


class SandboxContext:
    """Tells the model where it works."""

    def __init__(self, sandboxes: Any):
        self.sandboxes = sandboxes

    @hookimpl
    def session_context(self, session_id: str, repo: str | None) -> str | None:
        if repo is None:
            return "This session has no repository; you cannot read or change code in it."
        sandbox = self.sandboxes.get(session_id) if self.sandboxes else None
        branch = sandbox.work_branch if sandbox else f"hosted-agents/{session_id}"
        note = f" Note: {sandbox.sync_note}" if sandbox and sandbox.sync_note else ""
        return (
            f"You work in a checkout of {repo} in a sandbox container, on the branch {branch}. "
            "Paths are relative to the repository root. Read before you edit; run the tests that matter "
            f"after a change.{note}"
        )


async def _none_after(awaitable: Any) -> None:
    await awaitable


def plugin_manager(extra: str = "", builtins: list[object] | None = None) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for plugin in builtins or []:
        pm.register(plugin)
    pm.load_setuptools_entrypoints(PROJECT)
    for spec in filter(None, (s.strip() for s in extra.split(","))):
        module_name, _, attribute = spec.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attribute) if attribute else importlib.import_module(module_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"PLUGINS: cannot load {spec!r} ({exc})") from None
        pm.register(target() if isinstance(target, type) else target)
    return pm
