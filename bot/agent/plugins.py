"""The plugin manager, the plugins the service always has, and the tool registry built from
every plugin's `register_tools`."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable
from typing import Protocol

import pluggy

from bot.agent import hookspecs
from bot.agent.hookspecs import PROJECT, Block, ToolCall, hookimpl
from bot.agent.sandbox_tools import workspace_tools
from bot.agent.tools import PostNote, Tool, ToolContext, ToolRegistry
from bot.config import ConfigError
from sandbox.workspace import Workspace, WorkspaceUnavailable


class BuiltinTools:
    """post_note and the workspace tools, registered the way any plugin registers its own."""

    def __init__(self, command_timeout: float = 600.0):
        self.command_timeout = command_timeout

    @hookimpl
    def register_tools(self) -> list[Tool]:
        return [PostNote(), *workspace_tools(self.command_timeout)]


class GitSyncGate:
    """Writes wait until the workspace is synced to the base branch tip; reads never wait."""

    @hookimpl
    def tool_execute_before(self, call: ToolCall, ctx: ToolContext) -> Awaitable[Block | None] | None:
        if call.writes and ctx.workspace is not None:
            return _synced(ctx.workspace)
        return None


async def _synced(workspace: Workspace) -> Block | None:
    try:
        await workspace.wait_synced()
    except WorkspaceUnavailable as exc:
        return Block(f"the sandbox could not be prepared: {exc}")
    return None


class WorkspaceLookup(Protocol):
    def get(self, session_id: str) -> Workspace | None: ...


class SandboxContext:
    """Tells the model where it works."""

    def __init__(self, workspaces: WorkspaceLookup | None):
        self.workspaces = workspaces

    @hookimpl
    def session_context(self, session_id: str, repo: str | None) -> str | None:
        if repo is None:
            return "This session has no repository; you cannot read or change code in it."
        workspace = self.workspaces.get(session_id) if self.workspaces else None
        branch = workspace.branch if workspace else f"hosted-agents/{session_id}"
        note = f" Note: {workspace.sync_note}" if workspace and workspace.sync_note else ""
        source = workspace.own_source if workspace else None
        own = (f" Your own source (this agent, hosted-agents) is at {source}, read-only: read it (read_file, "
               "list_directory and search take absolute paths there) to answer questions about your own "
               "tools, settings and limits from the code." if source else "")
        return (
            f"You work in a checkout of {repo} in a sandbox container, on the branch {branch}. "
            "Paths are relative to the repository root. Read before you edit; run the tests that matter "
            f"after a change.{note}{own}"
        )


def plugin_manager(extra: str = "", builtins: list[object] | None = None) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for plugin in builtins or []:
        pm.register(plugin)
    pm.load_setuptools_entrypoints(PROJECT)
    for spec in filter(None, (s.strip() for s in extra.split(","))):
        module_name, _, attribute = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
            target = getattr(module, attribute) if attribute else module
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"PLUGINS: cannot load {spec!r} ({exc})") from None
        pm.register(target() if isinstance(target, type) else target)
    return pm


def tool_registry(pm: pluggy.PluginManager) -> ToolRegistry:
    """Every plugin's tools, the first registered plugin's first (the built-ins lead the list)."""
    registry = ToolRegistry(hooks=pm)
    for tools in reversed(pm.hook.register_tools()):
        for tool in tools:
            try:
                registry.register(tool)
            except ValueError as exc:
                raise ConfigError(f"PLUGINS: {exc}; tool names must be unique") from None
    return registry
