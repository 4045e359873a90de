"""Branch names reach git as checked arguments, never through a shell: on the real engine and git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.config import ConfigError
from bot.repos import load_repos
from bot.store.db import Database
from bot.store.tables import ImageRow
from sandbox.backend import SandboxLimits
from sandbox.docker import DockerBackend
from sandbox.gitrefs import InvalidBranch, check_branch
from sandbox.images import BuildFailed, ImageBuilder
from sandbox.pool import WarmPool
from sandbox.sessions import SandboxManager
from tests.sandbox_fixtures import BASE_IMAGE, GitRemote

NAMES = ["main", "feature/x", "hosted-agents/0123abcd", "fix;touch${IFS}pwned", "a$(id)b", "v1.2", "x@y",
         "-x", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", "/a", "a/", "a//b", "a.", ".a",
         "a/.b", "a.lock", "a/b.lock/c", "@", "a@{1}", "", "a\tb", "a\x7fb"]


STRICTER = {"@"}
"""Names git takes but we refuse: a lone `@` means HEAD to most git commands."""


@pytest.mark.parametrize("name", NAMES)
def test_branch_names_are_checked_as_git_checks_them(name, tmp_path):
    git = subprocess.run(["git", "check-ref-format", "--branch", name], capture_output=True, cwd=tmp_path)
    try:
        check_branch(name)
        ours = True
    except InvalidBranch:
        ours = False
    assert ours == (git.returncode == 0 and name not in STRICTER), f"{name!r}: git says {git.returncode == 0}, we say {ours}"


@pytest.fixture
async def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'central.db'}")
    await database.upgrade()
    yield database
    await database.close()


def catalog(tmp_path: Path, url: str, branch: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "repos.yml"
    path.write_text(f"repos:\n  - name: acme/api\n    clone_url: {url}\n    default_branch: {branch!r}\n    pool_size: 0\n"
                    f"    image: {{base: {BASE_IMAGE!r}}}\n")
    return load_repos(path, "https://unused.example/{repo}")


@pytest.mark.usefixtures("docker_cleanup")
async def test_a_branch_name_with_shell_syntax_is_synced_literally(tmp_path, db, git_remote: GitRemote):
    branch = "fix;touch${IFS}pwned"
    tip = git_remote.commit({"app.py": "def add(a, b):\n    return a + b\n"}, "fix")
    subprocess.run(["git", "push", "-q", "origin", f"main:refs/heads/{branch}"], cwd=git_remote.work, check=True)
    repos = catalog(tmp_path, git_remote.url, branch)
    docker = DockerBackend(SandboxLimits(network="host", memory="512m", pids=256))
    images = ImageBuilder(docker, db)
    await images.build(repos.repos[0])
    git_remote.commit({"README.md": "# newer\n"}, "newer")  # the image is behind: the session must fetch
    subprocess.run(["git", "push", "-q", "-f", "origin", f"main:refs/heads/{branch}"], cwd=git_remote.work, check=True)
    manager = SandboxManager(docker, db, repos, images, WarmPool(docker, db, images, repos, 3600),
                             idle_timeout=60, snapshot_retention=3600)
    try:
        sandbox = manager.for_turn("0123456789abcdef", "acme/api")
        assert sandbox is not None
        await sandbox.wait_synced()
        assert sandbox.sync_note is None
        state = await sandbox.run("git rev-parse HEAD; git branch --show-current; ls -a; ls /tmp", timeout=30)
        head, current, listing = state.output.split("\n", 2)
        assert head == git_remote.head != tip and current == "hosted-agents/0123456789abcdef"
        assert "pwned" not in listing, "the branch name never ran as a command"
    finally:
        await manager.close()


async def test_a_base_branch_git_would_refuse_fails_the_build_with_a_clear_reason(tmp_path, db):
    with pytest.raises(ConfigError, match=r"field 'default_branch': '--upload-pack=x' is not a valid branch name"):
        catalog(tmp_path, "http://127.0.0.1:9/acme/api.git", "--upload-pack=x")  # refused at start
    repo = catalog(tmp_path, "http://127.0.0.1:9/acme/api.git", "main").repos[0]
    repo.default_branch = "bad..name"  # and, should one get past the file's checks, again at the build
    docker = DockerBackend(SandboxLimits(network="none"))
    with pytest.raises(BuildFailed) as failed:
        await ImageBuilder(docker, db).build(repo)
    assert "'bad..name' is not a valid branch name ('..' is not allowed)" in str(failed.value)
    async with db.session() as s:
        row = (await s.execute(select(ImageRow))).scalar_one()
    assert row.status == "failed" and "not a valid branch name" in row.log
