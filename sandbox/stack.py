"""The sandbox layer assembled: backend, image builder, warm pool, session sandboxes, schedule."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.config import ConfigError, Settings
from bot.repos import RepoCatalog
from bot.store.db import Database
from sandbox.backend import SandboxLimits
from sandbox.disk import DiskError, DiskStore
from sandbox.docker import DockerBackend, DockerUnavailable, UnknownRuntime
from sandbox.images import BuildFailed, ImageBuilder
from sandbox.pool import WarmPool
from sandbox.sessions import SandboxManager

log = logging.getLogger(__name__)


class SandboxStack:
    def __init__(self, settings: Settings, db: Database, catalog: RepoCatalog):
        self.settings = settings
        self.catalog = catalog
        limits = SandboxLimits(network=settings.sandbox_network, memory=settings.sandbox_memory,
                               cpus=settings.sandbox_cpus, pids=settings.sandbox_pids, runtime=settings.sandbox_runtime)
        disks = self._disks(settings)
        try:
            self.backend = DockerBackend(limits, disks=disks)
        except UnknownRuntime as exc:
            raise ConfigError(f"SANDBOX_RUNTIME: {exc}") from None
        except DockerUnavailable as exc:
            raise ConfigError(f"DOCKER_HOST: {exc}; the repositories in REPOS_CONFIG need a Docker engine") from None
        self.images = ImageBuilder(self.backend, db, keep=settings.images_keep)
        self.pool = WarmPool(self.backend, db, self.images, catalog, ttl=settings.pool_entry_ttl)
        self.manager = SandboxManager(self.backend, db, catalog, self.images, self.pool,
                                      idle_timeout=settings.sandbox_idle_timeout,
                                      snapshot_retention=settings.snapshot_retention,
                                      snapshots_max=settings.snapshots_max,
                                      disk_quota=settings.sandbox_disk or None)
        self.scheduler: AsyncIOScheduler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @staticmethod
    def _disks(settings: Settings) -> DiskStore | None:
        """The per-sandbox disks under DATA_DIR/sandbox (0700), or None when SANDBOX_DISK is off."""
        if not settings.sandbox_disk:
            return None
        root = settings.data_dir / "sandbox"
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        disks = DiskStore(root / "disks", settings.sandbox_disk)
        try:
            disks.check()
        except DiskError as exc:
            raise ConfigError(f"SANDBOX_DISK: {exc}; set SANDBOX_DISK=0 to run sandboxes without a disk quota") from None
        return disks

    async def start(self) -> None:
        """Clean up after an earlier run, adopt warm containers, then build and fill in the background."""
        removed = await self.manager.remove_orphans()
        if removed:
            log.info("removed %d orphaned sandbox container(s)", removed)
        await self.pool.adopt()
        for repo in self.catalog.repos:
            self._spawn(self._prepare(repo.name))
        self.scheduler = AsyncIOScheduler()
        every = self.settings.image_rebuild_interval
        if every > 0:
            self._every(every, self.build_all)
        self._every(60, self.pool.expire)
        self._every(max(0.5, min(30.0, self.settings.sandbox_idle_timeout / 2)), self.manager.stop_idle)
        self._every(3600, self.manager.collect_snapshots)
        self.scheduler.start()

    def _every(self, seconds: float, job: Any) -> None:
        async def run() -> None:
            try:
                await job()
            except asyncio.CancelledError:
                pass  # the scheduler is shutting down with the service
            except Exception as exc:
                log.warning("scheduled %s failed: %s", job.__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))

        assert self.scheduler is not None
        self.scheduler.add_job(run, "interval", seconds=seconds, max_instances=1, coalesce=True, name=job.__name__)

    async def _prepare(self, repo: str) -> None:
        if await self.images.latest(repo) is None:
            configured = self.catalog.get(repo)
            assert configured is not None
            try:
                await self.images.build(configured)
            except BuildFailed as exc:
                log.warning("%s; sessions of %s will retry the build", exc, repo)
                return
        await self.pool.fill(repo)

    async def build_all(self) -> None:
        """The scheduled job: rebuild every repo whose branch tip moved."""
        for repo in self.catalog.repos:
            try:
                await self.images.build(repo, force=False)
            except BuildFailed as exc:
                log.warning("%s; the previous image stays in service", exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.manager.close()
        await self.pool.close()
