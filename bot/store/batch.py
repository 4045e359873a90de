"""Central-database writes of many concurrent sessions, committed together.

A burst of mentions means a burst of small writes (processed events, session rows, statuses,
turn metrics). One transaction each costs a commit and a session's setup on the event loop;
here every write waiting when a transaction starts joins it, so under load the writes of a
burst share a few commits, and when the service is quiet a write goes out at once. If a shared
transaction fails, its writes are retried one by one, so each caller gets its own result or
its own error (e.g. an IntegrityError) and no write is lost to a neighbour's failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from bot.store.db import Database

log = logging.getLogger(__name__)

T = TypeVar("T")
Write = Callable[[AsyncSession], Awaitable[Any]]
MAX_BATCH = 500


class BatchWriter:
    def __init__(self, db: Database):
        self.db = db
        self._waiting: list[tuple[Write, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, op: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `op` inside a transaction (shared with other waiting writes) and return its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append((op, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="central-db-writer")
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            live = [(op, f) for op, f in batch if not f.cancelled()]
            if not live:
                continue
            try:
                results = await self._together(live)
            except Exception:
                await self._one_by_one(live)
            else:
                for (_, future), result in zip(live, results, strict=True):
                    if not future.done():
                        future.set_result(result)

    async def _together(self, batch: list[tuple[Write, asyncio.Future[Any]]]) -> list[Any]:
        async with self.db.session() as session, session.begin():
            return [await op(session) for op, _ in batch]

    async def _one_by_one(self, batch: list[tuple[Write, asyncio.Future[Any]]]) -> None:
        for op, future in batch:
            try:
                async with self.db.session() as session, session.begin():
                    result = await op(session)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        """Let the writes already waiting land."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
