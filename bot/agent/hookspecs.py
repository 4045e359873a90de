"""Every plugin hook, with its contract. Plugins implement these with `@hookimpl` and load from
the `hosted_agents` entry-point group or from the PLUGINS setting (`module:attribute`)."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from bot.agent.tools import ToolContext, ToolOutcome

PROJECT = "hosted_agents"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


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


@hookspec
def tool_execute_before(call: ToolCall, ctx: ToolContext) -> BeforeResult | Awaitable[BeforeResult]:
    """Called before every tool call, after its arguments were validated.

    Return None to let it run; a `Block` to refuse it (the model sees the reason); a dict to
    replace its arguments (validated again); or an awaitable of one of these, to wait for
    something first (the git-sync gate waits for the sync this way). Raise to end the turn.
    """


@hookspec
def tool_execute_after(call: ToolCall, ctx: ToolContext, outcome: ToolOutcome) -> Awaitable[None] | None:
    """Called after every tool call with its outcome; for observing, not changing. May be async."""


@hookspec
def session_context(session_id: str, repo: str | None, surfaces: tuple[str, ...]) -> str | None:
    """Text to add to the system prompt of a session's turns (one paragraph, or None).

    `surfaces` are the kinds of place the session is shown in (e.g. `slack_thread`), so a
    surface can tell the model how its answers are read there."""


@hookspec
def turn_ended(session_id: str, prompt_id: int) -> Awaitable[None] | None:
    """Called when the agent's work on a prompt is over, before the turn's end is announced.

    May be async. Raising marks the turn as failed (the error is shown), never leaves it running."""
