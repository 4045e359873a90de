"""Which Slack messages were already handled, kept in the central DB so a redelivery after a
restart (or to another instance) is still recognised.

Most duplicates come at once (a mention arrives as `app_mention` and as `message`): a bounded
memory of recent keys answers those without the database; the database decides the rest, with
an insert that skips a key already there (no exception, so it can share a batched transaction).
"""

from __future__ import annotations

import time
from typing import Any, cast

from cachetools import TTLCache
from sqlalchemy import CursorResult, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.store.batch import BatchWriter
from bot.store.db import Database
from bot.store.tables import SlackEventRow

KEEP_SECONDS = 24 * 3600  # Slack stops retrying long before this
RECENT = 10_000
"""Keys remembered in memory (for 10 minutes): the duplicates that follow within seconds."""


class ProcessedEvents:
    def __init__(self, db: Database, writer: BatchWriter | None = None):
        self.db = db
        self.writer = writer or BatchWriter(db)
        self._recent: TTLCache[str, bool] = TTLCache(maxsize=RECENT, ttl=600)

    async def first_time(self, key: str) -> bool:
        """Record the key; True only for the first caller, even under concurrency."""
        if key in self._recent:
            return False
        self._recent[key] = True
        dialect = postgresql if self.db.engine.dialect.name == "postgresql" else sqlite

        async def insert(s: AsyncSession) -> bool:
            statement = dialect.insert(SlackEventRow).values(key=key, received_at=time.time()).on_conflict_do_nothing()
            return cast(CursorResult[Any], await s.execute(statement)).rowcount == 1

        try:
            return await self.writer.write(insert)
        except BaseException:
            self._recent.pop(key, None)
            raise

    async def prune(self) -> int:
        async with self.db.session() as s, s.begin():
            result = cast(CursorResult[Any], await s.execute(
                delete(SlackEventRow).where(SlackEventRow.received_at < time.time() - KEEP_SECONDS)))
        return result.rowcount or 0

    async def forget(self, key: str) -> None:
        """Handling failed: a redelivery of the same message is handled again."""
        self._recent.pop(key, None)
        async with self.db.session() as s, s.begin():
            await s.execute(delete(SlackEventRow).where(SlackEventRow.key == key))
