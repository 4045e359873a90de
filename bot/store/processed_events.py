"""Which Slack messages were already handled, kept in the central DB so a redelivery after a
restart (or to another instance) is still recognised."""

from __future__ import annotations

import time
from typing import Any, cast

from sqlalchemy import CursorResult, delete
from sqlalchemy.exc import IntegrityError

from bot.store.db import Database
from bot.store.tables import SlackEventRow

KEEP_SECONDS = 24 * 3600  # Slack stops retrying long before this


class ProcessedEvents:
    def __init__(self, db: Database):
        self.db = db

    async def first_time(self, key: str) -> bool:
        """Record the key; True only for the first caller, even under concurrency."""
        try:
            async with self.db.session() as s, s.begin():
                s.add(SlackEventRow(key=key, received_at=time.time()))
        except IntegrityError:
            return False
        return True

    async def prune(self) -> int:
        async with self.db.session() as s, s.begin():
            result = cast(CursorResult[Any], await s.execute(
                delete(SlackEventRow).where(SlackEventRow.received_at < time.time() - KEEP_SECONDS)))
        return result.rowcount or 0

    async def forget(self, key: str) -> None:
        """Handling failed: a redelivery of the same message is handled again."""
        async with self.db.session() as s, s.begin():
            await s.execute(delete(SlackEventRow).where(SlackEventRow.key == key))
