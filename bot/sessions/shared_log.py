"""With PostgreSQL: every session's log in one table, so any instance can show any session.

The owner of a session keeps writing its own SQLite file inline (the hot path stays
microseconds) and this module copies each change, in order, to PostgreSQL a few milliseconds
later: event rows keyed by (session, seq), prompt statuses and refs, in one transaction per
batch, which also announces the new events with `NOTIFY ha_events, '<session>:<seq>'`. Readers
on any instance replay by seq from the table and wake on the notification, so they see every
event once, in order. A new owner rebuilds its SQLite copy from the table (`snapshot`).

An insert that collides on (session, seq) means another instance took the session over while
this one was stalled: the session is given up here (`on_lost`), never written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from sqlalchemy import insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from bot.events import Event
from bot.sessions.log import PAGE, QUEUED, Page, Snapshot, events_of
from bot.store.db import Database
from bot.store.tables import SessionEventRow, SessionPromptRow, SessionRefRow

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "ha_events"
POLL = 5.0
"""Seconds a follower waits for a notification before it looks anyway (a lost connection)."""


class SharedLog:
    """The `Mirror` of every session log this instance owns, and the reader of all of them."""

    def __init__(self, db: Database):
        self.db = db
        self.on_lost: Callable[[str], None] = lambda _sid: None
        self._ops: list[tuple[str, tuple[object, ...]]] = []
        self._pending = asyncio.Event()
        self._queued = 0
        self._written = 0
        self._progress = asyncio.Condition()
        self._writer: asyncio.Task[None] | None = None
        self._followers: dict[str, set[asyncio.Event]] = {}

    # -- Mirror: called inline by SessionLog, written behind --------------------------------

    def event(self, session_id: str, seq: int, ts: float, kind: str, turn: int | None, data: str) -> None:
        self._add("event", (session_id, seq, ts, kind, turn, data))

    def prompt_status(self, session_id: str, prompt_id: int, status: str) -> None:
        self._add("status", (session_id, prompt_id, status))

    def cleared(self, session_id: str) -> None:
        self._add("cleared", (session_id,))

    def ref(self, session_id: str, key: str, value: str) -> None:
        self._add("ref", (session_id, key, value))

    def _add(self, kind: str, args: tuple[object, ...]) -> None:
        self._ops.append((kind, args))
        self._queued += 1
        self._pending.set()

    async def flush(self) -> None:
        """Until everything mirrored so far is in PostgreSQL (a turn is marked running before it runs)."""
        target = self._queued
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target or self._writer is None)

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="shared log writer")

    async def close(self) -> None:
        """Write what is left (a few seconds at most), then stop."""
        if self._writer is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), 5)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None

    async def _write_loop(self) -> None:
        delay = 0.1
        while True:
            await self._pending.wait()
            self._pending.clear()
            ops, self._ops = self._ops, []
            taken = len(ops)
            while ops:
                try:
                    await self._write(ops)
                    delay = 0.1
                    break
                except IntegrityError:
                    ops = await self._drop_lost(ops)
                except Exception as exc:
                    log.warning("writing session events to PostgreSQL failed (%s); retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            async with self._progress:
                self._written += taken
                self._progress.notify_all()

    async def _write(self, ops: list[tuple[str, tuple[object, ...]]]) -> None:
        events: list[dict[str, object]] = []
        last_seq: dict[str, object] = {}
        async with self.db.engine.begin() as conn:
            for kind, args in ops:
                if kind != "event" and events:  # keep the order: events before what follows them
                    await conn.execute(insert(SessionEventRow), events)
                    events = []
                if kind == "event":
                    sid, seq, ts, ev_kind, turn, data = args
                    events.append({"session_id": sid, "seq": seq, "ts": ts, "kind": ev_kind, "turn": turn, "data": data})
                    last_seq[str(sid)] = seq
                elif kind == "status":
                    sid, pid, status = args
                    await conn.execute(update(SessionPromptRow).where(SessionPromptRow.id == pid).values(status=status))
                elif kind == "cleared":
                    await conn.execute(update(SessionPromptRow).where(
                        SessionPromptRow.session_id == args[0], SessionPromptRow.status == QUEUED).values(status="cleared"))
                elif kind == "ref":
                    sid, key, value = args
                    stmt = pg_insert(SessionRefRow).values(session_id=sid, key=key, value=value)
                    await conn.execute(stmt.on_conflict_do_update(index_elements=["session_id", "key"], set_={"value": value}))
            if events:
                await conn.execute(insert(SessionEventRow), events)
            if last_seq:
                payloads = [f"{sid}:{seq}" for sid, seq in last_seq.items()]
                await conn.execute(text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:ps AS text[])) AS p"),
                                   {"channel": EVENTS_CHANNEL, "ps": payloads})

    async def _drop_lost(self, ops: list[tuple[str, tuple[object, ...]]]) -> list[tuple[str, tuple[object, ...]]]:
        """A seq already taken: find the sessions whose events collide, give them up, keep the rest."""
        lost: set[str] = set()
        async with self.db.session() as db:
            for kind, args in ops:
                if kind == "event" and str(args[0]) not in lost:
                    taken = await db.get(SessionEventRow, (args[0], args[1]))
                    if taken is not None:
                        lost.add(str(args[0]))
        for sid in lost:
            log.error("session %s was taken over by another instance; this one stops driving it", sid)
            self.on_lost(sid)
        kept = [(k, a) for k, a in ops if str(a[0]) not in lost]
        if len(kept) == len(ops):
            log.error("dropping %d shared-log writes that PostgreSQL refused", len(ops))
            return []
        return kept

    # -- reading, on any instance ---------------------------------------------------------

    async def page(self, session_id: str, after_seq: int = 0, limit: int = PAGE, upto_seq: int | None = None) -> Page:
        query = (select(SessionEventRow.seq, SessionEventRow.ts, SessionEventRow.kind, SessionEventRow.turn,
                        SessionEventRow.data)
                 .where(SessionEventRow.session_id == session_id, SessionEventRow.seq > after_seq,
                        SessionEventRow.seq <= (upto_seq if upto_seq is not None else 2**62))
                 .order_by(SessionEventRow.seq).limit(limit))
        async with self.db.session() as db:
            rows = [tuple(r) for r in (await db.execute(query)).all()]
        return Page(events_of(rows), int(rows[-1][0]) if rows else after_seq, len(rows) == limit)  # type: ignore[arg-type]

    async def read(self, session_id: str, after_seq: int = 0, upto_seq: int | None = None) -> AsyncIterator[Event]:
        while True:
            page = await self.page(session_id, after_seq, upto_seq=upto_seq)
            for event in page.events:
                yield event
            if not page.full:
                return
            after_seq = page.last_seq

    async def follow(self, session_id: str, after_seq: int = 0) -> AsyncIterator[Event]:
        """Every event after `after_seq`, then live ones as their notifications arrive: no gap, no duplicate."""
        wake = asyncio.Event()
        self._followers.setdefault(session_id, set()).add(wake)
        last = after_seq
        try:
            while True:
                wake.clear()  # before reading: a notification during the read is not missed
                page = await self.page(session_id, last)
                for event in page.events:
                    if event.seq > last:
                        last = event.seq
                        yield event
                last = max(last, page.last_seq)
                if page.full:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL)
        finally:
            followers = self._followers.get(session_id)
            if followers is not None:
                followers.discard(wake)
                if not followers:
                    del self._followers[session_id]

    def notified(self, payload: str) -> None:
        """`NOTIFY ha_events` arrived: wake whoever follows that session here."""
        session_id = payload.partition(":")[0]
        for wake in self._followers.get(session_id, ()):
            wake.set()

    async def snapshot(self, session_id: str) -> Snapshot:
        """The whole shared log of a session, as a new owner copies it."""
        async with self.db.session() as db:
            events = (await db.execute(
                select(SessionEventRow.seq, SessionEventRow.ts, SessionEventRow.kind, SessionEventRow.turn,
                       SessionEventRow.data).where(SessionEventRow.session_id == session_id)
                .order_by(SessionEventRow.seq))).all()
            prompts = (await db.execute(
                select(SessionPromptRow.id, SessionPromptRow.order_key, SessionPromptRow.text, SessionPromptRow.author_id,
                       SessionPromptRow.author_name, SessionPromptRow.source, SessionPromptRow.status,
                       SessionPromptRow.created_at)
                .where(SessionPromptRow.session_id == session_id, SessionPromptRow.status != "inbox")
                .order_by(SessionPromptRow.id))).all()
            refs = (await db.execute(select(SessionRefRow.key, SessionRefRow.value)
                                     .where(SessionRefRow.session_id == session_id))).all()
        return Snapshot([tuple(r) for r in events], [tuple(r) for r in prompts],  # type: ignore[misc]
                        [tuple(r) for r in refs])  # type: ignore[misc]

