"""Each session's sandbox: acquired in parallel with the first model call, synced in the background.

Acquisition order: the session's last snapshot if it has one (a follow-up keeps its work), else a
warm pool entry → a container from the repo's latest image → a build. Reads may run as soon as the
container exists; writes wait for the git sync (the gate is a plugin, see bot/agent/plugins.py).
When a turn ends the workspace is committed as the session's snapshot, in the background; an idle
container is removed and the next prompt restores the snapshot. Nothing here knows about Slack,
and nothing here writes the sessions layer's rows: snapshots are recorded in the sandbox's own table.

With per-sandbox disks (sandbox/disk.py) the workspace and HOME live on the session's disk, which
`docker commit` does not see: a snapshot is the committed image plus the disk its label names.
The disk stays when the container goes and is mounted again on restore; a session has one disk
for its whole life, so replacing its snapshot image replaces, never stacks. Collecting or
evicting a snapshot deletes its disk. At most `snapshots_max` snapshots are kept: past that the
oldest of idle sessions go first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from bot.repos import Repo, RepoCatalog
from bot.store.db import Database
from sandbox.backend import DISK_LABEL, LABEL, ContainerRef, SandboxBackend
from sandbox.disk import new_disk_name
from sandbox.executor import Executor
from sandbox.gitauth import GitCredentials, no_credentials
from sandbox.gitrefs import check_branch
from sandbox.images import ImageBuilder
from sandbox.ownership import Ownership
from sandbox.pool import WarmPool
from sandbox.protocol import Edit, Exec, ListDir, Read, Search, Write
from sandbox.snapshots import SnapshotRecords
from sandbox.workspace import CommandResult, DirEntry, FileText, WorkspaceLost, WorkspaceUnavailable
from sandbox.workspace_state import WorkspaceStates, apply, check_out_base, export, starting_point

log = logging.getLogger(__name__)


class SandboxUnavailable(WorkspaceUnavailable):
    """The sandbox could not be prepared (e.g. the image build failed)."""


class SessionSandbox:
    """A session's container, as the agent's `Workspace`."""

    def __init__(self, session_id: str, repo: Repo, work_branch: str, disk_quota: str | None = None,
                 own_source: str | None = None):
        self.session_id = session_id
        self.own_source = own_source
        """Where this project's source is mounted read-only in the container (OWN_SOURCE), or None."""
        self._disk_quota = disk_quota
        self.repo = repo
        self.work_branch = work_branch
        self.source: str | None = None
        """How it was acquired: pool, snapshot, image or build."""
        self.restoring = False
        """Its session's work is applied from the saved workspace state before anything reads it."""
        self.start: tuple[str, str] | None = None
        """(commit, tree) of its workspace as it started: what its saved workspace state is against."""
        self.ref: ContainerRef | None = None
        self.sync_note: str | None = None
        self.in_turn = False
        self.last_used = time.monotonic()
        self.timings: dict[str, float] = {"requested": time.monotonic()}
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[Executor] = loop.create_future()
        self._synced: asyncio.Future[None] = loop.create_future()
        self.task: asyncio.Task[None] | None = None
        self.snapshotting: asyncio.Task[None] | None = None
        self.warmed_by: str | None = None
        """What asked for it ahead of a turn (a warm-up's trigger), until a turn takes it."""

    # -- the Workspace protocol ------------------------------------------------------------

    @property
    def branch(self) -> str:
        return self.work_branch

    @property
    def disk_quota(self) -> str | None:
        return self._disk_quota if self.disk else None

    @property
    def disk(self) -> str | None:
        """The name of the container's disk, if it has one."""
        return (self.ref.labels.get(DISK_LABEL) or None) if self.ref is not None else None

    async def wait_synced(self) -> None:
        """Returns when the workspace is on the session's branch at the base branch tip."""
        await asyncio.shield(self._synced)

    async def _reader(self) -> Executor:
        """Reads run as soon as the container exists, except while earlier work is being restored
        into it (a session taken over from another host): then they wait for that."""
        executor = await self.executor()  # once ready, whether it restores is known
        if self.restoring:
            await self.wait_synced()
        return executor

    async def read(self, path: str, offset: int = 1, limit: int | None = None, max_bytes: int = 4 * 1024 * 1024) -> FileText:
        return await (await self._reader()).call(Read(path=path, offset=offset, limit=limit, max_bytes=max_bytes))

    async def list_dir(self, path: str = ".", limit: int = 2000) -> tuple[list[DirEntry], int]:
        listing = await (await self._reader()).call(ListDir(path=path, limit=limit))
        return listing.entries, listing.total if listing.total is not None else len(listing.entries)

    async def search(self, pattern: str, path: str = ".", glob: str | None = None) -> CommandResult:
        return await (await self._reader()).call(Search(pattern=pattern, path=path, glob=glob))

    async def write(self, path: str, content: str) -> int:
        return (await (await self.executor()).call(Write(path=path, content=content))).bytes

    async def edit(self, path: str, old: str, new: str, replace_all: bool = False) -> int:
        request = Edit(path=path, old=old, new=new, replace_all=replace_all)
        return (await (await self.executor()).call(request)).replacements

    async def run(self, command: str, timeout: float, cap: int = 30_000) -> CommandResult:
        return await (await self.executor()).call(Exec(cmd=command, timeout=timeout, cap=cap, save=True))

    async def diff(self, path: str | None = None) -> CommandResult:
        argv = ["git", "diff", "HEAD", "--", path] if path else ["git", "diff", "HEAD"]
        return await (await self.executor()).call(Exec(argv=argv, timeout=60, cap=30_000))

    async def git(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> CommandResult:
        """One git command in the workspace (`argv` after `git`), with this command's own environment."""
        return await (await self.executor()).call(Exec(argv=["git", *argv], env=env or {}, timeout=timeout, cap=30_000))

    async def status(self) -> CommandResult:
        return await (await self.executor()).call(Exec(argv=["git", "status", "--short", "--branch"], timeout=60, cap=30_000))

    # -- acquisition -----------------------------------------------------------------------

    async def executor(self) -> Executor:
        """The container's executor, once the container exists (reads need no more)."""
        self.last_used = time.monotonic()
        return await asyncio.shield(self._ready)

    @property
    def ready(self) -> bool:
        return self._ready.done() and not self._ready.exception()

    @property
    def failed(self) -> bool:
        return self._ready.done() and self._ready.exception() is not None

    def _set_ready(self, ref: ContainerRef, executor: Executor, source: str) -> None:
        self.ref, self.source = ref, source
        self.timings["ready"] = time.monotonic()
        self._ready.set_result(executor)

    def _set_synced(self, note: str | None = None) -> None:
        self.sync_note = note
        self.timings["synced"] = time.monotonic()
        if not self._synced.done():
            self._synced.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        for future in (self._ready, self._synced):
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning when nobody waited


class SandboxManager:
    def __init__(self, backend: SandboxBackend, db: Database, catalog: RepoCatalog, images: ImageBuilder,
                 pool: WarmPool, idle_timeout: float, snapshot_retention: float, snapshots_max: int = 50,
                 disk_quota: str | None = None, credentials: GitCredentials = no_credentials,
                 ownership: Ownership | None = None):
        self.backend = backend
        self.ownership = ownership or Ownership(backend.instance)
        """Which containers on the engine are ours to remove (several instances may share it)."""
        self.db = db
        self.catalog = catalog
        self.images = images
        self.pool = pool
        self.idle_timeout = idle_timeout
        self.snapshot_retention = snapshot_retention
        self.snapshots_max = snapshots_max
        self.disk_quota = disk_quota
        """SANDBOX_DISK, for the tools' message when a command fills the disk."""
        self.credentials = credentials
        """For the git commands that reach a repo's remote (the sync's fetch, a push)."""
        self.snapshots = SnapshotRecords(db, backend.engine)
        self.states = WorkspaceStates(db)
        self._sandboxes: dict[str, SessionSandbox] = {}

    def get(self, session_id: str) -> SessionSandbox | None:
        return self._sandboxes.get(session_id)

    def for_turn(self, session_id: str, repo_name: str | None) -> SessionSandbox | None:
        """The session's sandbox for a starting turn; acquisition begins here and runs in parallel."""
        repo = self.catalog.get(repo_name) if repo_name else None
        if repo is None:
            return None
        sandbox = self._sandboxes.get(session_id)
        if sandbox is None or sandbox.failed:
            sandbox = self._start(session_id, repo)
        elif sandbox.warmed_by is not None and "turn" not in sandbox.timings:
            sandbox.timings["turn"] = time.monotonic()  # the turn a warm-up prepared it for
        sandbox.in_turn = True
        sandbox.last_used = time.monotonic()
        return sandbox

    def prepare(self, session_id: str, repo_name: str, trigger: str) -> str | None:
        """A warm-up: someone is about to prompt this session, so its sandbox is acquired now (from its
        snapshot, the pool, ...) and the turn finds it ready. `started`, `ready` (it already was, or is
        on its way), or None when the repo is unknown."""
        repo = self.catalog.get(repo_name)
        if repo is None:
            return None
        sandbox = self._sandboxes.get(session_id)
        if sandbox is not None and not sandbox.failed:
            sandbox.last_used = time.monotonic()  # not reaped as idle while the person types
            return "ready"
        self._start(session_id, repo).warmed_by = trigger
        return "started"

    def _start(self, session_id: str, repo: Repo) -> SessionSandbox:
        sandbox = SessionSandbox(session_id, repo, f"hosted-agents/{session_id}", self.disk_quota, self.backend.own_source)
        self._sandboxes[session_id] = sandbox
        sandbox.task = asyncio.create_task(self._acquire(sandbox), name=f"sandbox-{session_id}")
        return sandbox

    async def _acquire(self, sb: SessionSandbox) -> None:
        try:
            snapshot, disk = await self._restorable(sb.session_id)
            state = await self.states.get(sb.session_id)
            sb.restoring = snapshot is None and state is not None
            entry = None
            if snapshot is None:  # a session with earlier work must get its own snapshot, never a fresh entry
                entry = await self.pool.claim(sb.repo.name, sb.session_id)
            if entry is not None:
                await self.pool.forget_claimed(entry.ref.id)
                self.backend.assign_egress(entry.ref, sb.session_id)
                sb._set_ready(entry.ref, entry.executor, "pool")
            else:
                image, source = (snapshot, "snapshot") if snapshot else await self._image_for(sb)
                ref = await self.backend.create(image, {f"{LABEL}.role": "session", f"{LABEL}.session": sb.session_id,
                                                        f"{LABEL}.repo": sb.repo.name}, disk=disk or new_disk_name())
                try:
                    executor = await self.backend.executor(ref)
                except BaseException:
                    await self.backend.remove(ref, keep_disk=disk is not None)  # a snapshot's disk stays with it
                    raise
                sb._set_ready(ref, executor, source)
            if sb.source == "snapshot":
                sb.start = (state.base_commit, state.start_tree) if state else None
                sb._set_synced()  # the snapshot holds the session's branch as it left it
            else:
                executor = await sb.executor()
                note = await self._sync(sb, executor)
                restored = None  # below: its work, from a sandbox whose snapshot is not here (another host)
                if state is not None and not await check_out_base(executor, state, sb.work_branch,
                                                                  await self.credentials(sb.repo)):
                    restored = "The session's starting commit could not be fetched; its changes go onto the latest."
                sb.start = await starting_point(executor)
                if state is not None:
                    restored = " ".join(n for n in (restored, await apply(executor, state)) if n) or None
                    note = " ".join(n for n in (note, restored) if n) or None
                sb._set_synced(note)
        except asyncio.CancelledError:
            sb._fail(SandboxUnavailable("the service is shutting down"))
            raise
        except Exception as exc:
            log.warning("sandbox for session %s could not be prepared: %s", sb.session_id, exc)
            sb._fail(exc if isinstance(exc, WorkspaceLost) else SandboxUnavailable(str(exc)))

    async def _restorable(self, session_id: str) -> tuple[str | None, str | None]:
        """The session's snapshot image and its disk, when both are there to restore from.

        A snapshot without a disk label predates disks (its workspace is in the image: a fresh
        disk gets it copied in); one whose disk is gone lost its workspace, so it is not used."""
        snapshot = await self.snapshots.image(session_id)
        labels = await self.backend.image_labels(snapshot) if snapshot else None
        if snapshot is None or labels is None:
            return None, None
        disk = labels.get(DISK_LABEL) or None
        if disk is not None and not await self.backend.disk_exists(disk):
            log.warning("the disk of session %s's snapshot is gone; it starts from the repo's image", session_id)
            return None, None
        return snapshot, disk

    async def _snapshot_disk(self, session_id: str) -> str | None:
        """The disk the session's recorded snapshot names (which must outlive the container)."""
        snapshot = await self.snapshots.image(session_id)
        labels = await self.backend.image_labels(snapshot) if snapshot else None
        return (labels or {}).get(DISK_LABEL) or None

    async def _image_for(self, sb: SessionSandbox) -> tuple[str, str]:
        latest = await self.images.latest(sb.repo.name)
        if latest and await self.backend.image_exists(latest):
            return latest, "image"
        return await self.images.build(sb.repo, force=False), "build"

    async def _sync(self, sb: SessionSandbox, executor: Executor) -> str | None:
        """Fetch the base branch tip onto the session's own branch; on failure keep the image's commit.

        Branch names are checked and passed as arguments: no shell ever sees them."""
        base, work = check_branch(sb.repo.default_branch), check_branch(sb.work_branch)
        fetch = ["git", "fetch", "--quiet", "origin", f"refs/heads/{base}"]
        result = await executor.call(Exec(argv=fetch, timeout=300, env=await self.credentials(sb.repo)))
        if result.exit_code == 0:
            result = await executor.call(Exec(argv=["git", "checkout", "--quiet", "-B", work, "FETCH_HEAD"], timeout=60))
            if result.exit_code == 0:
                return None
        await executor.call(Exec(argv=["git", "checkout", "--quiet", "-B", work], timeout=60))
        reason = (result.output.strip().splitlines() or ["timed out" if result.timed_out else "unknown error"])[-1]
        log.warning("git sync of session %s failed: %s", sb.session_id, reason)
        return f"Fetching the latest {base} failed ({reason[:200]}); the checkout is at the image's commit."

    async def turn_ended(self, session_id: str, lost: bool = False) -> None:
        """Snapshot the workspace in the background, or drop a container that was lost."""
        sb = self._sandboxes.get(session_id)
        if sb is None:
            return
        sb.in_turn = False
        sb.last_used = time.monotonic()
        if lost:
            await self.drop(session_id)
        elif sb.ready and sb.ref is not None:
            previous = sb.snapshotting
            sb.snapshotting = asyncio.create_task(self._snapshot(sb, previous))

    async def _snapshot(self, sb: SessionSandbox, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        assert sb.ref is not None
        await self._save_state(sb)
        try:
            image = await self.backend.snapshot(
                sb.ref, f"hosted-agents/session-{sb.session_id}", str(int(time.time() * 1000)),
                {f"{LABEL}.role": "snapshot", f"{LABEL}.session": sb.session_id, f"{LABEL}.repo": sb.repo.name,
                 DISK_LABEL: sb.disk or ""},
                pause=False,  # never make anyone wait on a paused container
            )
        except Exception as exc:
            log.warning("snapshot of session %s failed: %s", sb.session_id, exc)
            return
        old = await self.snapshots.record(sb.session_id, sb.repo.name, image)
        if old and old != image:
            await self.backend.remove_image(old)  # the disk is the same one: it stays
        await self.evict_snapshots()

    async def _save_state(self, sb: SessionSandbox) -> None:
        """The workspace as a patch in the database: what a sandbox on another host restores."""
        if sb.start is None:
            return
        try:
            state = await export(await sb.executor(), *sb.start)
            if state is not None:
                await self.states.save(sb.session_id, sb.repo.name, state)
        except Exception as exc:
            log.warning("workspace state of session %s not saved: %s", sb.session_id, exc)

    async def drop(self, session_id: str) -> None:
        sb = self._sandboxes.pop(session_id, None)
        if sb is None:
            return
        if sb.task is not None and not sb.task.done():
            sb.task.cancel()
            await asyncio.gather(sb.task, return_exceptions=True)
        if sb.ready:
            await (await sb.executor()).close()
        if sb.ref is not None:
            if sb.snapshotting is not None:  # whether the disk is kept depends on the snapshot it takes
                await asyncio.gather(sb.snapshotting, return_exceptions=True)
            await self._remove(sb)

    async def _remove(self, sb: SessionSandbox) -> None:
        """Remove the session's container; its disk stays when its snapshot names it."""
        assert sb.ref is not None
        keep = sb.disk is not None and await self._snapshot_disk(sb.session_id) == sb.disk
        await self.backend.remove(sb.ref, keep_disk=keep)

    async def stop_idle(self) -> int:
        """Remove containers idle past the timeout; their snapshot brings them back."""
        now, stopped = time.monotonic(), 0
        for session_id, sb in list(self._sandboxes.items()):
            if sb.in_turn or now - sb.last_used < self.idle_timeout or not (sb.ready or sb.failed):
                continue
            if sb.snapshotting is not None:
                await asyncio.gather(sb.snapshotting, return_exceptions=True)
            if self._sandboxes.get(session_id) is sb and not sb.in_turn:
                await self.drop(session_id)
                stopped += 1
        return stopped

    async def collect_snapshots(self) -> int:
        """Remove snapshots of sessions idle longer than the retention."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.snapshot_retention)
        collected = 0
        for row in await self.snapshots.older_than(cutoff):
            if row.session_id in self._sandboxes:
                continue
            await self._discard_snapshot(row.session_id, row.image)
            collected += 1
        return collected + await self.evict_snapshots()

    async def evict_snapshots(self) -> int:
        """Keep at most `snapshots_max` snapshots: evict the oldest of sessions without a sandbox."""
        rows = await self.snapshots.oldest_first()
        excess, evicted = len(rows) - self.snapshots_max, 0
        for row in rows:
            if excess <= 0:
                break
            if row.session_id in self._sandboxes:
                continue
            log.info("snapshot of session %s evicted (SNAPSHOTS_MAX=%d)", row.session_id, self.snapshots_max)
            await self._discard_snapshot(row.session_id, row.image)
            excess, evicted = excess - 1, evicted + 1
        return evicted

    async def _discard_snapshot(self, session_id: str, image: str) -> None:
        labels = await self.backend.image_labels(image)
        await self.backend.remove_image(image)
        disk = (labels or {}).get(DISK_LABEL)
        if disk and session_id not in self._sandboxes:
            await self.backend.delete_disk(disk)
        await self.snapshots.forget(session_id, image)

    async def remove_orphans(self) -> int:
        """At start: session and build containers of an earlier run are orphans (snapshots restore
        sessions), and so are the disks neither a snapshot nor a (warm pool) container names. Only
        ours (this instance id's, an older version's, a dead instance's): other live instances on
        the same engine keep theirs."""
        found = [ref for role in ("session", "build") for ref in await self.backend.find({f"{LABEL}.role": role})]
        live = await self.ownership.live_set()  # after listing: an instance that starts meanwhile is in it
        removed = 0
        for ref in found:
            if self.ownership.removable_at_start(ref, live):
                await self.backend.remove(ref, keep_disk=True)
                removed += 1
        keep = set()
        for row in await self.snapshots.all():
            labels = await self.backend.image_labels(row.image)
            if labels and labels.get(DISK_LABEL):
                keep.add(labels[DISK_LABEL])
        pruned = await self.backend.prune_disks(keep)
        if pruned:
            log.info("deleted %d orphaned sandbox disk(s)", pruned)
        return removed

    async def close(self) -> None:
        for sb in list(self._sandboxes.values()):
            if sb.task is not None:
                sb.task.cancel()  # an acquisition in progress; a snapshot in progress may finish
            await asyncio.gather(*(t for t in (sb.task, sb.snapshotting) if t is not None), return_exceptions=True)
            if sb.ready:
                await (await sb.executor()).close()
            if sb.ref is not None:
                await self._remove(sb)  # its last snapshot (and disk) brings it back after a restart
        self._sandboxes.clear()
