"""Sub-sessions as agent tools, one plugin: `spawn_session`, `session_status`, `send_to_session` and
`cancel_session`, and a paragraph of the system prompt on when to use them.

The sessions layer hands in what each does (`SubSessionCalls`, bot/sessions/children.py), so the
agent stays free of sessions. A refusal (a limit, a repository the person may not use, an id that
is not one of this session's sub-sessions) is a `ToolError`: the model reads it and goes on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, Field

from bot.agent.hookspecs import hookimpl
from bot.agent.tools import Tool, ToolContext, ToolError

MAX_WAIT = 300


@dataclass(frozen=True)
class SubSessionCalls:
    """What the tools do, given the calling session's id first; each returns text for the model and
    raises ToolError when refused."""

    spawn: Callable[[str, str, str, str], Awaitable[str]]
    """(session, repo, prompt, title) → the new sub-session's id, at once."""
    status: Callable[[str, str, float], Awaitable[str]]
    """(session, child id, seconds to wait for it to go idle) → its state, latest turn and PR."""
    send: Callable[[str, str, str], Awaitable[str]]
    """(session, child id, prompt) → queued."""
    cancel: Callable[[str, str], Awaitable[str]]
    """(session, child id) → stopped (its running turn, its queue and its own sub-sessions)."""
    context: Callable[[str], str | None]
    """(session) → what the system prompt says about sub-sessions there."""


class SpawnSession:
    name: ClassVar[str] = "spawn_session"
    writes: ClassVar[bool] = False
    description: ClassVar[str] = (
        "Start a sub-session: another agent with its own sandbox, checkout and branch of `repo`, working on `prompt` "
        "in parallel with you, in the name of the person you work for. Returns its id at once; it does not report "
        "back by itself: ask with session_status. Write the prompt so it stands alone (the sub-session does not see "
        "this conversation) and say what it should answer with."
    )

    class Args(BaseModel):
        repo: str = Field(min_length=1, max_length=200, description="The repository, as owner/name.")
        prompt: str = Field(min_length=1, max_length=20_000, description="The complete task for the sub-session.")
        title: str = Field(min_length=1, max_length=200, description="A short title people see in lists and the thread.")

    def __init__(self, calls: SubSessionCalls):
        self._calls = calls

    async def run(self, args: Args, ctx: ToolContext) -> str:
        return await self._calls.spawn(ctx.session_id, args.repo, args.prompt, args.title)


class SessionStatus:
    name: ClassVar[str] = "session_status"
    writes: ClassVar[bool] = False
    description: ClassVar[str] = (
        "The state of one of your sub-sessions: working or idle, its latest turn's outcome and the end of its "
        "answer, files it changed, and its pull request. With `wait_seconds`, first wait up to that long for it "
        "to finish what it is doing (do your own work before waiting)."
    )

    class Args(BaseModel):
        id: str = Field(min_length=1, max_length=64, description="The sub-session's id (from spawn_session).")
        wait_seconds: int = Field(0, ge=0, le=MAX_WAIT, description=f"Wait up to this long (0 to {MAX_WAIT}) for it to go idle.")

    def __init__(self, calls: SubSessionCalls):
        self._calls = calls

    async def run(self, args: Args, ctx: ToolContext) -> str:
        return await self._calls.status(ctx.session_id, args.id.strip(), float(args.wait_seconds))


class SendToSession:
    name: ClassVar[str] = "send_to_session"
    writes: ClassVar[bool] = False
    description: ClassVar[str] = (
        "Queue a follow-up prompt on one of your sub-sessions (it runs after what it is doing now); it sees its "
        "own conversation, not yours."
    )

    class Args(BaseModel):
        id: str = Field(min_length=1, max_length=64, description="The sub-session's id.")
        prompt: str = Field(min_length=1, max_length=20_000, description="The follow-up.")

    def __init__(self, calls: SubSessionCalls):
        self._calls = calls

    async def run(self, args: Args, ctx: ToolContext) -> str:
        return await self._calls.send(ctx.session_id, args.id.strip(), args.prompt)


class CancelSession:
    name: ClassVar[str] = "cancel_session"
    writes: ClassVar[bool] = False
    description: ClassVar[str] = (
        "Stop one of your sub-sessions: its running turn, its queued prompts and its own sub-sessions."
    )

    class Args(BaseModel):
        id: str = Field(min_length=1, max_length=64, description="The sub-session's id.")

    def __init__(self, calls: SubSessionCalls):
        self._calls = calls

    async def run(self, args: Args, ctx: ToolContext) -> str:
        return await self._calls.cancel(ctx.session_id, args.id.strip())


class SubSessionPlugin:
    def __init__(self, calls: SubSessionCalls):
        self._calls = calls
        self._tools: list[Tool] = [SpawnSession(calls), SessionStatus(calls), SendToSession(calls), CancelSession(calls)]

    @hookimpl
    def register_tools(self) -> list[Tool]:
        return list(self._tools)

    @hookimpl
    def session_context(self, session_id: str) -> str | None:
        return self._calls.context(session_id)


__all__ = ["SubSessionCalls", "SubSessionPlugin", "ToolError"]
