"""A plugin whose turn-end hook fails, as a team's buggy notification plugin would."""

from __future__ import annotations

from bot.agent.hookspecs import hookimpl


class BrokenNotifier:
    @hookimpl
    async def turn_ended(self, session_id: str, prompt_id: int) -> None:
        if prompt_id == 1:
            raise ConnectionError("the notification service is down")


class BrokenPolicy:
    """A policy plugin that fails while checking a call (a policy service that is down): the turn ends."""

    @hookimpl
    async def tool_execute_before(self, call: object, ctx: object) -> None:
        if getattr(call, "name", "") == "post_note":
            raise ConnectionError("the policy service at https://policy.internal is down")
