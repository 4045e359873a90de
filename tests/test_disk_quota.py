"""What a sandbox can write, on the real engine: commands run as uid 1000, a per-sandbox disk
(an ext4 image on a loop device) holds the workspace and HOME, a write past it is a clear tool
error and the session goes on, snapshots carry the disk, and nothing is left mounted."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings
from bot.repos import load_repos
from bot.service import Service
from bot.slack.messages import thread_surface
from bot.store.db import Database
from bot.store.tables import SandboxSnapshotRow
from sandbox.backend import DISK_LABEL, LABEL, SandboxLimits
from sandbox.disk import DiskStore
from sandbox.docker import DockerBackend, UnknownRuntime
from sandbox.images import ImageBuilder
from sandbox.pool import WarmPool
from sandbox.protocol import Exec
from sandbox.sessions import SandboxManager
from sandbox.stack import SandboxStack
from tests.conftest import make_settings, service_env
from tests.fakes.openai import Reply, ToolCall
from tests.sandbox_fixtures import BASE_IMAGE, repos_yaml
from tests.test_sandbox_sessions import finished, start_service, tool_results, until

pytestmark = pytest.mark.usefixtures("docker_cleanup")
PROBE = "id -u; df -m --output=size . | tail -1; stat -c %u . $HOME | tr '\\n' ' '; echo; df -m --output=size /tmp | tail -1"


def loops_and_mounts(under: Path) -> list[str]:
    """Loop devices and mounts whose file or mount point is under `under`."""
    where = str(under.resolve())
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines()
    mounts = Path("/proc/mounts").read_text().splitlines()
    return [line for line in loops + mounts if where in line]


async def test_a_write_past_the_quota_is_a_clear_error_the_session_goes_on_and_a_restore_keeps_the_disk(
        tmp_path, slack, model, git_remote):
    data = tmp_path / "data"
    # a window the 1.9 MB write fits in: no compaction, whose summary call would take a scripted reply
    svc = await start_service(tmp_path, slack, model, git_remote.url, sandbox_disk="64m", sandbox_idle_timeout=1,
                              model_context_windows='{"gpt-5": 10000000}')
    try:
        model.add(
            Reply(tool_calls=[ToolCall("run_command", {"command": PROBE}),
                              ToolCall("write_file", {"path": "notes.txt", "content": "remember me"})]),
            Reply(tool_calls=[ToolCall("run_command", {"command": "dd if=/dev/zero of=big bs=1M count=80"})]),
            Reply(tool_calls=[ToolCall("run_command", {"command": "echo ok"}),
                              ToolCall("write_file", {"path": "more.txt", "content": "x" * 1_900_000})]),
            Reply(tool_calls=[ToolCall("run_command", {"command": "rm big && dd if=/dev/zero of=small bs=1M count=8"})]),
            Reply(text="done"),
        )
        root = await slack.mention("U0ALICE1", "fill the disk")
        await slack.wait_for(lambda: finished(slack, root), timeout=90)

        who, wrote = tool_results(model, 1)
        uid, size, owners, tmp = who.split("\n", 1)[1].split("\n")
        assert uid == "1000", "commands run as uid 1000, never root"
        assert 40 <= int(size) <= 64, "the workspace is the 64m disk"
        assert owners.split() == ["1000", "1000"], "workspace and HOME belong to the sandbox user"
        assert tmp == size, "/tmp is on the disk too"
        assert wrote == "Wrote 11 bytes to notes.txt."
        full = tool_results(model, 2)[-1]
        assert full.startswith("exit code 1") and "No space left on device" in full
        assert full.endswith("disk quota exceeded: this sandbox has SANDBOX_DISK=64m; free space (rm build outputs) and go on")
        echo, write = tool_results(model, 3)[-2:]
        assert echo.startswith("exit code 0") and echo.endswith("ok"), "a small command works on a full disk"
        assert "No space left on device" in write and "disk quota exceeded" in write, "a tool's write says so too"
        freed = tool_results(model, 4)[-1]
        assert freed.startswith("exit code 0") and "copied" in freed, "once space is freed, writes work again"

        session = await svc.sessions.find_by_surface(thread_surface("C0000001", root))
        manager = svc.sandbox.manager  # type: ignore[union-attr]
        disk = manager.get(session.id).disk
        disks = data / "sandbox" / "disks"
        assert disk and (disks / f"{disk}.img").exists()
        assert stat.S_IMODE(os.stat(data / "sandbox").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(disks).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(disks / f"{disk}.img").st_mode) == 0o600

        await until(lambda: _gone(svc, session.id), timeout=20, what="the idle container to be removed")
        await until(lambda: _unmounted(data), timeout=10, what="an idle session's disk to be unmounted")
        assert (disks / f"{disk}.img").exists(), "the disk stays with the session's snapshot"

        model.add(Reply(tool_calls=[ToolCall("read_file", {"path": "notes.txt"}),
                                    ToolCall("run_command", {"command": "ls small big 2>&1; git status --short"})]),
                  Reply(text="found it"))
        await slack.user_message("U0BOB001", "what did you write?", thread_ts=root)
        await slack.wait_for(lambda: finished(slack, root, 2), timeout=60)
        notes, listing = tool_results(model, 6)[-2:]
        assert notes == "remember me", "the restored session sees its earlier files"
        assert "small" in listing and "cannot access 'big'" in listing and "?? notes.txt" in listing
        restored = manager.get(session.id)
        assert restored.source == "snapshot" and restored.disk == disk
    finally:
        await svc.stop()
    assert loops_and_mounts(data) == [], "a stopped service leaves no mount or loop device"

    # An earlier run's leftover: a disk no snapshot names, still mounted.
    orphan = DiskStore(data / "sandbox" / "disks", "64m")
    await orphan.attach("dorphan")
    assert loops_and_mounts(data) != []
    env = service_env(data, slack, model, repos_config=tmp_path / "repos.yml", sandbox_network="host",
                      image_rebuild_interval=0, sandbox_disk="64m", snapshot_retention=0)
    svc = Service(make_settings(env))
    await svc.start()
    try:
        assert not (data / "sandbox" / "disks" / "dorphan.img").exists(), "orphaned disks are deleted at start"
        assert (data / "sandbox" / "disks" / f"{disk}.img").exists(), "a snapshot's disk is not an orphan"
        assert await svc.sandbox.manager.collect_snapshots() == 1  # type: ignore[union-attr]
        assert not (data / "sandbox" / "disks" / f"{disk}.img").exists(), "a collected snapshot takes its disk along"
    finally:
        await svc.stop()
    assert loops_and_mounts(data) == []


async def _unmounted(where: Path) -> bool:
    return loops_and_mounts(where) == []


async def _gone(svc: Service, session_id: str) -> bool:
    return svc.sandbox.manager.get(session_id) is None  # type: ignore[union-attr]


async def test_snapshots_past_the_cap_are_evicted_oldest_idle_first(tmp_path, git_remote):
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'central.db'}")
    await database.upgrade()
    disks = DiskStore(tmp_path / "disks", "32m")
    docker = DockerBackend(SandboxLimits(network="none", memory="256m"), disks=disks)
    catalog = load_repos(repos_yaml(tmp_path / "repos.yml", git_remote.url), "unused/{repo}")
    images = ImageBuilder(docker, database)
    manager = SandboxManager(docker, database, catalog, images, WarmPool(docker, database, images, catalog, 3600),
                             idle_timeout=60, snapshot_retention=3600, snapshots_max=2)
    try:
        made = []
        for n in range(3):
            ref = await docker.create(BASE_IMAGE, {f"{LABEL}.role": "test"}, disk=f"dcap{n}")
            image = await docker.snapshot(ref, f"hosted-agents/session-cap{n}", "1",
                                          {f"{LABEL}.role": "snapshot", DISK_LABEL: f"dcap{n}"})
            await docker.remove(ref, keep_disk=True)
            async with database.session() as s, s.begin():
                s.add(SandboxSnapshotRow(session_id=f"cap{n}", repo="acme/api", image=image,
                                         updated_at=datetime.now(UTC) - timedelta(hours=3 - n)))
            made.append(image)
        assert disks.names() == {"dcap0", "dcap1", "dcap2"} and disks.mounted() == set()
        assert await manager.evict_snapshots() == 1
        assert not await docker.image_exists(made[0]) and disks.names() == {"dcap1", "dcap2"}, "the oldest went, disk and all"
        assert await docker.image_exists(made[1]) and await docker.image_exists(made[2])
        assert [r.session_id for r in await manager.snapshots.oldest_first()] == ["cap1", "cap2"]
    finally:
        for name in disks.names():
            await docker.delete_disk(name)
        await database.close()
    assert loops_and_mounts(tmp_path) == []


async def test_a_disk_starts_with_the_images_workspace_and_holds_tmp_too(tmp_path):
    disks = DiskStore(tmp_path / "disks", "32m")
    docker = DockerBackend(SandboxLimits(network="none", memory="256m"), disks=disks)
    seed = await docker.create(BASE_IMAGE, {f"{LABEL}.role": "test"})
    code, _ = await docker.docker_exec(seed, ["sh", "-c", "mkdir -p /workspace/src && echo seeded > /workspace/src/a"])
    assert code == 0
    image = await docker.snapshot(seed, "hosted-agents/test-seeded", "1", {f"{LABEL}.role": "test"})
    await docker.remove(seed)

    ref = await docker.create(image, {f"{LABEL}.role": "test"}, disk="dseed")
    ex = await docker.executor(ref)
    try:
        probe = await ex.call(Exec(cmd="cat src/a; stat -c %u src/a; id -u; head -c 40m /dev/zero > /var/tmp/fill; "
                                       "head -c 40m /dev/zero > /tmp/fill; echo $?; rm /tmp/fill /var/tmp/fill; "
                                       "echo > /run/lock/x && echo lock-ok; touch /etc/x /x 2>&1 | wc -l"))
        lines = probe.output.splitlines()
        assert lines[:3] == ["seeded", "1000", "1000"], "the image's checkout was copied onto the disk"
        assert "No space left on device" in probe.output and lines[-3] == "1", "/tmp and /var/tmp count against the 32m disk"
        assert lines[-2:] == ["lock-ok", "2"], "/run/lock is writable (a tiny tmpfs); the rest is not"
        inspect = await asyncio.to_thread(docker.api.inspect_container, ref.id)
        assert set(inspect["HostConfig"]["CapAdd"]) == {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"}
        assert inspect["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    finally:
        await ex.close()
        await docker.remove(ref)
    assert disks.names() == set() and loops_and_mounts(tmp_path) == [], "a removed container's disk is deleted"


async def test_sandbox_runtime_is_checked_against_the_engine_at_start(tmp_path, docker_engine):
    with pytest.raises(UnknownRuntime, match="no runtime 'no-such-runtime'"):
        DockerBackend(SandboxLimits(network="none", runtime="no-such-runtime"))
    settings = load_settings(_env_file=None, data_dir=tmp_path / "data", sandbox_runtime="no-such-runtime",
                             sandbox_network="none")
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'central.db'}")
    with pytest.raises(ConfigError, match=r"^SANDBOX_RUNTIME: .*no runtime 'no-such-runtime' .*runc"):
        SandboxStack(settings, database, load_repos(None, "unused/{repo}"))
    await database.close()

    docker = DockerBackend(SandboxLimits(network="none", runtime="runc"))
    ref = await docker.create(BASE_IMAGE, {f"{LABEL}.role": "test"})
    try:
        assert (await asyncio.to_thread(docker.api.inspect_container, ref.id))["HostConfig"]["Runtime"] == "runc"
    finally:
        await docker.remove(ref)
