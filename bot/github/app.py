"""The GitHub App: its installation tokens (one per installation, cached until a few minutes
before they expire) and its bot identity (the committer of every commit the agent makes).

PyGithub is synchronous (requests); its calls run in a thread. A token is handed to the one
git command or API call that needs it and kept nowhere else (see bot/sessions/pull_requests.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from github import Auth, Github, GithubException, GithubIntegration

from bot.config import Settings
from bot.util.keyed_locks import KeyedLocks

RENEW_BEFORE = 300.0
"""Seconds before expiry that a cached installation token is replaced."""


class AppUnavailable(Exception):
    """The App cannot act on this repository (not installed there, or GitHub refused); for people."""


@dataclass(frozen=True, slots=True)
class BotIdentity:
    name: str
    email: str


class AppTokens:
    def __init__(self, settings: Settings):
        assert settings.github_app_private_key is not None
        self.api_url = settings.github_api_url
        self._integration = GithubIntegration(
            auth=Auth.AppAuth(int(settings.github_app_id), settings.github_app_private_key.get_secret_value()),
            base_url=self.api_url, seconds_between_requests=None, seconds_between_writes=None)
        self._installations: dict[str, int] = {}
        self._tokens: dict[int, tuple[str, float]] = {}
        self._locks = KeyedLocks()
        self._identity: BotIdentity | None = None

    async def token(self, repo: str) -> str:
        """An installation token that can read and push `owner/name`."""
        owner, _, name = repo.partition("/")
        async with self._locks.hold(repo):
            try:
                installation = self._installations.get(repo)
                if installation is None:
                    found = await asyncio.to_thread(self._integration.get_repo_installation, owner, name)
                    installation = self._installations[repo] = int(found.id)
                cached = self._tokens.get(installation)
                if cached is not None and cached[1] - time.time() > RENEW_BEFORE:
                    return cached[0]
                auth = await asyncio.to_thread(self._integration.get_access_token, installation)
            except GithubException as exc:
                self._installations.pop(repo, None)
                if exc.status == 404:
                    raise AppUnavailable(f"The GitHub App is not installed on {repo}.") from None
                raise AppUnavailable(f"GitHub refused the App's token request for {repo} ({exc.status}).") from None
            expires = auth.expires_at.timestamp() if auth.expires_at else time.time() + 3600
            self._tokens[installation] = (auth.token, expires)
            return str(auth.token)

    async def identity(self, repo: str) -> BotIdentity:
        """`slug[bot]` and its noreply address: how GitHub shows the App as a committer."""
        if self._identity is None:
            token = await self.token(repo)

            def ask() -> BotIdentity:
                slug = self._integration.get_app().slug
                login = f"{slug}[bot]"
                bot = Github(base_url=self.api_url, auth=Auth.Token(token)).get_user(login)
                return BotIdentity(login, f"{bot.id}+{login}@users.noreply.github.com")

            try:
                self._identity = await asyncio.to_thread(ask)
            except GithubException as exc:
                raise AppUnavailable(f"GitHub did not say who the App is ({exc.status}).") from None
        return self._identity
