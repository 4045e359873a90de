"""Fixtures for tests on the real Docker engine and real git: a git remote over smart HTTP on
127.0.0.1 with a small repository, a TCP proxy that can hold the git sync back, and cleanup of
what tests made."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

BASE_IMAGE = "hosted-agents/base:bookworm"
APP = "def add(a, b):\n    return a - b\n"
TEST = (
    "import unittest\nfrom app import add\n\n\nclass T(unittest.TestCase):\n"
    "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n\nunittest.main()\n"
)


def _docker_client():  # type: ignore[no-untyped-def]
    import docker

    client = docker.from_env(timeout=30)
    client.ping()
    return client


@pytest.fixture(scope="session")
def docker_engine():  # type: ignore[no-untyped-def]
    """The real engine with the base image; loud failure under CI, a skip elsewhere."""
    try:
        client = _docker_client()
        client.images.get(BASE_IMAGE)
    except Exception as exc:
        message = (f"Docker engine or {BASE_IMAGE} unavailable ({type(exc).__name__}: {exc}); "
                   "run scripts/ensure-docker.sh and scripts/build-base-image.sh")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    started = time.time()
    yield client
    # A `docker commit` running in a worker thread cannot be cancelled and may land after its
    # test's cleanup: sweep once more when the whole session is done.
    time.sleep(1)
    remove_created_since(client, started)


def remove_created_since(client, since: float) -> None:  # type: ignore[no-untyped-def]
    """Remove the hosted-agents containers and images created after `since` (and only those:
    a real deployment on the same engine keeps its sandboxes)."""
    from datetime import datetime

    def created(attrs: dict) -> float:  # type: ignore[type-arg]
        return datetime.fromisoformat(attrs["Created"][:19] + "+00:00").timestamp()  # whole seconds: `since - 1` covers

    for container in client.containers.list(all=True, filters={"label": "hosted-agents.managed=1"}):
        if created(container.attrs) >= since - 1:
            container.remove(force=True)
    for image in client.images.list(filters={"label": "hosted-agents.managed=1"}):
        if created(image.attrs) >= since - 1:
            with contextlib.suppress(Exception):
                client.images.remove(image.id, force=True)
    for volume in client.volumes.list(filters={"label": "hosted-agents.managed=1"}):
        # a sandbox disk's volume (sandbox/disk.py): unmount the disk it binds, or its loop
        # device and mount outlive the test (warm pool containers are left for adoption)
        made = datetime.fromisoformat(volume.attrs["CreatedAt"][:19] + "+00:00").timestamp()
        if made >= since - 1:
            device = (volume.attrs.get("Options") or {}).get("device", "")
            with contextlib.suppress(Exception):
                volume.remove(force=True)
            mountpoint = os.path.dirname(device)
            if device and os.path.ismount(mountpoint):
                subprocess.run(["umount", "--lazy", mountpoint], check=False)


@pytest.fixture
def docker_cleanup(docker_engine) -> Iterator[None]:  # type: ignore[no-untyped-def]
    since = time.time()
    yield
    remove_created_since(docker_engine, since)


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()



@dataclass
class GitRemote:
    root: Path
    work: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/acme/api.git"

    @property
    def head(self) -> str:
        return _git(self.work, "rev-parse", "HEAD")

    def commit(self, files: dict[str, str], message: str) -> str:
        for name, content in files.items():
            (self.work / name).write_text(content)
        _git(self.work, "add", "-A")
        _git(self.work, "commit", "-qm", message)
        _git(self.work, "push", "-q", "origin", "main")
        return _git(self.work, "rev-parse", "HEAD")


@contextmanager
def serve_git_remote(tmp_path: Path) -> Iterator[GitRemote]:
    """A bare repo `acme/api` with a small Python project, served over smart HTTP on 127.0.0.1."""
    root = tmp_path / "git"
    bare = root / "acme" / "api.git"
    bare.mkdir(parents=True)
    _git(bare, "init", "-q", "--bare", "-b", "main")
    work = tmp_path / "work"
    _git(tmp_path, "clone", "-q", str(bare), str(work))
    _git(work, "checkout", "-q", "-b", "main")
    # The server runs on a loop of its own, in a thread: sync and async tests alike can use it.
    from tests.fakes.git_http import GitHttpServer

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="git-http", daemon=True)
    thread.start()
    server = GitHttpServer(root)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        remote = GitRemote(root, work, server.port)
        remote.commit({"README.md": "# acme/api\n", "app.py": APP, "test_app.py": TEST}, "initial")
        yield remote
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def git_remote(tmp_path: Path, docker_engine) -> Iterator[GitRemote]:  # type: ignore[no-untyped-def]
    with serve_git_remote(tmp_path) as remote:
        yield remote


class SlowProxy:
    """A TCP proxy in front of the git remote; `delay` holds each new connection back."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.delay = 0.0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/acme/api.git"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(self.delay)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self._server:
            self._server.close()


@pytest.fixture
async def slow_git(git_remote: GitRemote) -> AsyncIterator[SlowProxy]:
    proxy = SlowProxy(git_remote.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


def repos_yaml(path: Path, clone_url: str, pool_size: int = 0, setup: str = "echo setup-ran > .setup-marker") -> Path:
    path.write_text(
        "repos:\n"
        "  - name: acme/api\n"
        f"    clone_url: {clone_url}\n"
        "    default_branch: main\n"
        f"    pool_size: {pool_size}\n"
        "    image:\n"
        f"      base: {BASE_IMAGE}\n"
        f"      setup: [{setup!r}]\n"
        "      warm: ['echo warmed > .warm-marker', 'exit 3']\n"
    )
    return path


async def no_python_image() -> str:
    """The base image with python3 deleted: only a shell and the usual tools are left."""
    from sandbox.backend import LABEL, SandboxLimits
    from sandbox.docker import DockerBackend

    docker = DockerBackend(SandboxLimits(network="none"))
    ref = await docker.create(BASE_IMAGE, {f"{LABEL}.role": "test"})
    code, _ = await docker.docker_exec(ref, ["sh", "-c", "rm -f /usr/bin/python3* && ! command -v python3"])
    assert code == 0
    image = await docker.snapshot(ref, "hosted-agents/test-no-python", "1", {f"{LABEL}.role": "test"})
    await docker.remove(ref)
    return image
