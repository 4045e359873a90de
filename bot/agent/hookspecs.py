"""Every plugin hook, with its contract. Plugins implement these with `@hookimpl` and load from
the `hosted_agents` entry-point group or from the PLUGINS setting (`module:attribute`).

What a hook receives and returns (`ToolCall`, `Block`, `ToolContext`, `ToolOutcome`, `Tool`) is
defined in bot/agent/tools.py and re-exported here, so a plugin imports from this one module.
Hooks run in pluggy's order (last registered first, `tryfirst`/`trylast` respected).
"""

from __future__ import annotations

from collections.abc import Awaitable

import pluggy

from bot.agent.tools import BeforeResult, Block, Tool, ToolCall, ToolContext, ToolOutcome

__all__ = ["PROJECT", "BeforeResult", "Block", "Tool", "ToolCall", "ToolContext", "ToolOutcome", "hookimpl", "hookspec"]

PROJECT = "hosted_agents"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_tools() -> list[Tool]:
    """Tools this plugin gives the agent; called once when the service starts.

    The built-in tools (post_note and the workspace tools) come through this hook too. Tool
    names must be unique across plugins: a clash is a configuration error at start.
    """
    raise NotImplementedError


@hookspec
def tool_execute_before(call: ToolCall, ctx: ToolContext) -> BeforeResult | Awaitable[BeforeResult]:
    """Called before every tool call, after its arguments were validated.

    Return None to let it run; a `Block` to refuse it (the model sees the reason); a dict to
    replace its arguments (validated again); or an awaitable of one of these, to wait for
    something first (the git-sync gate waits for the sync this way). Every implementation is
    called and every awaitable awaited, in hook order, even when one of them blocks; then the
    first block wins, else each rewrite applies in turn. Raise to end the turn.
    """
    raise NotImplementedError


@hookspec
def tool_execute_after(call: ToolCall, ctx: ToolContext, outcome: ToolOutcome) -> Awaitable[None] | None:
    """Called after every tool call with its outcome (blocked calls too); for observing, not
    changing. May be async."""
    raise NotImplementedError


@hookspec
def session_context(session_id: str, repo: str | None, surfaces: tuple[str, ...]) -> str | None:
    """Text to add to the system prompt of a session's turns (one paragraph, or None).

    `surfaces` are the kinds of place the session is shown in (e.g. `slack_thread`), so a
    surface can tell the model how its answers are read there."""
    raise NotImplementedError


@hookspec
def turn_ended(session_id: str, prompt_id: int) -> Awaitable[None] | None:
    """Called when the agent's work on a prompt is over, before the turn's end is announced.

    May be async. Raising marks the turn as failed (the error is shown), never leaves it running."""
    raise NotImplementedError
