"""Requests held until someone picks their repository; in the central DB so a restart keeps them."""

from __future__ import annotations

import secrets
import time
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from bot.store.db import Database
from bot.store.tables import PendingRequestRow

WAITING, STARTED, EXPIRED = "waiting", "started", "expired"


class PendingRequests:
    def __init__(self, db: Database, ttl: float):
        self.db = db
        self.ttl = ttl

    async def hold(self, *, origin: str, author_id: str, author_name: str | None, text: str,
                   surface_kind: str | None, surface_key: str | None, order_key: float | None,
                   channel_id: str | None = None, channel_name: str | None = None) -> PendingRequestRow:
        row = PendingRequestRow(id=secrets.token_hex(8), origin=origin, author_id=author_id, author_name=author_name,
                                text=text, surface_kind=surface_kind, surface_key=surface_key, order_key=order_key,
                                channel_id=channel_id, channel_name=channel_name,
                                status=WAITING, created_at=time.time())
        async with self.db.session() as s, s.begin():
            s.add(row)
        return row

    async def set_ui_ref(self, pending_id: str, ref: str) -> None:
        async with self.db.session() as s, s.begin():
            await s.execute(update(PendingRequestRow).where(PendingRequestRow.id == pending_id).values(ui_ref=ref))

    async def get(self, pending_id: str) -> PendingRequestRow | None:
        async with self.db.session() as s:
            return await s.get(PendingRequestRow, pending_id)

    async def pick(self, pending_id: str, repo: str, by: str) -> PendingRequestRow | None:
        """Start the request with this repo; None if it was picked already or has expired (once only)."""
        async with self.db.session() as s, s.begin():
            result = cast(CursorResult[Any], await s.execute(
                update(PendingRequestRow)
                .where(PendingRequestRow.id == pending_id, PendingRequestRow.status == WAITING,
                       PendingRequestRow.created_at >= time.time() - self.ttl)
                .values(status=STARTED, repo=repo, picked_by=by)
            ))
        return await self.get(pending_id) if result.rowcount == 1 else None

    async def release(self, pending_id: str) -> None:
        """Starting a picked request failed: it waits again, for the next pick."""
        async with self.db.session() as s, s.begin():
            await s.execute(update(PendingRequestRow)
                            .where(PendingRequestRow.id == pending_id, PendingRequestRow.status == STARTED)
                            .values(status=WAITING, repo=None, picked_by=None))

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
                result = cast(CursorResult[Any], await s.execute(
                    update(PendingRequestRow).where(PendingRequestRow.id == row.id, PendingRequestRow.status == WAITING)
                    .values(status=EXPIRED)
                ))
            if result.rowcount == 1:
                row.status = EXPIRED
                expired.append(row)
        return expired
