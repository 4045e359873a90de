"""The sandbox layer on the real Docker engine and real git."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.repos import load_repos
from bot.store.db import Database
from bot.store.tables import ImageRow
from sandbox.backend import LABEL, SandboxLimits
from sandbox.docker import DockerBackend
from sandbox.images import BuildFailed, ImageBuilder
from sandbox.pool import WarmPool
from sandbox.protocol import Edit, Exec, ListDir, Read, Search, Write
from sandbox.workspace import DirEntry, WorkspaceLost
from tests.sandbox_fixtures import no_python_image, repos_yaml

pytestmark = pytest.mark.usefixtures("docker_cleanup")


@pytest.fixture
async def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'central.db'}")
    await database.upgrade()
    yield database
    await database.close()


def backend(**limits) -> DockerBackend:  # type: ignore[no-untyped-def]
    return DockerBackend(SandboxLimits(network="host", memory="512m", pids=256, **limits))


async def test_an_image_builds_with_setup_and_warm_up_and_a_failed_build_keeps_the_previous(tmp_path, db, git_remote):
    catalog = load_repos(repos_yaml(tmp_path / "repos.yml", git_remote.url), "unused/{repo}")
    repo = catalog.repos[0]
    docker = backend()
    images = ImageBuilder(docker, db)
    tag = await images.build(repo)
    assert tag.startswith("hosted-agents/acme-api:") and await images.latest("acme/api") == tag

    ref = await docker.create(tag, {f"{LABEL}.role": "test"})
    ex = await docker.executor(ref)
    assert (await ex.call(Read(path=".setup-marker"))).content == "setup-ran\n"
    assert (await ex.call(Read(path=".warm-marker"))).content == "warmed\n", "warm-up ran (its failing step is not fatal)"
    owners = await ex.call(Exec(cmd="find . -not -uid 1000 | head -3; id -u; id -un"))
    assert owners.output == "1000\nsandbox\n", "setup ran as root; the workspace was then handed to the sandbox user"
    async with db.session() as s:
        row = (await s.execute(select(ImageRow))).scalar_one()
    assert row.status == "ready" and row.commit == git_remote.head and row.tag == tag
    assert "$ echo setup-ran > .setup-marker" in row.log and "[exit 3]" in row.log and row.duration_s > 0

    broken = repo.model_copy(update={"image": repo.image.model_copy(update={"setup": ["echo about to fail; exit 7"]})})
    with pytest.raises(BuildFailed) as err:
        await images.build(broken)
    assert err.value.step == "setup: echo about to fail; exit 7" and "about to fail" in err.value.log
    assert await images.latest("acme/api") == tag, "the previous image stays in service"
    async with db.session() as s:
        statuses = [r.status for r in (await s.execute(select(ImageRow).order_by(ImageRow.id))).scalars()]
    assert statuses == ["ready", "failed"]


async def test_two_concurrent_claims_get_different_containers_and_a_new_image_retires_old_entries(tmp_path, db, git_remote):
    catalog = load_repos(repos_yaml(tmp_path / "repos.yml", git_remote.url, pool_size=2), "unused/{repo}")
    docker = backend()
    images = ImageBuilder(docker, db)
    pool = WarmPool(docker, db, images, catalog, ttl=3600)
    first_image = await images.build(catalog.repos[0])
    await pool.fill("acme/api")
    assert pool.warm_count("acme/api") == 2

    a, b = await asyncio.gather(pool.claim("acme/api", "s1"), pool.claim("acme/api", "s2"))
    assert a is not None and b is not None and a.ref.id != b.ref.id
    await asyncio.sleep(0)  # claims schedule a refill
    await pool.fill("acme/api")
    old_entries = [e.ref for e in pool._entries["acme/api"]]
    assert len(old_entries) == 2 and all(e.image == first_image for e in pool._entries["acme/api"])

    git_remote.commit({"app.py": "def add(a, b):\n    return a + b\n"}, "fix")
    new_image = await images.build(catalog.repos[0])  # lands → the pool retires and refills
    assert new_image != first_image
    assert {e.image for e in pool._entries["acme/api"]} == {new_image} and pool.warm_count("acme/api") == 2
    for ref in old_entries:
        assert not await docker.is_running(ref), "idle entries of the old image are removed"
    assert await docker.is_running(a.ref) and await docker.is_running(b.ref), "claimed containers are not the pool's any more"
    await pool.close()


async def test_limits_hold_a_fork_bomb_and_a_memory_hog_inside_the_sandbox(db):
    docker = backend(cpus=1.0)
    ref = await docker.create("hosted-agents/base:bookworm", {f"{LABEL}.role": "test"})
    host = (await asyncio.to_thread(docker.api.inspect_container, ref.id))["HostConfig"]
    assert host["Memory"] == 512 * 1024 * 1024 and host["PidsLimit"] == 256 and host["NanoCpus"] == 10**9
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["CapDrop"] == ["ALL"]
    env = (await asyncio.to_thread(docker.api.inspect_container, ref.id))["Config"]["Env"]
    assert not any("TOKEN" in e or "KEY" in e or "SECRET" in e for e in env)

    ex = await docker.executor(ref)
    bomb = await ex.call(Exec(cmd="bomb() { bomb | bomb & }; bomb; sleep 3", timeout=2))
    assert bomb.timed_out, "the bomb ran until its timeout and its process group was killed"
    events = await ex.call(Exec(cmd="cat /sys/fs/cgroup/pids/pids.events /sys/fs/cgroup/pids.events 2>/dev/null"))
    assert int(events.output.split("max")[1].split()[0]) > 0, "forks were refused at the pids limit"
    left = await ex.call(Exec(cmd="ls /proc | grep -c '^[0-9]'"))
    assert int(left.output) < 20, "nothing of the bomb is left running"
    hog = await ex.call(Exec(cmd="python3 -c 'x = bytearray(2 * 1024**3); print(len(x))'", timeout=30))
    assert hog.exit_code != 0 and "2147483648" not in hog.output
    after = await ex.call(Exec(cmd="echo still here", timeout=10))  # the executor lives (or came back)
    assert after.output == "still here\n"

    await docker.remove(ref)
    with pytest.raises(WorkspaceLost):
        await ex.call(Exec(cmd="true"))


def test_the_cli_builds_images_on_demand_and_shows_the_pool(tmp_path, git_remote):
    import os
    import subprocess
    import sys

    repos = repos_yaml(tmp_path / "repos.yml", git_remote.url, pool_size=1)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "REPOS_CONFIG": str(repos),
           "DATA_DIR": str(tmp_path / "data"), "SANDBOX_NETWORK": "host"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, capture_output=True, text=True, timeout=120)

    built = cli("images", "build", "acme/api")
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith("acme/api: built hosted-agents/acme-api:")
    listed = cli("images", "list")
    assert "acme/api" in listed.stdout and "ready" in listed.stdout
    status = cli("pool", "status")
    assert status.returncode == 0 and "acme/api" in status.stdout and "warm 0/1" in status.stdout
    unknown = cli("images", "build", "acme/nope")
    assert unknown.returncode == 2 and "unknown repo 'acme/nope'" in unknown.stderr


async def test_unclaimed_entries_expire_and_entries_of_an_image_built_elsewhere_are_replaced(tmp_path, db, git_remote):
    catalog = load_repos(repos_yaml(tmp_path / "repos.yml", git_remote.url, pool_size=1), "unused/{repo}")
    docker = backend()
    images = ImageBuilder(docker, db)
    pool = WarmPool(docker, db, images, catalog, ttl=3600)
    await images.build(catalog.repos[0])
    await pool.fill("acme/api")
    first = pool._entries["acme/api"][0]

    other_process = ImageBuilder(docker, db)  # e.g. the CLI: its build does not call our pool
    newer = await other_process.build(catalog.repos[0])
    await pool.expire()
    assert [e.image for e in pool._entries["acme/api"]] == [newer]
    assert not await docker.is_running(first.ref)

    pool.ttl = 0
    second = pool._entries["acme/api"][0]
    await pool.expire()
    assert pool.warm_count("acme/api") == 1 and pool._entries["acme/api"][0].ref.id != second.ref.id

    pool.ttl = 3600
    pool.warm("acme/api")  # someone started typing: one more than configured
    await pool.fill("acme/api")
    assert pool.warm_count("acme/api") == 2
    await pool.close()


async def test_only_the_last_few_images_are_kept_and_old_snapshots_are_collected(tmp_path, db, git_remote):
    from bot.store.tables import SandboxSnapshotRow
    from sandbox.sessions import SandboxManager

    catalog = load_repos(repos_yaml(tmp_path / "repos.yml", git_remote.url), "unused/{repo}")
    docker = backend()
    images = ImageBuilder(docker, db, keep=1)
    first = await images.build(catalog.repos[0])
    second = await images.build(catalog.repos[0])
    assert not await docker.image_exists(first) and await docker.image_exists(second)
    async with db.session() as s:
        assert [r.status for r in (await s.execute(select(ImageRow).order_by(ImageRow.id))).scalars()] == ["pruned", "ready"]

    ref = await docker.create(second, {f"{LABEL}.role": "test"})
    snapshot = await docker.snapshot(ref, "hosted-agents/session-old", "1", {f"{LABEL}.role": "snapshot"})
    async with db.session() as s, s.begin():
        s.add(SandboxSnapshotRow(session_id="0123456789abcdef", repo="acme/api", image=snapshot))
    manager = SandboxManager(docker, db, catalog, images, WarmPool(docker, db, images, catalog, 3600),
                             idle_timeout=60, snapshot_retention=3600)
    assert await manager.collect_snapshots() == 0, "a recent snapshot stays"
    manager.snapshot_retention = 0
    assert await manager.collect_snapshots() == 1
    assert not await docker.image_exists(snapshot)
    async with db.session() as s:
        assert (await s.execute(select(SandboxSnapshotRow))).scalars().all() == [], "and its record with it"


async def test_an_image_without_python3_gets_the_shell_executor_with_the_same_guarantees():
    from sandbox.executor import ExecutorError
    from sandbox.shell_executor import ShellExecutor

    docker = backend()
    ref = await docker.create(await no_python_image(), {f"{LABEL}.role": "test"})
    ex = await docker.executor(ref)
    assert isinstance(ex, ShellExecutor)

    result = await ex.call(Exec(cmd="echo out; echo err >&2; printf 'R 99 0 3 3\\nfoo'; exit 3"))
    assert result.exit_code == 3 and result.output == "out\nerr\nR 99 0 3 3\nfoo", "output cannot forge a reply"
    assert (await ex.call(Write(path="src/a.txt", content="héllo\nwörld\n"))).bytes == len("héllo\nwörld\n".encode())
    assert (await ex.call(Read(path="src/a.txt"))).content == "héllo\nwörld\n"
    assert (await ex.call(Edit(path="src/a.txt", old="wörld", new="there"))).replacements == 1
    assert (await ex.call(Read(path="src/a.txt"))).content == "héllo\nthere\n"
    assert DirEntry(name="src", type="dir") in (await ex.call(ListDir(path="."))).entries
    found = await ex.call(Search(pattern="th.re", path="src"))
    assert found.exit_code == 0 and "src/a.txt:2:there" in found.output
    probe = "id -u; stat -c %u src/a.txt; ls /proc/self/fd | wc -l; cat /proc/$PPID/fd/1 </dev/null 2>&1 | head -c 80"
    who = await ex.call(Exec(cmd=probe))
    uid, owner, fds, denied = who.output.split("\n", 3)
    assert (uid, owner) == ("1000", "1000"), "commands and file operations run as the sandbox user"
    assert int(fds) <= 4 and "Permission denied" in denied, "no descriptor of the loop is within reach"

    await ex.call(Exec(cmd="ln -s /etc outside"))
    for bad, message in (("../etc/passwd", "outside the repository"), ("/etc/passwd", "is absolute"),
                         ("outside/passwd", "through a symbolic link")):
        with pytest.raises(ExecutorError, match=message):
            await ex.call(Read(path=bad))

    slow = await ex.call(Exec(cmd="sh -c 'sleep 30' & sleep 30", timeout=1))
    assert slow.timed_out
    left = await ex.call(Exec(cmd="ps -eo args | grep -c '^sleep 30' || true"))
    assert left.output.strip() == "0", "the timeout killed the whole tree"

    task = asyncio.create_task(ex.call(Exec(cmd="sh -c 'sleep 30' & sleep 30")))
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    started = time.monotonic()
    left = await ex.call(Exec(cmd="ps -eo args | grep -c '^sleep 30' || true"))
    assert left.output.strip() == "0", "a cancel (Stop) killed the whole tree"
    assert time.monotonic() - started < 5, "at once, not when the sleeps ran out"
    await ex.close()
    await docker.remove(ref)
