"""Warm-ups and what became of them, and places' default repositories: small records that the
stats (and people) read later."""

from __future__ import annotations

import time
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update

from bot.store.db import Database
from bot.store.tables import RepoDefaultRow, WarmUpRow


class WarmUps:
    def __init__(self, db: Database, ttl: float):
        self.db = db
        self.ttl = ttl

    async def record(self, trigger: str, repo: str, user_id: str | None) -> int:
        row = WarmUpRow(trigger=trigger, repo=repo, user_id=user_id, created_at=time.time())
        async with self.db.session() as s, s.begin():
            s.add(row)
        return row.id

    async def claim(self, user_id: str, repo: str, session_id: str) -> WarmUpRow | None:
        """The person's latest warm-up of this repo still waiting for a session, now this one's."""
        async with self.db.session() as s, s.begin():
            row = (await s.execute(
                select(WarmUpRow).where(WarmUpRow.user_id == user_id, WarmUpRow.repo == repo,
                                        WarmUpRow.session_id.is_(None), WarmUpRow.used.is_(None),
                                        WarmUpRow.created_at > time.time() - self.ttl)
                .order_by(WarmUpRow.created_at.desc()).limit(1))).scalar_one_or_none()
            if row is not None:
                row.session_id = session_id
            return row

    async def settle(self, session_id: str, used: bool, saved_ms: float | None) -> None:
        async with self.db.session() as s, s.begin():
            await s.execute(update(WarmUpRow).where(WarmUpRow.session_id == session_id, WarmUpRow.used.is_(None))
                            .values(used=used, saved_ms=saved_ms))

    async def expire(self) -> int:
        """Warm-ups no session took within the TTL: unused."""
        async with self.db.session() as s, s.begin():
            result = cast(CursorResult[Any], await s.execute(
                update(WarmUpRow).where(WarmUpRow.used.is_(None), WarmUpRow.session_id.is_(None),
                                        WarmUpRow.created_at <= time.time() - self.ttl).values(used=False)))
            return result.rowcount

    async def counts(self) -> dict[str, int]:
        async with self.db.session() as s:
            rows = (await s.execute(select(WarmUpRow.used, func.count()).group_by(WarmUpRow.used))).all()
        named = {True: "used", False: "unused", None: "pending"}
        return {named[used]: int(n) for used, n in rows}


class RepoDefaults:
    def __init__(self, db: Database):
        self.db = db
        self._cache: dict[str, str | None] = {}

    async def get(self, place: str) -> str | None:
        if place not in self._cache:
            async with self.db.session() as s:
                row = await s.get(RepoDefaultRow, place)
            self._cache[place] = row.repo if row else None
        return self._cache[place]

    async def set(self, place: str, repo: str, by: str) -> None:
        async with self.db.session() as s, s.begin():
            await s.merge(RepoDefaultRow(place=place, repo=repo, set_by=by, set_at=time.time()))
        self._cache[place] = repo

    async def set_by(self, user_id: str) -> list[tuple[str, str]]:
        """(place, repo) of the defaults this person set."""
        async with self.db.session() as s:
            rows = (await s.execute(select(RepoDefaultRow.place, RepoDefaultRow.repo)
                                    .where(RepoDefaultRow.set_by == user_id).order_by(RepoDefaultRow.place))).all()
        return [(p, r) for p, r in rows]
