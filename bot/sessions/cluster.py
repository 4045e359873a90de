"""With PostgreSQL: this process is one of N equal instances, and each session has one owner.

An instance registers a row in `instances` and renews its `expires_at` by a heartbeat; a
session's lease row names its owner and is valid while that owner's row has not expired, so
one UPDATE a few times per lease period renews every lease an instance holds. A lease whose
owner lapsed is taken by whichever instance asks first (one conditional upsert: no two win).

Any instance can be handed a prompt or a command for any session: it writes it to the database
(`session_prompts` with status `inbox`, `session_commands`) and wakes the owner with `NOTIFY`
on the owner's own channel. The owner claims what is there when woken, and also on every
sweep, so a lost notification only delays. Notifications arrive over one dedicated asyncpg
connection per instance (`LISTEN`), reopened if it drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import text

from bot.events import Author, Origin
from bot.sessions.log import QUEUED, Prompt
from bot.sessions.shared_log import EVENTS_CHANNEL
from bot.store.db import Database

log = logging.getLogger(__name__)

INBOX = "inbox"


@dataclass(frozen=True, slots=True)
class Command:
    session_id: str
    kind: str
    """`stop`, `clear` or `event`"""
    payload: dict[str, Any]


def instance_channel(instance_id: str) -> str:
    """The NOTIFY channel an instance listens on (a short, safe identifier)."""
    return "ha_i_" + hashlib.sha256(instance_id.encode()).hexdigest()[:20]


def plain_dsn(database_url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy URL (`postgresql+asyncpg://…` → `postgresql://…`)."""
    scheme, sep, rest = database_url.partition("://")
    return "postgresql" + sep + rest if scheme.startswith("postgresql") else database_url


