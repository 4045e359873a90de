"""A tool's output reaches the model capped (head and tail, with a marker) and binary output is
described instead of shown; the session goes on."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from bot.agent.tools import MAX_OUTPUT_CHARS, cap_output
from bot.service import Service
from tests.conftest import make_settings, service_env
from tests.fakes.openai import Reply, Request, ToolCall
from tests.slack_threads import all_done


def test_long_output_keeps_its_head_and_tail():
    text = "HEAD" + "a" * 60_000 + "MIDDLE" + "b" * 60_000 + "TAIL"
    shown = cap_output(text)
    assert shown.startswith("HEAD") and shown.endswith("TAIL") and "MIDDLE" not in shown
    assert len(shown) < MAX_OUTPUT_CHARS + 300 and "characters left out here" in shown
    assert cap_output("short") == "short"
    assert cap_output("\x00\x01" * 10).startswith("[binary output of 20 characters")


async def test_the_model_sees_the_capped_output_and_the_turn_goes_on(tmp_path, slack, model):
    env = service_env(tmp_path / "data", slack, model, plugins="tests.plugins:LongOutput")
    svc = Service(make_settings(env))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        model.add(Reply(tool_calls=[ToolCall("dump", {}), ToolCall("dump", {"binary": True})]), Reply(text="Seen."))
        root = await slack.mention("U0ALICE1", "dump it")
        await slack.wait_for(lambda: all_done(slack, root, 1))
        long, binary = [m["content"] for m in model.requests[-1].body["messages"] if m["role"] == "tool"]
        assert long.startswith("HEAD") and long.endswith("TAIL") and "MIDDLE" not in long
        assert binary == "[binary output of 3,000 characters, not shown]"
    finally:
        await svc.stop()


# -- on the real engine: a 5 MB command output, saved whole and read back in pages -------------

LINES = 100_000
PRINT = f"python3 -c \"import sys; sys.stdout.writelines('line %07d %s\\n' % (i, 'x' * 40) for i in range(1, {LINES + 1}))\""
"""54 bytes a line: 5,400,000 bytes."""
SAVED = re.compile(r"saved at (\.hosted-agents/outputs/[\w.\-]+)")


def _tool_results(request: Request) -> list[str]:
    return [m["content"] for m in request.body["messages"] if m["role"] == "tool"]


def _saved_path(request: Request) -> str:
    found = SAVED.search(_tool_results(request)[-1])
    assert found, _tool_results(request)[-1][-2000:]
    return found.group(1)


def _read_page(offset: int) -> Callable[[Request], Reply]:
    def reply(request: Request) -> Reply:
        path = next(m.group(1) for r in _tool_results(request) if (m := SAVED.search(r)))
        return Reply(tool_calls=[ToolCall("read_file", {"path": path, "offset": offset, "limit": 100})])
    return reply


@pytest.mark.usefixtures("docker_cleanup")
async def test_a_5mb_command_output_reaches_the_model_capped_and_is_read_back_in_pages(tmp_path, slack, model, git_remote):
    from tests.test_sandbox_sessions import finished, start_service

    svc = await start_service(tmp_path, slack, model, git_remote.url)
    try:
        model.add(
            Reply(tool_calls=[ToolCall("run_command", {"command": PRINT})]),
            _read_page(50_000),
            _read_page(50_100),
            lambda request: Reply(tool_calls=[
                ToolCall("git_status", {}),
                ToolCall("run_command", {"command": f"stat -c '%u %s' {_saved_path_in(request)}; git status --porcelain "
                                                    "--ignored=no; git add -A && git diff --cached --stat"})]),
            Reply(text="Read it."),
        )
        root = await slack.mention("U0ALICE1", "print a lot")
        await slack.wait_for(lambda: finished(slack, root), timeout=120)

        shown = _tool_results(model.requests[1])[-1]
        assert len(shown) < MAX_OUTPUT_CHARS, "the command's result stays under the registry's cap, marker included"
        assert shown.startswith("exit code 0")
        assert "line 0000001 " in shown and f"line {LINES:07d} " in shown, "head and tail are shown"
        assert "line 0050000 " not in shown, "the middle is not"
        assert f"{54 * LINES:,} bytes, {LINES:,} lines in all" in shown
        path = _saved_path(model.requests[1])
        assert path.startswith(".hosted-agents/outputs/") and f'read_file(path="{path}", offset=' in shown

        first = _tool_results(model.requests[2])[-1]
        assert first.startswith(f"[{path}: lines 50,000-50,099 of {LINES:,} ({54 * LINES:,} bytes); next: offset=50100]\n")
        body = first.split("\n", 1)[1].splitlines()
        assert body == [f"line {i:07d} {'x' * 40}" for i in range(50_000, 50_100)]
        second = _tool_results(model.requests[3])[-1]
        assert second.split("\n", 1)[1].splitlines()[0] == f"line 0050100 {'x' * 40}"
        assert "lines 50,100-50,199" in second

        status, check = _tool_results(model.requests[4])[-2:]
        assert ".hosted-agents" not in status, "the saved output is not in git status"
        assert check.startswith("exit code 0")
        owner, size = check.splitlines()[1].split()
        assert (owner, int(size)) == ("1000", 54 * LINES), "saved whole, owned by the sandbox user"
        assert ".hosted-agents" not in check, "nor in the porcelain status or what a commit would take"
    finally:
        await svc.stop()


def _saved_path_in(request: Request) -> str:
    return next(m.group(1) for r in _tool_results(request) if (m := SAVED.search(r)))


async def test_listing_and_search_say_how_many_they_left_out():
    from bot.agent.sandbox_tools import LIST_LIMIT, SEARCH_LIMIT, ListDirectory, Search
    from bot.agent.tools import ToolContext
    from sandbox.workspace import CommandResult, DirEntry

    class Many:
        async def list_dir(self, path: str = ".", limit: int = 2000) -> tuple[list[DirEntry], int]:
            return [DirEntry(name=f"f{i:05d}", type="file", size=1) for i in range(min(limit, 3000))], 3000

        async def search(self, pattern: str, path: str = ".", glob: str | None = None) -> CommandResult:
            out = "".join(f"a.py:{i}:match\n" for i in range(1, 1001))
            return CommandResult(exit_code=0, output=out[:5000], truncated=True, total_bytes=len(out), total_lines=1000)

    ctx = ToolContext("s", lambda data: None, Many())  # type: ignore[arg-type]
    listing = await ListDirectory().run(ListDirectory.Args(), ctx)
    assert listing.count("\n") == LIST_LIMIT and listing.splitlines()[-1].startswith(
        f"[… {3000 - LIST_LIMIT:,} more not shown (3,000 entries in all, sorted by name)")
    found = await Search().run(Search.Args(pattern="match"), ctx)
    lines = found.splitlines()
    assert len(lines) == SEARCH_LIMIT + 1 and lines[0] == "a.py:1:match"
    assert lines[-1].startswith(f"[… {1000 - SEARCH_LIMIT:,} more matching lines not shown (1,000 in all)")
