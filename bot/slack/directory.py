"""Slack's people, for the access rules: guest or member, this organisation or another (Slack
Connect), and membership of the user groups ALLOW_USERGROUPS names.

`users.info` and `usergroups.users.list` answers are cached for a few minutes (Slack rate-limits
both; a person's status rarely changes mid-conversation). A failed lookup raises
DirectoryUnavailable so the rules fail closed, except `user_not_found`, which means Slack will
not show us this person: someone from outside.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cachetools import TTLCache
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.events import Author
from bot.sessions.access import DirectoryUnavailable, Person

log = logging.getLogger(__name__)

TTL = 300.0
"""Seconds a person's or a user group's answer is reused."""
_UserInfo = tuple[bool, str | None, str | None, bool, str | None, str | None]
"""(guest, team_id, enterprise_id, unknown, display name, email) of a Slack user."""


class SlackDirectory:
    def __init__(self, web: AsyncWebClient):
        self.web = web
        self._team: tuple[str | None, str | None] | None = None
        self._users: TTLCache[str, _UserInfo] = TTLCache(maxsize=10_000, ttl=TTL)
        self._groups: TTLCache[str, frozenset[str]] = TTLCache(maxsize=1000, ttl=TTL)
        self._lock = asyncio.Lock()
        self._asking: dict[str, asyncio.Future[_UserInfo]] = {}
        """users.info calls in flight: a burst of one person's mentions asks Slack once."""

    async def person(self, author: Author, groups: frozenset[str]) -> Person:
        team, enterprise = await self._own_team()
        guest, user_team, user_enterprise, unknown, _, _ = await self._user(author.id)
        same_org = (user_team == team) or (enterprise is not None and user_enterprise == enterprise)
        event_team_foreign = author.team is not None and author.team != team and not (
            enterprise is not None and user_enterprise == enterprise)
        external = unknown or not same_org or event_team_foreign
        member_of = frozenset([g for g in sorted(groups) if author.id in await self._members(g)])
        return Person(author.id, guest=guest, external=external, groups=member_of)

    async def display_name(self, user: str) -> str | None:
        """How Slack shows this person (display name, else real name); None when it cannot tell."""
        try:
            return (await self._user(user))[4]
        except DirectoryUnavailable:
            return None

    def known_name(self, user: str) -> str | None:
        """The name from the last lookup, if it is still cached (never calls Slack)."""
        cached = self._users.get(user)
        return cached[4] if cached is not None else None

    def known_email(self, user: str) -> str | None:
        """The profile's email from the last lookup (needs `users:read.email`), if cached."""
        cached = self._users.get(user)
        return cached[5] if cached is not None else None

    async def _own_team(self) -> tuple[str | None, str | None]:
        if self._team is None:
            async with self._lock:
                if self._team is None:
                    auth = await self._call("auth.test")
                    self._team = (auth.get("team_id"), auth.get("enterprise_id") or None)
        return self._team

    async def _user(self, user: str) -> _UserInfo:
        if (cached := self._users.get(user)) is not None:
            return cached
        if (asking := self._asking.get(user)) is not None:
            return await asyncio.shield(asking)
        future = self._asking[user] = asyncio.get_running_loop().create_future()
        try:
            answer = await self._ask_user(user)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._asking[user]
        future.set_result(answer)
        return answer

    async def _ask_user(self, user: str) -> _UserInfo:
        try:
            info = (await self._call("users.info", user=user)).get("user") or {}
        except _NotFound:
            answer: _UserInfo = (False, None, None, True, None, None)
        else:
            guest = bool(info.get("is_restricted") or info.get("is_ultra_restricted"))
            enterprise = (info.get("enterprise_user") or {}).get("enterprise_id")
            profile = info.get("profile") or {}
            name = profile.get("display_name") or profile.get("real_name") or info.get("real_name") or info.get("name")
            email = profile.get("email")
            answer = (guest, info.get("team_id"), enterprise, False, str(name) if name else None,
                      str(email) if email else None)
        self._users[user] = answer
        return answer

    async def _members(self, group: str) -> frozenset[str]:
        if (cached := self._groups.get(group)) is not None:
            return cached
        try:
            users = (await self._call("usergroups.users.list", usergroup=group)).get("users") or []
        except _NotFound:
            log.warning("ALLOW_USERGROUPS: Slack does not know the user group %s", group)
            users = []
        members = frozenset(str(u) for u in users)
        self._groups[group] = members
        return members

    async def _call(self, method: str, **params: str) -> dict[str, Any]:
        try:
            response = await self.web.api_call(method, http_verb="GET", params=params)
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error in ("user_not_found", "users_not_found", "no_such_subteam", "subteam_not_found"):
                raise _NotFound(str(error)) from None
            raise DirectoryUnavailable(f"{method}: {error}") from None
        except Exception as exc:
            raise DirectoryUnavailable(f"{method}: {type(exc).__name__}") from None
        return dict(response.data) if isinstance(response.data, dict) else {}


class _NotFound(Exception):
    pass
