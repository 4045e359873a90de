"""The GitHub App's credentials for git: remotes on the GitHub host (that of GITHUB_WEB_URL, https
or http) get an installation token for the one command that fetches or pushes."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from bot.github.app import AppTokens, AppUnavailable
from bot.repos import Repo
from sandbox.gitauth import GitCredentials, token_env

log = logging.getLogger(__name__)


def on_github(url: str, web_url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == urlsplit(web_url).netloc.lower()


def app_credentials(tokens: AppTokens, web_url: str) -> GitCredentials:
    async def credentials(repo: Repo) -> dict[str, str]:
        if not on_github(repo.clone_url or "", web_url):
            return {}
        try:
            return token_env(await tokens.token(repo.name))
        except AppUnavailable as exc:
            log.warning("no App token for %s (%s); git goes without one", repo.name, exc)
            return {}

    return credentials
