"""Per-repo sandbox images: clone at the branch tip → setup → warm → commit as an image.

Builds are recorded in the central DB with status, duration and log. A failed build leaves the
previous image in service. Only the last few ready images of a repo are kept.

Images live in one Docker engine while their records are shared by every instance of the
deployment: records name their engine, and each engine builds its own. Instances sharing an
engine build a repo once: the build runs under a database lock named by engine and repo, and
whoever waited for it takes the image that landed meanwhile instead of building again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import time
from collections import defaultdict
from collections.abc import Callable

from sqlalchemy import select, update

from bot.repos import Repo
from bot.store.db import Database
from bot.store.tables import ImageRow
from sandbox.backend import LABEL, SandboxBackend
from sandbox.executor import Executor
from sandbox.gitauth import GitCredentials, no_credentials
from sandbox.gitrefs import InvalidBranch, check_branch
from sandbox.protocol import SANDBOX_HOME, SANDBOX_UID, WORKSPACE, Exec

log = logging.getLogger(__name__)

LOG_LIMIT = 200_000


class BuildFailed(Exception):
    def __init__(self, repo: str, step: str, log_text: str):
        super().__init__(f"image build of {repo} failed at: {step}")
        self.repo, self.step, self.log = repo, step, log_text


class _StepFailed(Exception):
    def __init__(self, step: str):
        self.step = step


def image_repository(repo: str) -> str:
    """Docker repository name for a repo's images, e.g. `hosted-agents/acme-api`."""
    return "hosted-agents/" + re.sub(r"[^a-z0-9._-]+", "-", repo.lower())


