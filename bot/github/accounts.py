"""People's linked GitHub accounts: who they are on GitHub and a current user token for them.

Tokens are stored sealed (crypto.py). A token close to expiry is refreshed first; GitHub rotates
the refresh token on every refresh (the old one stops working), so refreshes of one person are
serialized and the new pair is saved before the token is used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import select

from bot.github.crypto import TokenCipher, TokenUnreadable
from bot.github.oauth import GitHubOAuth, GitHubUser, OAuthError, UserTokens
from bot.store.db import Database
from bot.store.tables import GitHubAccountRow
from bot.util.keyed_locks import KeyedLocks

log = logging.getLogger(__name__)

REFRESH_BEFORE = 300.0
"""Seconds before expiry that a user token is refreshed."""


@dataclass(frozen=True, slots=True)
class LinkedAccount:
    user_id: str
    github_id: int
    login: str
    name: str | None
    email: str | None

    @property
    def noreply_email(self) -> str:
        """The address GitHub attributes commits by, without exposing the person's own."""
        return f"{self.github_id}+{self.login}@users.noreply.github.com"


class NotLinked(Exception):
    """The person has no usable linked account (never linked, or the link lapsed)."""


class GitHubAccounts:
    def __init__(self, db: Database, oauth: GitHubOAuth | None, cipher: TokenCipher):
        self.db = db
        self.oauth = oauth
        self.cipher = cipher
        self._locks = KeyedLocks()

    async def link(self, user_id: str, tokens: UserTokens, who: GitHubUser) -> LinkedAccount:
        await self._save(user_id, tokens, who)
        return LinkedAccount(user_id, who.id, who.login, who.name, who.email)

    async def get(self, user_id: str) -> LinkedAccount | None:
        async with self.db.session() as s:
            row = await s.get(GitHubAccountRow, user_id)
        return LinkedAccount(row.user_id, row.github_id, row.login, row.name, row.email) if row else None

    async def by_github_id(self, github_id: int) -> str | None:
        async with self.db.session() as s:
            return (await s.execute(select(GitHubAccountRow.user_id).where(GitHubAccountRow.github_id == github_id)
                                    .limit(1))).scalar_one_or_none()

    async def token(self, user_id: str) -> str:
        """A user token good for a few minutes at least; raises NotLinked."""
        async with self._locks.hold(user_id):  # one refresh at a time: each one spends the refresh token
            async with self.db.session() as s:
                row = await s.get(GitHubAccountRow, user_id)
            if row is None:
                raise NotLinked(user_id)
            try:
                access = self.cipher.open(row.access_token)
                if row.access_expires_at is None or row.access_expires_at - time.time() > REFRESH_BEFORE:
                    return access
                if row.refresh_token is None or self.oauth is None or (
                        row.refresh_expires_at is not None and row.refresh_expires_at <= time.time()):
                    raise NotLinked(user_id)
                tokens = await self.oauth.refresh(self.cipher.open(row.refresh_token))
            except (TokenUnreadable, OAuthError) as exc:
                log.warning("the GitHub link of %s lapsed: %s", user_id, exc)
                raise NotLinked(user_id) from None
            await self._save(user_id, tokens, GitHubUser(row.github_id, row.login, row.name, row.email))
            return tokens.access

    async def _save(self, user_id: str, tokens: UserTokens, who: GitHubUser) -> None:
        row = GitHubAccountRow(
            user_id=user_id, github_id=who.id, login=who.login, name=who.name, email=who.email,
            access_token=self.cipher.seal(tokens.access), access_expires_at=tokens.access_expires_at,
            refresh_token=self.cipher.seal(tokens.refresh) if tokens.refresh else None,
            refresh_expires_at=tokens.refresh_expires_at, updated_at=time.time())
        async with self.db.session() as s, s.begin():
            await s.merge(row)
