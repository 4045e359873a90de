"""The agent's `open_pull_request` tool, as a plugin: the sessions layer hands in how a PR is
opened (for the person whose prompt is running), so the agent stays free of GitHub."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from pydantic import BaseModel, Field

from bot.agent.hookspecs import hookimpl
from bot.agent.tools import Tool, ToolContext, ToolError

OpenPullRequest = Callable[[str, str, str], Awaitable[str]]
"""(session id, title, body) → what happened, for the model; raises ToolError when refused."""


class OpenPullRequestTool:
    name: ClassVar[str] = "open_pull_request"
    description: ClassVar[str] = (
        "Commit everything changed in the repository and open a pull request for it in the name of the person "
        "who asked (or push to the session's existing pull request). Use it when the work is done and checked, "
        "or when someone asks for a PR. Returns the PR's URL."
    )
    writes: ClassVar[bool] = True
    needs_workspace: ClassVar[bool] = True

    class Args(BaseModel):
        title: str = Field(min_length=1, max_length=250, description="The PR's title, imperative, under 72 characters.")
        body: str = Field("", max_length=20_000, description="What changed and why, and how it was checked (Markdown).")

    def __init__(self, opener: OpenPullRequest):
        self._opener = opener

    async def run(self, args: Args, ctx: ToolContext) -> str:
        return await self._opener(ctx.session_id, args.title, args.body)


class PullRequestPlugin:
    def __init__(self, opener: OpenPullRequest):
        self._tool = OpenPullRequestTool(opener)

    @hookimpl
    def register_tools(self) -> list[Tool]:
        return [self._tool]


__all__ = ["OpenPullRequest", "PullRequestPlugin", "ToolError"]
