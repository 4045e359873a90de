"""Housekeeping jobs run once per interval across instances, not once per instance.

Each instance's scheduler fires every job; before running, it claims the run in the database
with one conditional upsert (the row's `last_run_at` must be older than most of the interval),
so of N instances firing together exactly one wins. With SQLite there is one instance: every
claim wins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import text

from bot.store.db import Database

Job = Callable[[], Awaitable[object]]


class JobRuns:
    def __init__(self, db: Database):
        self.db = db

    async def claim(self, name: str, every: float) -> bool:
        """True when this instance runs `name` now (nobody did within 90% of `every` seconds)."""
        if self.db.engine.dialect.name != "postgresql":
            return True
        async with self.db.engine.begin() as conn:
            won = (await conn.execute(text(
                "INSERT INTO job_runs (name, last_run_at) VALUES (:name, now())"
                " ON CONFLICT (name) DO UPDATE SET last_run_at = now()"
                " WHERE job_runs.last_run_at <= now() - make_interval(secs => :window) RETURNING name"),
                {"name": name, "window": every * 0.9})).first()
        return won is not None

    def once(self, name: str, every: float, job: Job) -> Job:
        """`job`, run only when this instance claims the interval's run."""
        async def run() -> object:
            return await job() if await self.claim(name, every) else None

        run.__name__ = name
        return run
