"""Several instances of one deployment (PostgreSQL) on one Docker engine: each labels its
containers with its id, keeps its hands off the live ones' containers, reaps the dead ones',
and a repo's image is built once per engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from bot.config import load_settings, normalise_database_url
from bot.repos import load_repos
from bot.sessions.cluster import Cluster
from bot.store.db import Database
from bot.store.tables import ImageRow, PoolEntryRow
from sandbox.backend import CLUSTER_LABEL, INSTANCE_LABEL, LABEL, SandboxLimits
from sandbox.docker import DockerBackend
from sandbox.snapshots import SnapshotRecords
from sandbox.stack import SandboxStack
from tests.sandbox_fixtures import BASE_IMAGE, GitRemote, repos_yaml
from tests.test_sandbox_sessions import until

pytestmark = pytest.mark.usefixtures("docker_cleanup")


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Database]:
    database = Database(pg_url.replace("postgresql://", "postgresql+asyncpg://"))
    await database.upgrade()
    yield database
    await database.close()


async def alive(db: Database, *ids: str) -> None:
    """Instances as `Cluster` registers them (their heartbeat is not running: the test decides)."""
    async with db.engine.begin() as conn:
        for instance in ids:
            await conn.execute(text(
                "INSERT INTO instances (id, host, pid, started_at, expires_at)"
                " VALUES (:id, 'test', 1, now(), now() + interval '1 hour')"
                " ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at"), {"id": instance})


async def dead(db: Database, instance: str) -> None:
    """Its lease lapsed (kill -9: no heartbeat since)."""
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE instances SET expires_at = now() - interval '1 second' WHERE id = :id"),
                           {"id": instance})


def stack(tmp_path: Path, db: Database, remote: GitRemote, instance: str, pool_size: int = 0) -> SandboxStack:
    repos = repos_yaml(tmp_path / f"repos-{instance}.yml", remote.url, pool_size=pool_size)
    settings = load_settings(_env_file=None, data_dir=str(tmp_path / instance), repos_config=str(repos),
                             database_url=db.url, sandbox_network="host", sandbox_memory="512m", sandbox_pids=256,
                             image_rebuild_interval=0, sandbox_disk="0")  # a dead instance's disks are its own to unmount
    catalog = load_repos(settings.repos_config, settings.git_clone_url)
    cluster = Cluster(db, instance, lease_ttl=10)
    return SandboxStack(settings, db, catalog, instance_id=instance, live_instances=cluster.live_instances)


async def pool_rows(db: Database) -> dict[str, str | None]:
    async with db.session() as s:
        return {r.container_id: r.instance for r in (await s.execute(select(PoolEntryRow))).scalars()}


async def image_rows(db: Database) -> list[ImageRow]:
    async with db.session() as s:
        return list((await s.execute(select(ImageRow).order_by(ImageRow.id))).scalars())


async def test_an_instance_leaves_live_instances_containers_alone_and_reaps_the_dead_ones(tmp_path, db, git_remote):
    await alive(db, "inst-a", "inst-b")
    a = stack(tmp_path, db, git_remote, "inst-a", pool_size=1)
    b = stack(tmp_path, db, git_remote, "inst-b", pool_size=1)
    try:
        await a.start()
        await until(lambda: _warm(a), what="inst-a's pool")
        a_pool = a.pool._entries["acme/api"][0].ref
        assert a_pool.labels[INSTANCE_LABEL] == "inst-a" and a_pool.labels[CLUSTER_LABEL] == a.backend.cluster
        a_session = await a.backend.create(BASE_IMAGE, {f"{LABEL}.role": "session", f"{LABEL}.session": "s-a"})
        # an older version's container (no instance label), and another deployment's on the same engine
        older = a.backend.api.create_container(BASE_IMAGE, command=["sleep", "infinity"],
                                               labels={f"{LABEL}.managed": "1", f"{LABEL}.role": "session"})["Id"]
        a.backend.api.start(older)
        elsewhere = DockerBackend(SandboxLimits(network="host"), instance="inst-x", cluster="another-deployment")
        foreign = await elsewhere.create(BASE_IMAGE, {f"{LABEL}.role": "pool", f"{LABEL}.repo": "acme/api"})

        await b.start()
        await until(lambda: _warm(b), what="inst-b's pool")
        assert await a.backend.is_running(a_pool), "inst-a's warm container is not inst-b's to remove"
        assert await a.backend.is_running(a_session), "nor is its session's container"
        assert not await _exists(a.backend, older), "an older version's container is removed at start"
        assert [e.ref.id for e in b.pool._entries["acme/api"]] != [a_pool.id], "inst-b adopts only its own"
        b_pool = b.pool._entries["acme/api"][0].ref
        assert (await pool_rows(db)) == {a_pool.id: "inst-a", b_pool.id: "inst-b"}, "inst-a's pool row stays"
        assert len(await image_rows(db)) == 1, "inst-b uses the image inst-a built in the same engine"
        assert await b.reap_dead() == 0, "nothing to reap while inst-a is alive"

        await dead(db, "inst-a")  # kill -9: its containers stay behind, its heartbeat stops
        assert await b.reap_dead() == 2
        assert not await a.backend.is_running(a_pool) and not await a.backend.is_running(a_session)
        assert await b.backend.is_running(b_pool), "inst-b's own container stays"
        assert await elsewhere.is_running(foreign), "another deployment's container is never touched"
        assert (await pool_rows(db)) == {b_pool.id: "inst-b"}, "the dead instance's pool rows are forgotten"
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_a_restarted_instance_takes_back_its_own_and_a_dead_ones_orphans(tmp_path, db, git_remote):
    await alive(db, "inst-a", "inst-b")
    a = stack(tmp_path, db, git_remote, "inst-a", pool_size=1)
    await a.start()
    try:
        await until(lambda: _warm(a), what="inst-a's pool")
        warm = a.pool._entries["acme/api"][0].ref
        a_orphan = await a.backend.create(BASE_IMAGE, {f"{LABEL}.role": "build", f"{LABEL}.repo": "acme/api"})
    finally:
        await a.close()
    b = stack(tmp_path, db, git_remote, "inst-b")
    b_session = await b.backend.create(BASE_IMAGE, {f"{LABEL}.role": "session", f"{LABEL}.session": "s-b"})
    await dead(db, "inst-b")
    await b.close()

    again = stack(tmp_path, db, git_remote, "inst-a", pool_size=1)  # the same INSTANCE_ID, restarted
    await again.start()
    try:
        assert [e.ref.id for e in again.pool._entries["acme/api"]] == [warm.id], "its warm container is adopted"
        assert not await _exists(again.backend, a_orphan.id), "its own build container of the earlier run goes"
        assert not await _exists(again.backend, b_session.id), "so does a dead instance's"
    finally:
        await again.close()


async def test_instances_starting_together_on_one_engine_build_the_image_once(tmp_path, db, git_remote):
    await alive(db, "inst-a", "inst-b", "inst-c")
    stacks = [stack(tmp_path, db, git_remote, name) for name in ("inst-a", "inst-b", "inst-c")]
    try:
        await asyncio.gather(*(s.start() for s in stacks))
        tags = [await until(lambda s=s: s.images.latest("acme/api"), what="an image") for s in stacks]  # type: ignore[misc]
        rows = await image_rows(db)
        assert [(r.status, r.engine) for r in rows] == [("ready", stacks[0].backend.engine)], "one build, recorded per engine"
        assert len(set(tags)) == 1

        # the scheduled rebuild after the branch moved: once for the engine, whoever runs it
        git_remote.commit({"app.py": "def add(a, b):\n    return a + b\n"}, "fix")
        await asyncio.gather(*(s.build_all() for s in stacks))
        rows = await image_rows(db)
        assert [r.status for r in rows] == ["ready", "ready"] and rows[1].commit == git_remote.head
        async with db.session() as s:
            building = (await s.execute(select(func.count()).select_from(ImageRow).where(ImageRow.status != "ready"))).scalar()
        assert building == 0
    finally:
        await asyncio.gather(*(s.close() for s in stacks))


async def test_another_engine_builds_its_own_image(tmp_path, db, git_remote):
    """Image records are shared, images are not: an engine without the image builds it."""
    await alive(db, "inst-a", "inst-b")
    a, b = stack(tmp_path, db, git_remote, "inst-a"), stack(tmp_path, db, git_remote, "inst-b")
    b.backend.engine = "ANOTHER:HOST:ENGINE"  # a second host: there is one engine on this machine
    try:
        first = await a.images.build(a.catalog.repos[0], force=False)
        assert await b.images.latest("acme/api") is None, "inst-a's image is not in inst-b's engine"
        second = await b.images.build(b.catalog.repos[0], force=False)
        assert second != first and await a.images.latest("acme/api") == first
        assert {r.engine for r in await image_rows(db)} == {a.backend.engine, "ANOTHER:HOST:ENGINE"}
    finally:
        await asyncio.gather(a.close(), b.close())


async def _warm(s: SandboxStack) -> bool:
    return s.pool.warm_count("acme/api") >= 1


async def _exists(backend: DockerBackend, container_id: str) -> bool:
    return any(ref.id == container_id for ref in await backend.find({}))


async def test_the_service_labels_its_sandboxes_with_its_instance_id_and_reaps_by_the_cluster(tmp_path, pg_url, slack, model,
                                                                                               git_remote):
    from bot.service import Service
    from sandbox.ownership import deployment_digest
    from tests.conftest import make_settings, service_env

    repos = repos_yaml(tmp_path / "repos.yml", git_remote.url, pool_size=1)
    svc = Service(make_settings(service_env(tmp_path / "data", slack, model, database_url=pg_url, instance_id="svc-a",
                                            repos_config=repos, sandbox_network="host", sandbox_memory="512m",
                                            sandbox_pids=256, image_rebuild_interval=0, sandbox_disk="0")))
    await svc.start()
    try:
        assert svc.sandbox is not None
        sandbox = svc.sandbox
        await until(lambda: _warm(sandbox), what="the pool")
        assert sandbox.pool._entries["acme/api"][0].ref.labels[INSTANCE_LABEL] == "svc-a"
        assert await sandbox.ownership.live_set() == {"svc-a"}
        # a container another instance of this deployment left behind; that instance never came back
        gone = DockerBackend(SandboxLimits(network="host"), instance="svc-gone", cluster=deployment_digest(svc.db.url))
        left = await gone.create(BASE_IMAGE, {f"{LABEL}.role": "session", f"{LABEL}.session": "s-gone"})
        assert await sandbox.reap_dead() == 1 and not await gone.is_running(left)
    finally:
        await svc.stop()


async def test_snapshot_records_are_collected_and_evicted_only_by_the_engine_that_holds_their_image(pg_url):
    db = Database(normalise_database_url(pg_url))
    await db.upgrade()
    try:
        here, there = SnapshotRecords(db, "engine-a"), SnapshotRecords(db, "engine-b")
        await here.record("s-here", "acme/api", "snap:1")
        await there.record("s-there", "acme/api", "snap:2")
        assert [r.session_id for r in await here.oldest_first()] == ["s-here"]
        assert [r.session_id for r in await there.oldest_first()] == ["s-there"]
        # a session taken over on the other engine: its new snapshot replaces the record, not the old image
        assert await there.record("s-here", "acme/api", "snap:3") is None
        assert [r.session_id for r in await there.oldest_first()] == ["s-there", "s-here"]
        assert await there.record("s-here", "acme/api", "snap:4") == "snap:3"
    finally:
        await db.close()
