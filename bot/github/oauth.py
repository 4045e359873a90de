"""Linking a person's GitHub account: the GitHub App's OAuth web flow, with `state`, PKCE (S256)
and an explicit redirect URI; the code exchange and refreshes at
`{GITHUB_WEB_URL}/login/oauth/access_token`; who they are from the API (`/user`, `/user/emails`).

GitHub answers token requests with HTTP 200 and an `error` field when it refuses; both are
errors here. User tokens of a GitHub App expire (8 hours) and come with a refresh token that
GitHub rotates on every refresh.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp

from bot.config import Settings

TIMEOUT = aiohttp.ClientTimeout(total=20)


class OAuthError(Exception):
    """GitHub refused (the message says why, for the person); `code` is GitHub's error code."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class UserTokens:
    access: str
    access_expires_at: float | None
    refresh: str | None
    refresh_expires_at: float | None


@dataclass(frozen=True, slots=True)
class GitHubUser:
    id: int
    login: str
    name: str | None
    email: str | None


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class GitHubOAuth:
    def __init__(self, settings: Settings):
        assert settings.github_client_secret is not None
        self.client_id = settings.github_client_id
        self._secret = settings.github_client_secret.get_secret_value()
        self.web_url = settings.github_web_url
        self.api_url = settings.github_api_url
        self.redirect_uri = settings.public_url + "/github/callback"

    def authorize_url(self, state: str, challenge: str) -> str:
        query = urlencode({"client_id": self.client_id, "redirect_uri": self.redirect_uri, "state": state,
                           "code_challenge": challenge, "code_challenge_method": "S256", "allow_signup": "false"})
        return f"{self.web_url}/login/oauth/authorize?{query}"

    async def exchange(self, code: str, verifier: str) -> UserTokens:
        return await self._token({"code": code, "code_verifier": verifier, "redirect_uri": self.redirect_uri})

    async def refresh(self, refresh_token: str) -> UserTokens:
        return await self._token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def _token(self, params: dict[str, str]) -> UserTokens:
        form = {"client_id": self.client_id, "client_secret": self._secret, **params}
        started = time.time()
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http, http.post(
                f"{self.web_url}/login/oauth/access_token", data=form, headers={"Accept": "application/json"}) as resp:
            if resp.status != 200:
                raise OAuthError(f"GitHub answered {resp.status} to the token request.")
            answer: dict[str, Any] = await resp.json(content_type=None)
        if answer.get("error") or not answer.get("access_token"):
            code = str(answer.get("error") or "no_token")
            raise OAuthError(str(answer.get("error_description") or code), code)
        return UserTokens(
            access=str(answer["access_token"]),
            access_expires_at=started + float(answer["expires_in"]) if answer.get("expires_in") else None,
            refresh=str(answer["refresh_token"]) if answer.get("refresh_token") else None,
            refresh_expires_at=(started + float(answer["refresh_token_expires_in"])
                                if answer.get("refresh_token_expires_in") else None),
        )

    async def whoami(self, access: str) -> GitHubUser:
        headers = {"Authorization": f"Bearer {access}", "Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": "2022-11-28"}
        async with aiohttp.ClientSession(timeout=TIMEOUT, headers=headers) as http:
            async with http.get(f"{self.api_url}/user") as resp:
                if resp.status != 200:
                    raise OAuthError(f"GitHub answered {resp.status} when asked who you are.")
                user: dict[str, Any] = await resp.json()
            email = user.get("email")
            async with http.get(f"{self.api_url}/user/emails") as resp:
                if resp.status == 200:
                    emails = await resp.json()
                    primary = [e for e in emails if isinstance(e, dict) and e.get("primary") and e.get("verified")]
                    email = primary[0]["email"] if primary else email
        return GitHubUser(int(user["id"]), str(user["login"]), user.get("name") or None, email or None)
