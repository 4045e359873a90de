"""Warm pool: per repo, started containers of the latest image with their executor ready.

Entries are generic (nothing about a session is in them), so any entry serves any session of
its repo. A claim is atomic: a per-repo lock in this process and a conditional update in the
central DB (`warm` → `claimed`), so two sessions never get one container.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import delete, select, update
from sqlalchemy.engine import CursorResult

from bot.repos import RepoCatalog
from bot.store.db import Database
from bot.store.tables import PoolEntryRow
from bot.util.metrics import Metrics
from sandbox.backend import LABEL, ContainerRef, SandboxBackend
from sandbox.disk import new_disk_name
from sandbox.executor import Executor
from sandbox.images import ImageBuilder
from sandbox.ownership import Ownership
from sandbox.protocol import Ping

log = logging.getLogger(__name__)


@dataclass
class PoolEntry:
    ref: ContainerRef
    executor: Executor
    image: str
    created_at: float = field(default_factory=time.time)


class WarmPool:
    def __init__(self, backend: SandboxBackend, db: Database, images: ImageBuilder, catalog: RepoCatalog, ttl: float,
                 warm_ttl: float | None = None, ownership: Ownership | None = None):
        self.backend = backend
        self.ownership = ownership or Ownership(backend.instance)
        """Which pool containers (and rows) are ours: other instances on the engine keep theirs."""
        self.db = db
        self.images = images
        self.catalog = catalog
        self.ttl = ttl
        self._entries: defaultdict[str, list[PoolEntry]] = defaultdict(list)
        self._claim_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._fill_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._extra: dict[str, int] = {}
        self._extra_since: dict[str, float] = {}
        self.warm_ttl = warm_ttl
        """Seconds a container warmed for someone typing waits to be claimed (None: until the entry TTL)."""
        self.unused_warm_ups = 0
        """Warmed containers removed because nobody claimed them in time."""
        self.metrics: Metrics | None = None
        """Where claims are counted (set by the wiring)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        images.on_new_image.append(self.on_new_image)

    def target(self, repo: str) -> int:
        configured = self.catalog.get(repo)
        return (configured.pool_size if configured else 0) + self._extra.get(repo, 0)

    def warm_count(self, repo: str) -> int:
        return len(self._entries[repo])

    def total_warm(self) -> int:
        """Warm containers ready to be claimed, all repositories."""
        return sum(len(entries) for entries in self._entries.values())

    async def claim(self, repo: str, session_id: str) -> PoolEntry | None:
        """Take a warm container for a session, or None if there is none ready."""
        async with self._claim_locks[repo]:
            while self._entries[repo]:
                entry = self._entries[repo].pop(0)
                async with self.db.session() as s, s.begin():
                    result = await s.execute(
                        update(PoolEntryRow)
                        .where(PoolEntryRow.container_id == entry.ref.id, PoolEntryRow.status == "warm")
                        .values(status="claimed", session_id=session_id)
                    )
                if cast(CursorResult[Any], result).rowcount != 1:
                    continue  # another instance took it
                try:
                    await entry.executor.call(Ping())
                except Exception:
                    log.info("warm container %s was dead; discarding it", entry.ref.id[:12])
                    await self._discard(entry)
                    continue
                self._extra.pop(repo, None)
                self._extra_since.pop(repo, None)
                self.refill_soon(repo)
                if self.metrics is not None:
                    self.metrics.pool_claims.labels("hit").inc()
                return entry
        self.refill_soon(repo)
        if self.metrics is not None:
            self.metrics.pool_claims.labels("miss").inc()
        return None

    def warm(self, repo: str) -> None:
        """Predictive warm-up (someone started typing): one more container than configured."""
        if self.catalog.get(repo) is None:
            return
        self._extra[repo] = 1
        self._extra_since[repo] = time.monotonic()
        self.refill_soon(repo)

    async def expire_warm_ups(self) -> int:
        """A container warmed for someone who then sent nothing goes after `warm_ttl`; counted."""
        if self.warm_ttl is None:
            return 0
        removed = 0
        for repo, since in list(self._extra_since.items()):
            if time.monotonic() - since < self.warm_ttl:
                continue
            self._extra_since.pop(repo, None)
            if self._extra.pop(repo, None) is None:
                continue  # claimed in the meantime
            async with self._claim_locks[repo]:
                surplus = self._entries[repo][self.target(repo):]
                self._entries[repo] = self._entries[repo][: self.target(repo)]
            removed += len(surplus)
            self.unused_warm_ups += len(surplus)
            for entry in surplus:
                await self._discard(entry)
        return removed

    def refill_soon(self, repo: str) -> None:
        task = asyncio.create_task(self.fill(repo))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def fill(self, repo: str) -> None:
        async with self._fill_locks[repo]:
            image = await self.images.latest(repo)
            if image is None:
                return
            while len(self._entries[repo]) < self.target(repo):
                try:
                    await self._add(repo, image)
                except Exception as exc:
                    log.warning("could not start a warm container for %s: %s", repo, exc)
                    return

    async def _add(self, repo: str, image: str) -> None:
        # its disk is made now, ahead of time: a claim stays as fast as without one
        ref = await self.backend.create(image, {f"{LABEL}.role": "pool", f"{LABEL}.repo": repo}, disk=new_disk_name())
        executor: Executor | None = None
        try:
            executor = await self.backend.executor(ref)
            async with self.db.session() as s, s.begin():
                s.add(PoolEntryRow(container_id=ref.id, repo=repo, image=image, status="warm", created_at=time.time(),
                                   instance=self.ownership.instance))
        except BaseException:  # cancelled too: leave no container or reader behind
            if executor is not None:
                await executor.close()
            await self.backend.remove(ref)
            raise
        self._entries[repo].append(PoolEntry(ref, executor, image))

    async def on_new_image(self, repo: str, image: str) -> None:
        """Retire idle entries of older images and refill from the new one."""
        async with self._claim_locks[repo]:
            old = [e for e in self._entries[repo] if e.image != image]
            self._entries[repo] = [e for e in self._entries[repo] if e.image == image]
        for entry in old:
            await self._discard(entry)
        await self.fill(repo)

    async def expire(self) -> None:
        """Replace entries nobody claimed within the TTL, and entries of an image no longer the
        latest (built by another process, e.g. `hosted-agents images build`)."""
        now = time.time()
        for repo in [r.name for r in self.catalog.repos]:
            latest = await self.images.latest(repo)
            async with self._claim_locks[repo]:
                stale = [e for e in self._entries[repo] if now - e.created_at > self.ttl or e.image != latest]
                self._entries[repo] = [e for e in self._entries[repo] if e not in stale]
            if stale:
                self._extra.pop(repo, None)
            for entry in stale:
                await self._discard(entry)
            await self.fill(repo)

    async def _discard(self, entry: PoolEntry) -> None:
        await entry.executor.close()
        await self.backend.remove(entry.ref)
        async with self.db.session() as s, s.begin():
            await s.execute(delete(PoolEntryRow).where(PoolEntryRow.container_id == entry.ref.id))

    async def adopt(self) -> None:
        """At start: take back our warm containers of current images; remove our other pool
        containers and those of instances no longer alive. Other live instances' stay theirs,
        and so do their rows."""
        found = await self.backend.find({f"{LABEL}.role": "pool"})
        live = await self.ownership.live_set()  # after listing: an instance that starts meanwhile is in it
        async with self.db.session() as s:
            rows = {r.container_id: r for r in (await s.execute(select(PoolEntryRow))).scalars()}
        gone: list[str] = []
        for ref in found:
            row = rows.pop(ref.id, None)
            if not self.ownership.removable_at_start(ref, live):
                continue  # a live instance's
            repo = ref.labels.get(f"{LABEL}.repo", "")
            if self.ownership.mine(ref, live) and row is not None and row.status == "warm" \
                    and row.image == await self.images.latest(repo) and await self.backend.is_running(ref):
                try:
                    executor = await self.backend.executor(ref)
                    self._entries[repo].append(PoolEntry(ref, executor, row.image, row.created_at))
                    continue
                except Exception:
                    pass
            await self.backend.remove(ref)
            gone.append(ref.id)
        # rows whose container is not on this engine: ours, an older version's or a dead instance's
        gone += [cid for cid, row in rows.items() if live is None or row.instance in (None, self.ownership.instance)
                 or row.instance not in live]
        if gone:
            async with self.db.session() as s, s.begin():
                await s.execute(delete(PoolEntryRow).where(PoolEntryRow.container_id.in_(gone)))

    async def forget_dead(self, live: set[str]) -> None:
        """Rows of warm containers whose instance is no longer alive (their containers are reaped
        by a survivor on their engine, or went with it)."""
        async with self.db.session() as s, s.begin():
            await s.execute(delete(PoolEntryRow).where(
                PoolEntryRow.instance.is_not(None), PoolEntryRow.instance.not_in(live)))

    async def forget_claimed(self, container_id: str) -> None:
        async with self.db.session() as s, s.begin():
            await s.execute(delete(PoolEntryRow).where(PoolEntryRow.container_id == container_id))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for entries in self._entries.values():
            for entry in entries:
                await entry.executor.close()  # containers stay: the next start adopts them

    async def status(self) -> list[PoolEntryRow]:
        async with self.db.session() as s:
            return list((await s.execute(select(PoolEntryRow).order_by(PoolEntryRow.repo, PoolEntryRow.created_at))).scalars())
