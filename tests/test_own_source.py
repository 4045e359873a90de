"""The agent can read its own source: a copy of the project's source files (and nothing else,
never `.env`) made at start in DATA_DIR/agent-source, mounted read-only at /opt/hosted-agents/source
in every sandbox, named in the system prompt, and reachable by the read tools (only there, outside
the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.own_source import copy_own_source
from sandbox.protocol import OWN_SOURCE
from tests.fakes.openai import Reply, ToolCall

SRC = OWN_SOURCE


def test_the_copy_takes_source_and_docs_only_and_replaces_the_last_one(tmp_path):
    root = tmp_path / "project"
    files = {
        "README.md": "# readme", "pyproject.toml": "[project]", ".env": "SLACK_BOT_TOKEN=xoxb-secret",
        "bot/a.py": "x = 1", "bot/.env": "SECRET=1", "bot/web/page.html": "<p>", "bot/web/app.js": "1",
        "bot/web/s.css": "p{}", "bot/conf.yaml": "a: 1", "sandbox/b.yml": "b: 1", "classifier/c.ini": "[c]",
        "bot/secrets.json": "{}", "bot/__pycache__/a.cpython-311.pyc": "x", "bot/.hidden/x.py": "x",
        "tests/test_x.py": "x", "data/hosted-agents.db": "x", "notes.md": "top-level, not listed",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    target = tmp_path / "data" / "agent-source"
    target.mkdir(parents=True)
    (target / "stale.py").write_text("from the last start")
    assert copy_own_source(target, root) == 9
    copied = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert copied == ["README.md", "bot/a.py", "bot/conf.yaml", "bot/web/app.js", "bot/web/page.html", "bot/web/s.css",
                      "classifier/c.ini", "pyproject.toml", "sandbox/b.yml"]
    assert oct((target / "bot/a.py").stat().st_mode & 0o777) == "0o644"
    assert oct((target / "bot/web").stat().st_mode & 0o777) == "0o755"


def test_the_real_copy_has_the_agents_code_and_no_env(tmp_path):
    target = tmp_path / "agent-source"
    copy_own_source(target)
    assert (target / "bot/agent/sandbox_tools.py").is_file() and (target / "README.md").is_file()
    assert not any(p.name == ".env" or p.suffix in (".pyc", ".db") for p in target.rglob("*"))


@pytest.mark.usefixtures("docker_cleanup")
async def test_the_agent_reads_its_own_source_and_cannot_change_it(tmp_path, slack, model, git_remote):
    from tests.test_sandbox_sessions import finished, start_service, tool_results

    project = Path(__file__).resolve().parent.parent
    svc = await start_service(tmp_path, slack, model, git_remote.url)
    try:
        assert not (tmp_path / "data" / "agent-source" / ".env").exists()
        model.add(
            Reply(tool_calls=[
                ToolCall("read_file", {"path": f"{SRC}/bot/agent/sandbox_tools.py", "offset": 1, "limit": 3}),
                ToolCall("list_directory", {"path": SRC}),
                ToolCall("search", {"pattern": "COMMAND_CAP =", "path": f"{SRC}/bot"}),
                ToolCall("read_file", {"path": f"{SRC}/../../../etc/passwd"}),
                ToolCall("read_file", {"path": "/etc/passwd"}),
                ToolCall("read_file", {"path": f"{SRC}/.env"}),
            ]),
            Reply(tool_calls=[
                ToolCall("write_file", {"path": f"{SRC}/bot/evil.py", "content": "x"}),
                ToolCall("edit_file", {"path": f"{SRC}/README.md", "old_text": "hosted-agents", "new_text": "x"}),
                ToolCall("run_command", {"command": f"touch {SRC}/bot/evil.py; echo more >> {SRC}/README.md; ls -a {SRC}"}),
            ]),
            Reply(text="I read my source."),
        )
        root = await slack.mention("U0ALICE1", "what are your limits?")
        await slack.wait_for(lambda: finished(slack, root), timeout=90)

        system = model.requests[0].body["messages"][0]["content"]
        assert f"Your own source (this agent, hosted-agents) is at {SRC}, read-only" in system
        read, listing, search, escape, outside, env = tool_results(model, 1)
        first_lines = (project / "bot/agent/sandbox_tools.py").read_text().splitlines()[:3]
        assert read.split("\n", 1)[1].splitlines() == first_lines
        assert read.startswith(f"[{SRC}/bot/agent/sandbox_tools.py: lines 1-3 of ")
        assert "bot/" in listing.splitlines() and "README.md" in listing and ".env" not in listing
        assert f"{SRC}/bot/agent/sandbox_tools.py:" in search and "COMMAND_CAP = 24_000" in search
        assert escape.startswith("paths are relative to the repository root") and "absolute" in escape
        assert outside.startswith("paths are relative to the repository root")
        assert env.startswith("no such file or directory")

        write, edit, shell = tool_results(model, 2)[-3:]
        assert write == f"{SRC} is read-only: the project's own source can be read, not changed"
        assert edit == write
        assert "Read-only file system" in shell and "evil.py" not in shell.split("\n", 1)[1].replace("bot/evil.py", "")
        assert not (tmp_path / "data" / "agent-source" / "bot" / "evil.py").exists()
        assert (tmp_path / "data" / "agent-source" / "README.md").read_text() == (project / "README.md").read_text()
    finally:
        await svc.stop()


@pytest.fixture(params=["python3", "shell"])
async def executor_with_source(request, tmp_path, docker_engine, docker_cleanup):  # type: ignore[no-untyped-def]
    """A bare sandbox with the copied source mounted, on each executor (python3, and the shell one)."""
    from sandbox.backend import LABEL, SandboxLimits
    from sandbox.docker import DockerBackend
    from tests.sandbox_fixtures import BASE_IMAGE, no_python_image

    copy_own_source(tmp_path / "agent-source")
    docker = DockerBackend(SandboxLimits(network="none", memory="512m", pids=256), source=tmp_path / "agent-source")
    image = BASE_IMAGE if request.param == "python3" else await no_python_image()
    ref = await docker.create(image, {f"{LABEL}.role": "test"})
    ex = await docker.executor(ref)
    yield ex
    await ex.close()
    await docker.remove(ref)


async def test_both_executors_save_cut_output_page_files_and_read_only_the_source_outside_the_repo(executor_with_source):
    from sandbox.executor import ExecutorError
    from sandbox.protocol import Exec, ListDir, Read, Search, Write

    ex = executor_with_source
    assert (await ex.call(Exec(argv=["git", "init", "-q"]))).exit_code == 0
    cmd = "i=1; while [ $i -le 3000 ]; do echo \"row $i\"; i=$((i+1)); done"
    out = await ex.call(Exec(cmd=cmd, cap=900, save=True))
    expected = "".join(f"row {i}\n" for i in range(1, 3001))
    assert out.truncated and out.total_bytes == len(expected) and out.total_lines == 3000
    assert out.output == expected[:600] and out.tail == expected[-300:]
    assert out.tail_from_line == expected[:-300].count("\n") + 1 and out.head_lines == expected[:599].count("\n") + 1
    assert out.saved_path == ".hosted-agents/outputs/1.txt" and out.saved_bytes == len(expected)
    page = await ex.call(Read(path=out.saved_path, offset=1500, limit=3))
    assert page.content == "row 1500\nrow 1501\nrow 1502\n"
    assert (page.first_line, page.last_line, page.total_lines) == (1500, 1502, 3000)
    small = await ex.call(Read(path=out.saved_path, offset=10, limit=100, max_bytes=20))
    assert small.content == "row 10\nrow 11\n" and small.truncated and small.last_line == 11
    not_saved = await ex.call(Exec(cmd=cmd, cap=900))
    assert not_saved.truncated and not_saved.saved_path is None
    owner = await ex.call(Exec(cmd=f"stat -c %u {out.saved_path}; git status --porcelain --untracked-files=all"))
    assert owner.output.startswith("1000\n") and ".hosted-agents" not in owner.output, "the sandbox user's, unseen by git"

    source = "/opt/hosted-agents/source"
    read = await ex.call(Read(path=f"{source}/sandbox/protocol.py", offset=1, limit=1))
    assert read.content.startswith('"""') and read.total_lines > 10
    listing = await ex.call(ListDir(path=source, limit=2))
    assert len(listing.entries) == 2 and (listing.total or 0) >= 5
    found = await ex.call(Search(pattern="^OWN_SOURCE = ", path=f"{source}/sandbox"))
    assert f"{source}/sandbox/protocol.py:" in found.output
    for bad in (f"{source}/x.py", f"{source}/../etc/x"):
        with pytest.raises(ExecutorError):
            await ex.call(Write(path=bad, content="x"))
    with pytest.raises(ExecutorError, match="read-only"):
        await ex.call(Write(path=f"{source}/x.py", content="x"))
    with pytest.raises(ExecutorError, match="absolute"):
        await ex.call(Read(path="/etc/passwd"))
    touched = await ex.call(Exec(cmd=f"touch {source}/x.py"))
    assert touched.exit_code != 0 and "Read-only file system" in touched.output
