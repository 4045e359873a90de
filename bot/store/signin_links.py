"""Personal, single-use web sign-in links: minted by a surface that knows who the person is (the
Slack App Home), redeemed once by the web. Only a hash of the token is stored, so the table
gives nothing away; a redeemed or expired link signs nobody in."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update

from bot.store.db import Database
from bot.store.tables import SignInLinkRow

LINK_TTL = 600.0
"""Seconds a sign-in link stays valid."""


@dataclass(frozen=True, slots=True)
class LinkedPerson:
    user_id: str
    name: str | None
    team: str | None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SignInLinks:
    def __init__(self, db: Database, ttl: float = LINK_TTL):
        self.db = db
        self.ttl = ttl

    async def mint(self, user_id: str, name: str | None, team: str | None) -> str:
        """A new token for this person; the caller builds the URL."""
        token = secrets.token_urlsafe(32)
        async with self.db.session() as s, s.begin():
            s.add(SignInLinkRow(token_hash=_hash(token), user_id=user_id, name=name, team=team,
                                expires_at=time.time() + self.ttl))
        return token

    async def redeem(self, token: str) -> LinkedPerson | None:
        """The person the link was minted for, once; None when unknown, used or expired."""
        now = time.time()
        digest = _hash(token)
        async with self.db.session() as s, s.begin():
            # One conditional update decides the race: two redeemers of one link, one wins.
            result = cast(CursorResult[Any], await s.execute(
                update(SignInLinkRow)
                .where(SignInLinkRow.token_hash == digest, SignInLinkRow.used_at.is_(None), SignInLinkRow.expires_at > now)
                .values(used_at=now)))
            if result.rowcount != 1:
                return None
            row = (await s.execute(select(SignInLinkRow).where(SignInLinkRow.token_hash == digest))).scalar_one()
            return LinkedPerson(row.user_id, row.name, row.team)

    async def prune(self) -> int:
        """Drop links that expired (used or not) more than a day ago."""
        async with self.db.session() as s, s.begin():
            result = cast(CursorResult[Any], await s.execute(
                delete(SignInLinkRow).where(SignInLinkRow.expires_at < time.time() - 86400)))
            return result.rowcount
