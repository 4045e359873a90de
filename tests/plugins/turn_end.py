"""A plugin whose turn-end hook fails, as a team's buggy notification plugin would."""

from __future__ import annotations

from bot.agent.hookspecs import hookimpl


class BrokenNotifier:
    @hookimpl
    async def turn_ended(self, session_id: str, prompt_id: int) -> None:
        if prompt_id == 1:
            raise ConnectionError("the notification service is down")
