"""Requests held until someone picks their repository; in the central DB so a restart keeps them."""

from __future__ import annotations

import secrets
import time

from sqlalchemy import select, update

from bot.store.db import Database
from bot.store.tables import PendingRequestRow

WAITING, STARTED, EXPIRED = "waiting", "started", "expired"


class PendingRequests:
    def __init__(self, db: Database, ttl: float):
        self.db = db
        self.ttl = ttl

    async def hold(self, channel: str, thread_ts: str, message_ts: str, user: str, text: str) -> PendingRequestRow:
        row = PendingRequestRow(id=secrets.token_hex(8), channel=channel, thread_ts=thread_ts, message_ts=message_ts,
                                user=user, text=text, status=WAITING, created_at=time.time())
        async with self.db.session() as s, s.begin():
            s.add(row)
        return row

    async def set_prompt(self, pending_id: str, prompt_ts: str) -> None:
        async with self.db.session() as s, s.begin():
            await s.execute(update(PendingRequestRow).where(PendingRequestRow.id == pending_id).values(prompt_ts=prompt_ts))

    async def get(self, pending_id: str) -> PendingRequestRow | None:
        async with self.db.session() as s:
            return await s.get(PendingRequestRow, pending_id)

    async def pick(self, pending_id: str, repo: str, by: str) -> PendingRequestRow | None:
        """Start the request with this repo; None if it was picked already or has expired (once only)."""
        async with self.db.session() as s, s.begin():
            result = await s.execute(
                update(PendingRequestRow)
                .where(PendingRequestRow.id == pending_id, PendingRequestRow.status == WAITING,
                       PendingRequestRow.created_at >= time.time() - self.ttl)
                .values(status=STARTED, repo=repo, picked_by=by)
            )
        return await self.get(pending_id) if result.rowcount == 1 else None

    async def expire_due(self) -> list[PendingRequestRow]:
        """Mark the requests that waited too long as expired and return them."""
        cutoff = time.time() - self.ttl
        async with self.db.session() as s:
            due = list((await s.execute(
                select(PendingRequestRow).where(PendingRequestRow.status == WAITING, PendingRequestRow.created_at < cutoff)
            )).scalars())
        expired = []
        for row in due:
            async with self.db.session() as s, s.begin():
                result = await s.execute(
                    update(PendingRequestRow).where(PendingRequestRow.id == row.id, PendingRequestRow.status == WAITING)
                    .values(status=EXPIRED)
                )
            if result.rowcount == 1:
                expired.append(row)
        return expired