class Cluster:
    def __init__(self, db: Database, instance_id: str, lease_ttl: float):
        self.db = db
        self.id = instance_id
        self.lease_ttl = lease_ttl
        self.channel = instance_channel(instance_id)
        self.alive = False
        """Our row was renewed within the lease period (else our leases may be someone else's now)."""
        self._listener: asyncpg.Connection | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._on_wake: Callable[[str], None] = lambda _payload: None
        self._on_events: Callable[[str], None] = lambda _payload: None

    # -- membership ---------------------------------------------------------------------

    async def start(self, on_wake: Callable[[str], None], on_events: Callable[[str], None]) -> None:
        self._on_wake, self._on_events = on_wake, on_events
        await self.join()
        await self._listen()
        self._listen_task = asyncio.create_task(self._keep_listening(), name="cluster LISTEN")

    async def join(self) -> None:
        """Register as alive (renewed by `heartbeat`), without listening for work: enough for a
        process whose containers must not look like a dead instance's (the CLI's image builds)."""
        async with self.db.engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO instances (id, host, pid, started_at, expires_at)"
                " VALUES (:id, :host, :pid, now(), now() + make_interval(secs => :ttl))"
                " ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at, pid = EXCLUDED.pid"),
                {"id": self.id, "host": socket.gethostname()[:255], "pid": os.getpid(), "ttl": self.lease_ttl})
        self.alive = True

    async def heartbeat(self) -> bool:
        """Renew our row (and so every lease we hold). False when it had lapsed: we lost them."""
        async with self.db.engine.begin() as conn:
            renewed = (await conn.execute(text(
                "UPDATE instances SET expires_at = now() + make_interval(secs => :ttl)"
                " WHERE id = :id AND expires_at > now() RETURNING id"), {"id": self.id, "ttl": self.lease_ttl})).first()
            if renewed is None:  # lapsed: come back as a new member holding nothing
                await conn.execute(text("DELETE FROM session_leases WHERE owner = :id"), {"id": self.id})
                await conn.execute(text(
                    "UPDATE instances SET expires_at = now() + make_interval(secs => :ttl) WHERE id = :id"),
                    {"id": self.id, "ttl": self.lease_ttl})
        self.alive = renewed is not None
        return self.alive

    async def leave(self) -> None:
        """At shutdown: our leases lapse now, so the others take our sessions over at once."""
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        with contextlib.suppress(Exception):
            async with self.db.engine.begin() as conn:
                await conn.execute(text("UPDATE instances SET expires_at = now() WHERE id = :id"), {"id": self.id})
        self.alive = False

    async def live_instances(self) -> list[str]:
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(text("SELECT id FROM instances WHERE expires_at > now() ORDER BY id"))
            return [str(r[0]) for r in rows]

    async def forget_lapsed(self, older_than: float = 3600) -> None:
        """Rows of instances gone for an hour (their containers were reaped, their sessions taken)."""
        async with self.db.engine.begin() as conn:
            await conn.execute(text(
                "DELETE FROM instances WHERE expires_at < now() - make_interval(secs => :age)"
                " AND NOT EXISTS (SELECT 1 FROM session_leases l WHERE l.owner = instances.id)"), {"age": older_than})

    # -- leases -------------------------------------------------------------------------

    async def acquire(self, session_id: str) -> str | None:
        """Take the session if nobody alive holds it. None when it is ours now; else its owner."""
        async with self.db.engine.begin() as conn:
            mine = (await conn.execute(text(
                "INSERT INTO session_leases (session_id, owner, acquired_at)"
                " SELECT CAST(:sid AS varchar), CAST(:me AS varchar), now()"
                " WHERE EXISTS (SELECT 1 FROM instances WHERE id = CAST(:me AS varchar) AND expires_at > now())"
                " ON CONFLICT (session_id) DO UPDATE SET owner = EXCLUDED.owner, acquired_at = now()"
                " WHERE session_leases.owner = EXCLUDED.owner OR NOT EXISTS ("
                "   SELECT 1 FROM instances i WHERE i.id = session_leases.owner AND i.expires_at > now())"
                " RETURNING owner"), {"sid": session_id, "me": self.id})).first()
            if mine is not None:
                return None
            owner = (await conn.execute(text("SELECT owner FROM session_leases WHERE session_id = :sid"),
                                        {"sid": session_id})).scalar_one_or_none()
        return str(owner) if owner is not None else self.id  # we are lapsed ourselves: nobody to hand it to

    async def orphans(self, limit: int = 100) -> list[str]:
        """Sessions with work (working, or prompts waiting in the inbox) and no live owner."""
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(text(
                "SELECT s.id FROM sessions s"
                " LEFT JOIN session_leases l ON l.session_id = s.id"
                " LEFT JOIN instances i ON i.id = l.owner AND i.expires_at > now()"
                " WHERE i.id IS NULL AND (s.status = 'working' OR EXISTS ("
                "   SELECT 1 FROM session_prompts p WHERE p.session_id = s.id AND p.status = 'inbox'))"
                " ORDER BY s.updated_at LIMIT :limit"), {"limit": limit})
            return [str(r[0]) for r in rows]

    async def owned_with_inbox(self) -> list[str]:
        """Our sessions with prompts not claimed yet (a notification that never came)."""
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(text(
                "SELECT DISTINCT p.session_id FROM session_prompts p JOIN session_leases l ON l.session_id = p.session_id"
                " WHERE p.status = 'inbox' AND l.owner = :me"), {"me": self.id})
            return [str(r[0]) for r in rows]

    def lease_row(self, session_id: str) -> dict[str, Any]:
        """The lease a new session starts with (written with its row: nobody can take it in between)."""
        return {"session_id": session_id, "owner": self.id}

    # -- prompts and commands -------------------------------------------------------------

    async def add_prompt(self, session_id: str, text_: str, author: Author, order_key: float) -> int:
        async with self.db.engine.begin() as conn:
            row = (await conn.execute(text(
                "INSERT INTO session_prompts (session_id, order_key, text, author_id, author_name, source, status, created_at)"
                " VALUES (:sid, :key, :text, :aid, :aname, :source, :status, :at) RETURNING id"),
                {"sid": session_id, "key": order_key, "text": text_, "aid": author.id, "aname": author.name,
                 "source": author.origin.value, "status": INBOX, "at": time.time()})).one()
        return int(row[0])

    async def claim_prompts(self, session_id: str) -> list[Prompt]:
        """The session's inbox, moved to its queue, oldest first; only while we own it."""
        async with self.db.engine.begin() as conn:
            rows = (await conn.execute(text(
                "UPDATE session_prompts SET status = :queued WHERE session_id = :sid AND status = :inbox"
                " AND EXISTS (SELECT 1 FROM session_leases WHERE session_id = :sid AND owner = :me)"
                " RETURNING id, text, author_id, author_name, source, order_key"),
                {"sid": session_id, "me": self.id, "queued": QUEUED, "inbox": INBOX})).all()
        prompts = [Prompt(int(pid), str(txt), Author(id=aid, name=aname, origin=Origin.parse(source)), QUEUED, float(key))
                   for pid, txt, aid, aname, source, key in rows]
        return sorted(prompts, key=lambda p: (p.order_key, p.id))

    async def pending_count(self, session_id: str) -> int:
        """Prompts queued or waiting in the inbox (what a clear would drop), from anywhere."""
        async with self.db.engine.connect() as conn:
            return int((await conn.execute(text(
                "SELECT COUNT(*) FROM session_prompts WHERE session_id = :sid AND status IN (:q, :i)"),
                {"sid": session_id, "q": QUEUED, "i": INBOX})).scalar_one())

    async def send(self, owner: str, command: Command) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO session_commands (owner, session_id, kind, payload) VALUES (:owner, :sid, :kind, :payload)"),
                {"owner": owner, "sid": command.session_id, "kind": command.kind, "payload": json.dumps(command.payload)})
        await self.wake(owner, command.session_id)

    async def take_commands(self) -> list[Command]:
        """Commands for sessions we own (sent to us, or to an owner we took them from), in order."""
        async with self.db.engine.begin() as conn:
            rows = (await conn.execute(text(
                "DELETE FROM session_commands c USING session_leases l"
                " WHERE l.session_id = c.session_id AND l.owner = :me RETURNING c.id, c.session_id, c.kind, c.payload"),
                {"me": self.id})).all()
        return [Command(str(sid), str(kind), json.loads(payload)) for _, sid, kind, payload in sorted(rows)]

    async def wake(self, owner: str, session_id: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(text("SELECT pg_notify(:channel, :sid)"),
                               {"channel": instance_channel(owner), "sid": session_id})

    # -- LISTEN ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(plain_dsn(self.db.url))
        await conn.add_listener(self.channel, lambda *args: self._on_wake(str(args[3])))
        await conn.add_listener(EVENTS_CHANNEL, lambda *args: self._on_events(str(args[3])))
        self._listener = conn

    async def _keep_listening(self) -> None:
        while True:
            await asyncio.sleep(1)
            if self._listener is not None and not self._listener.is_closed():
                continue
            try:
                await self._listen()
                self._on_wake("")  # what was announced while we were away is swept now
            except Exception as exc:
                log.warning("cannot LISTEN on PostgreSQL (%s); retrying", exc)
