"""The sandbox layer assembled: backend, image builder, warm pool, session sandboxes, schedule."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.config import ConfigError, Settings
from bot.repos import RepoCatalog
from bot.store.db import Database
from sandbox.backend import LABEL, SandboxLimits
from sandbox.disk import DiskError, DiskStore
from sandbox.docker import DockerBackend, DockerUnavailable, UnknownRuntime
from sandbox.egress import EgressPolicy, EgressProxy, default_patterns
from sandbox.gitauth import GitCredentials, no_credentials
from sandbox.images import BuildFailed, ImageBuilder
from sandbox.own_source import copy_own_source
from sandbox.ownership import LiveInstances, Ownership, deployment_digest, single_instance
from sandbox.pool import WarmPool
from sandbox.sessions import SandboxManager

log = logging.getLogger(__name__)


REAP_EVERY = 60.0
"""Seconds between looks for containers of instances that are no longer alive."""


class SandboxStack:
    def __init__(self, settings: Settings, db: Database, catalog: RepoCatalog,
                 credentials: GitCredentials = no_credentials, instance_id: str = "",
                 live_instances: LiveInstances = single_instance):
        """`instance_id` labels every container and image this instance makes (empty: INSTANCE_ID,
        else a new one); `live_instances` returns the ids of the deployment's live instances, or
        None when this is the only one (SQLite)."""
        self.settings = settings
        self.catalog = catalog
        limits = SandboxLimits(network=settings.sandbox_network, memory=settings.sandbox_memory,
                               cpus=settings.sandbox_cpus, pids=settings.sandbox_pids, runtime=settings.sandbox_runtime)
        self.egress: EgressProxy | None = None
        """The sandboxes' way out with SANDBOX_NETWORK=proxy; `observe` it for their connections."""
        if settings.sandbox_network == "proxy":
            # Until `start` reads the base images' apt sources: the configured list, or the defaults
            # without the Debian mirrors (enough for the CLI's image builds, which never start).
            policy = (EgressPolicy.parse(settings.sandbox_egress_allow) if settings.sandbox_egress_allow
                      else EgressPolicy(default_patterns([repo.clone_url or "" for repo in catalog.repos], [])))
            self.egress = EgressProxy(settings.data_dir / "egress", policy)
        disks = self._disks(settings)
        try:
            self.backend = DockerBackend(limits, egress=self.egress, disks=disks, source=self.own_source_dir,
                                         instance=instance_id or settings.instance_id,
                                         cluster=deployment_digest(db.url))
        except UnknownRuntime as exc:
            raise ConfigError(f"SANDBOX_RUNTIME: {exc}") from None
        except DockerUnavailable as exc:
            raise ConfigError(f"DOCKER_HOST: {exc}; the repositories in REPOS_CONFIG need a Docker engine") from None
        self.ownership = Ownership(self.backend.instance, self.backend.cluster, live_instances)
        """Which containers on the engine are ours (several instances may share one)."""
        self.images = ImageBuilder(self.backend, db, keep=settings.images_keep, credentials=credentials)
        self.pool = WarmPool(self.backend, db, self.images, catalog, ttl=settings.pool_entry_ttl,
                             warm_ttl=settings.warm_up_ttl, ownership=self.ownership)
        self.manager = SandboxManager(self.backend, db, catalog, self.images, self.pool,
                                      idle_timeout=settings.sandbox_idle_timeout,
                                      snapshot_retention=settings.snapshot_retention,
                                      snapshots_max=settings.snapshots_max,
                                      disk_quota=settings.sandbox_disk or None, credentials=credentials,
                                      ownership=self.ownership)
        self.scheduler: AsyncIOScheduler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def own_source_dir(self) -> Path:
        """The copy of this project's source that sandboxes mount read-only (made by `start`)."""
        return self.settings.data_dir / "agent-source"

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
        """Copy this project's source for the sandboxes to mount, clean up after an earlier run, adopt
        warm containers, then build and fill in the background."""
        try:
            await asyncio.to_thread(copy_own_source, self.own_source_dir)
        except OSError as exc:
            log.warning("this project's source could not be copied for the sandboxes (%s); they run without it", exc)
        if self.egress is not None and not self.settings.sandbox_egress_allow:
            self.egress.policy = EgressPolicy(await self.default_egress())
            log.info("sandbox egress allowed to: %s", self.egress.policy)
        removed = await self.manager.remove_orphans()
        if removed:
            log.info("removed %d orphaned sandbox container(s)", removed)
        await self.pool.adopt()
        if await self.images.claim_unplaced():
            log.info("images built before they were recorded per engine: found in this engine")
        for repo in self.catalog.repos:
            self._spawn(self._prepare(repo.name))
        self.scheduler = AsyncIOScheduler()
        every = self.settings.image_rebuild_interval
        if every > 0:
            self._every(every, self.build_all)
        self._every(60, self.pool.expire)
        self._every(max(1.0, min(30.0, self.settings.warm_up_ttl / 4)), self.pool.expire_warm_ups)
        self._every(max(0.5, min(30.0, self.settings.sandbox_idle_timeout / 2)), self.manager.stop_idle)
        self._every(3600, self.manager.collect_snapshots)
        self._every(REAP_EVERY, self.reap_dead)
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

    async def default_egress(self) -> list[str]:
        """SANDBOX_EGRESS_ALLOW's default: the repositories' git hosts, PyPI, npm, and the Debian
        mirrors in each base image's own apt sources (read from the image, never named here)."""
        sources: list[str] = []
        for base in dict.fromkeys(repo.image.base for repo in self.catalog.repos):
            try:
                files = await self.backend.image_files(base, ["/etc/apt/sources.list", "/etc/apt/sources.list.d"])
            except Exception as exc:
                log.warning("apt sources of %s unreadable (%s): its mirrors are not in the egress allowlist", base, exc)
                continue
            sources.extend(files.values())
        return default_patterns([repo.clone_url or "" for repo in self.catalog.repos], sources)

    async def reap_dead(self) -> int:
        """Remove the containers of instances of this deployment that are no longer alive (a
        `kill -9`'d instance on this engine), and forget their warm pool rows. Nothing with one
        instance. A session container's disk stays with its snapshot."""
        found = await self.backend.find({})
        live = await self.ownership.live_set()  # after listing: an instance that starts meanwhile is in it
        if live is None:
            return 0
        dead = [ref for ref in found if self.ownership.dead(ref, live)]
        for ref in dead:
            await self.backend.remove(ref, keep_disk=ref.labels.get(f"{LABEL}.role") == "session")
        await self.pool.forget_dead(live)
        if dead:
            log.info("removed %d container(s) of instances no longer alive", len(dead))
        return len(dead)

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
        if self.egress is not None:
            await self.egress.close()