class ImageBuilder:
    def __init__(self, backend: SandboxBackend, db: Database, keep: int = 3, step_timeout: float = 1800.0,
                 credentials: GitCredentials = no_credentials):
        self.backend = backend
        self.db = db
        self.credentials = credentials
        """The clone's (and `git ls-remote`'s) credentials for private remotes."""
        self.keep = keep
        self.step_timeout = step_timeout
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.on_new_image: list[Callable[[str, str], object]] = []
        """Called with (repo, image tag) after a build lands, e.g. to refresh the warm pool."""

    async def latest(self, repo: str) -> str | None:
        row = await self._latest_row(repo)
        return row.tag if row else None

    async def build(self, repo: Repo, force: bool = True) -> str:
        """Build now (one build per repo and engine at a time, across instances); returns the image
        tag. An image of the repo that lands while this waits for another build is the answer;
        else with `force=False` the current image is kept when it is at the branch tip. Raises
        BuildFailed."""
        before = await self._latest_row(repo.name)
        async with self._locks[repo.name], self.db.lock(f"image build {self.backend.engine} {repo.name}"):
            current = await self._latest_row(repo.name)
            if current is not None and (before is None or current.id != before.id):
                return current.tag  # type: ignore[return-value]
            if not force:
                tip = await remote_tip(repo.clone_url or "", repo.default_branch, await self.credentials(repo))
                if current is not None and tip is not None and current.commit == tip:
                    return current.tag  # type: ignore[return-value]
            return await self._build(repo)

    async def claim_unplaced(self) -> int:
        """Records from before images were recorded per engine: this engine's when it has the tag."""
        async with self.db.session() as s:
            unplaced = select(ImageRow).where(ImageRow.engine.is_(None), ImageRow.status == "ready")
            rows = list((await s.execute(unplaced)).scalars())
        claimed = 0
        for row in rows:
            if row.tag and await self.backend.image_exists(row.tag):
                async with self.db.session() as s, s.begin():
                    result = await s.execute(update(ImageRow).where(ImageRow.id == row.id, ImageRow.engine.is_(None))
                                             .values(engine=self.backend.engine))
                claimed += int(getattr(result, "rowcount", 0) or 0)
        return claimed

    async def _build(self, repo: Repo) -> str:
        started = time.time()
        async with self.db.session() as s, s.begin():
            row = ImageRow(repo=repo.name, status="building", started_at=started, log="", engine=self.backend.engine)
            s.add(row)
        lines: list[str] = []
        ref = None
        try:
            try:
                branch = check_branch(repo.default_branch)
            except InvalidBranch as exc:
                lines.append(str(exc))
                raise _StepFailed(f"checking the branch name: {exc}") from None
            ref = await self.backend.create(repo.image.base, {f"{LABEL}.role": "build", f"{LABEL}.repo": repo.name})
            ex = await self.backend.executor(ref)
            clone = ["git", "clone", "--quiet", "--branch", branch, "--", repo.clone_url or "", "."]
            await self._step(ex, lines, "clone", Exec(argv=clone, env=await self.credentials(repo)))
            commit = (await self._step(ex, lines, "commit", Exec(argv=["git", "rev-parse", "HEAD"]))).strip()
            # Setup steps come from the operator's config and install things: they run as root,
            # and what they leave in the workspace is handed to the sandbox user afterwards.
            for command in repo.image.setup:
                await self._step(ex, lines, f"setup: {command}", Exec(cmd=command, as_root=True))
            owner = f"{SANDBOX_UID}:{SANDBOX_UID}"
            await self._step(ex, lines, "ownership", Exec(argv=["chown", "-R", owner, WORKSPACE, SANDBOX_HOME], as_root=True))
            for command in repo.image.warm:  # as the sandbox user: its caches are the ones sessions use
                await self._step(ex, lines, f"warm: {command}", Exec(cmd=command), fatal=False)
            tag = f"{commit[:12]}-b{row.id}"  # unique: the same commit may be built again
            image = await self.backend.snapshot(
                ref, image_repository(repo.name), tag,
                {f"{LABEL}.role": "image", f"{LABEL}.repo": repo.name, f"{LABEL}.commit": commit}, pause=True,
            )
        except _StepFailed as exc:
            await self._finish(row.id, "failed", started, "\n".join(lines))
            failed = BuildFailed(repo.name, exc.step, "\n".join(lines))
            log.warning("%s; the previous image stays in service", failed)
            raise failed from None
        except Exception as exc:
            lines.append(f"error: {exc}")
            await self._finish(row.id, "failed", started, "\n".join(lines))
            raise BuildFailed(repo.name, "starting the build container", "\n".join(lines)) from exc
        finally:
            if ref is not None:
                await self.backend.remove(ref)
        await self._finish(row.id, "ready", started, "\n".join(lines), tag=image, commit=commit)
        log.info("built %s for %s in %.1f s", image, repo.name, time.time() - started)
        await self.prune(repo.name)
        for callback in self.on_new_image:
            result = callback(repo.name, image)
            if asyncio.iscoroutine(result):
                await result
        return image

    async def _step(self, ex: Executor, lines: list[str], name: str, step: Exec, fatal: bool = True) -> str:
        lines.append(f"$ {step.cmd if step.cmd is not None else shlex.join(step.argv or [])}")
        result = await ex.call(step.model_copy(update={"timeout": self.step_timeout, "cap": LOG_LIMIT}))
        lines.append(result.output.rstrip())
        if result.exit_code != 0:
            lines.append(f"[{'timed out' if result.timed_out else 'exit ' + str(result.exit_code)}]")
            if fatal:
                raise _StepFailed(name)
            log.info("warm-up step %r failed (not fatal)", name)
        return result.output

    async def _finish(self, row_id: int, status: str, started: float, text: str,
                      tag: str | None = None, commit: str | None = None) -> None:
        values: dict[str, object] = {"status": status, "duration_s": time.time() - started, "log": text[-LOG_LIMIT:]}
        if tag:
            values.update(tag=tag, commit=commit)
        async with self.db.session() as s, s.begin():
            await s.execute(update(ImageRow).where(ImageRow.id == row_id).values(**values))

    async def _latest_row(self, repo: str) -> ImageRow | None:
        rows = await self._ready(repo, limit=1)
        return rows[0] if rows else None

    async def _ready(self, repo: str, limit: int | None = None) -> list[ImageRow]:
        """A repo's ready images, newest first."""
        query = (select(ImageRow).where(ImageRow.repo == repo, ImageRow.status == "ready", ImageRow.engine == self.backend.engine)
                 .order_by(ImageRow.id.desc()))
        async with self.db.session() as s:
            return list((await s.execute(query.limit(limit))).scalars())

    async def prune(self, repo: str) -> None:
        """Keep the newest `keep` ready images of a repo; remove the rest."""
        for old in (await self._ready(repo))[self.keep :]:
            if old.tag:
                await self.backend.remove_image(old.tag)
            async with self.db.session() as s, s.begin():
                await s.execute(update(ImageRow).where(ImageRow.id == old.id).values(status="pruned"))

    async def history(self, repo: str | None = None, limit: int = 20) -> list[ImageRow]:
        query = select(ImageRow).order_by(ImageRow.id.desc()).limit(limit)
        if repo:
            query = query.where(ImageRow.repo == repo)
        async with self.db.session() as s:
            return list((await s.execute(query)).scalars().all())


async def remote_tip(url: str, branch: str, env: dict[str, str] | None = None) -> str | None:
    """The commit at the branch tip, asked of the remote without a clone (None if unreachable)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "git", "ls-remote", url, f"refs/heads/{branch}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except (OSError, TimeoutError):
        return None
    first = out.decode().split()
    return first[0] if first else None

