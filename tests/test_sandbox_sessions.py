"""Sessions with real sandboxes: through the Slack fake, the real service, Docker and git."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.events import FileChanged, GitSynced, SandboxReady, ToolResult, TurnStarted
from bot.service import Service
from bot.slack.messages import thread_surface
from sandbox.backend import LABEL
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply, ToolCall
from tests.fakes.slack import FakeSlack
from tests.sandbox_fixtures import repos_yaml

pytestmark = pytest.mark.usefixtures("docker_cleanup")


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return result


def finished(slack: FakeSlack, root: str, count: int = 1) -> bool:
    msgs = slack.bot_messages(thread_ts=root)
    return len(msgs) >= count and all(any(w in m.rendered() for w in ("Done", ":warning:", "Stopped")) for m in msgs[:count])


def tool_results(model: FakeOpenAI, request: int) -> list[str]:
    return [m["content"] for m in model.requests[request].body["messages"] if m["role"] == "tool"]


async def start_service(tmp_path: Path, slack: FakeSlack, model: FakeOpenAI, clone_url: str, **extra: Any) -> Service:
    repos = repos_yaml(tmp_path / "repos.yml", clone_url, pool_size=extra.pop("pool_size", 0))
    extra.setdefault("sandbox_network", "host")
    env = service_env(tmp_path / "data", slack, model, repos_config=repos,
                      sandbox_memory="512m", sandbox_pids=256, image_rebuild_interval=0, **extra)
    svc = Service(make_settings(env))
    await svc.start()
    await asyncio.wait_for(slack.connected.wait(), 10)
    assert svc.sandbox is not None
    await until(lambda: svc.sandbox.images.latest("acme/api"), what="the first image build")  # type: ignore[union-attr]
    return svc


@pytest.fixture
async def sandboxed(tmp_path, slack, model, git_remote) -> AsyncIterator[Service]:
    svc = await start_service(tmp_path, slack, model, git_remote.url)
    yield svc
    await svc.stop()


async def test_a_session_reads_edits_and_runs_commands_in_its_sandbox(sandboxed, slack, model, git_remote):
    model.add(
        Reply(tool_calls=[ToolCall("read_file", {"path": "app.py"}), ToolCall("read_file", {"path": "../../etc/passwd"}),
                          ToolCall("list_directory", {})]),
        Reply(tool_calls=[ToolCall("edit_file", {"path": "app.py", "old_text": "return a - b", "new_text": "return a + b"})]),
        Reply(tool_calls=[ToolCall("run_command", {"command": "python3 test_app.py"}), ToolCall("git_diff", {}),
                          ToolCall("search", {"pattern": "a \\+ b"})]),
        Reply(text="Fixed `add`: it subtracted. The test passes now."),
    )
    root = await slack.mention("U0ALICE1", "the add function is broken, fix it")
    await slack.wait_for(lambda: finished(slack, root), timeout=60)
    assert "Fixed `add`" in slack.bot_messages(thread_ts=root)[0].rendered()

    read, escape, listing = tool_results(model, 1)
    assert "return a - b" in read
    assert escape == "'../../etc/passwd' is outside the repository"
    assert "app.py  (" in listing and "test_app.py" in listing
    assert tool_results(model, 2)[-1] == "Replaced 1 occurrence(s) in app.py."
    run, diff, search = tool_results(model, 3)[-3:]
    assert run.startswith("exit code 0") and "OK" in run
    assert "-    return a - b\n+    return a + b" in diff
    assert "app.py:2:" in search
    session = await sandboxed.sessions.find_by_surface(thread_surface("C0000001", root))
    events = list(sandboxed.sessions.log_of(session.id).read())
    changed = [e.data for e in events if isinstance(e.data, FileChanged)]
    assert [(c.path, c.action) for c in changed] == [("app.py", "edited")]
    assert "-    return a - b\n+    return a + b" in (changed[0].diff or ""), "the page shows the change's diff"
    ready = [e.data for e in events if isinstance(e.data, SandboxReady)]
    assert len(ready) == 1 and ready[0].source in ("pool", "image", "build")
    assert GitSynced(branch=f"hosted-agents/{session.id}") in [e.data for e in events], "the log says the branch is synced"
    system = model.requests[0].body["messages"][0]["content"]
    assert f"checkout of acme/api in a sandbox container, on the branch hosted-agents/{session.id}" in system


async def test_a_write_before_the_sync_waits_for_it_while_a_read_does_not(tmp_path, slack, model, slow_git):
    svc = await start_service(tmp_path, slack, model, slow_git.url)
    try:
        slow_git.delay = 2.0  # the session's `git fetch` now takes at least two seconds
        model.add(
            Reply(tool_calls=[ToolCall("read_file", {"path": "README.md"}),
                              ToolCall("write_file", {"path": "NEW.md", "content": "hello"}),
                              ToolCall("git_status", {})]),
            Reply(text="done"),
        )
        root = await slack.mention("U0ALICE1", "add a file")
        await slack.wait_for(lambda: finished(slack, root), timeout=60)
        session = await svc.sessions.find_by_surface(thread_surface("C0000001", root))
        events = list(svc.sessions.log_of(session.id).read())
        started = next(e.ts for e in events if isinstance(e.data, TurnStarted))
        results = {e.data.name: e for e in events if isinstance(e.data, ToolResult)}
        assert results["read_file"].data.output == "# acme/api\n"
        assert results["read_file"].ts - started < 1.5, "the read ran as soon as the container existed"
        assert results["write_file"].ts - started >= 2.0, "the write waited for the sync"
        assert f"## hosted-agents/{session.id}" in results["git_status"].data.output
        assert "NEW.md" in results["git_status"].data.output
    finally:
        await svc.stop()


async def test_a_follow_up_after_the_idle_timeout_restores_the_snapshot(tmp_path, slack, model, git_remote):
    # a warm pool entry is ready too: the follow-up must still get its own snapshot, not a fresh entry
    svc = await start_service(tmp_path, slack, model, git_remote.url, sandbox_idle_timeout=1, pool_size=1)
    try:
        note = ToolCall("write_file", {"path": "notes.txt", "content": "remember me"})
        model.add(Reply(tool_calls=[note]), Reply(text="noted"))
        root = await slack.mention("U0ALICE1", "write a note")
        await slack.wait_for(lambda: finished(slack, root), timeout=60)
        session = await svc.sessions.find_by_surface(thread_surface("C0000001", root))
        first = svc.sandbox.manager.get(session.id).ref  # type: ignore[union-attr]

        async def container_gone() -> bool:
            return svc.sandbox.manager.get(session.id) is None and not await svc.sandbox.backend.is_running(first)  # type: ignore[union-attr]

        await until(container_gone, timeout=20, what="the idle container to be stopped")

        model.add(Reply(tool_calls=[ToolCall("read_file", {"path": "notes.txt"})]), Reply(text="found it"))
        await slack.user_message("U0BOB001", "what did you write?", thread_ts=root)
        await slack.wait_for(lambda: finished(slack, root, 2), timeout=60)
        assert tool_results(model, 3) == ["Wrote 11 bytes to notes.txt.", "remember me"]
        restored = svc.sandbox.manager.get(session.id)  # type: ignore[union-attr]
        assert restored.source == "snapshot" and restored.ref.id != first.id
        assert svc.sandbox.manager.get(session.id) is not None and svc.sandbox.pool.warm_count("acme/api") == 1  # type: ignore[union-attr]
    finally:
        await svc.stop()


async def test_a_container_killed_mid_turn_is_reported_and_the_next_prompt_gets_a_fresh_one(sandboxed, slack, model):
    model.add(Reply(tool_calls=[ToolCall("run_command", {"command": "sleep 30"})]))
    root = await slack.mention("U0ALICE1", "run something slow")
    session = await sandboxed.sessions.find_by_surface(thread_surface("C0000001", root)) or await until(
        lambda: sandboxed.sessions.find_by_surface(thread_surface("C0000001", root)))
    manager = sandboxed.sandbox.manager  # type: ignore[union-attr]
    await until(lambda: _running_command(sandboxed, session.id), timeout=60, what="the command to start")
    doomed = manager.get(session.id).ref
    await asyncio.to_thread(sandboxed.sandbox.backend.api.kill, doomed.id)  # type: ignore[union-attr]

    await slack.wait_for(lambda: finished(slack, root), timeout=30)
    status = slack.bot_messages(thread_ts=root)[0].rendered()
    assert "The sandbox stopped unexpectedly" in status and "the next prompt gets a fresh one" in status

    model.add(Reply(tool_calls=[ToolCall("run_command", {"command": "echo alive"})]), Reply(text="back"))
    await slack.user_message("U0ALICE1", "try again", thread_ts=root)
    await slack.wait_for(lambda: finished(slack, root, 2), timeout=60)
    assert tool_results(model, 2)[-1].startswith("exit code 0") and "alive" in tool_results(model, 2)[-1]
    assert manager.get(session.id).ref.id != doomed.id


async def _running_command(svc: Service, session_id: str) -> bool:
    """`sleep 30` is running in the session's container."""
    sandbox = svc.sandbox.manager.get(session_id)  # type: ignore[union-attr]
    if sandbox is None or sandbox.ref is None:
        return False
    code, _ = await svc.sandbox.backend.docker_exec(sandbox.ref, ["pgrep", "-f", "^sleep 30$"])  # type: ignore[union-attr]
    return code == 0


async def test_orphaned_containers_are_removed_and_warm_ones_adopted_at_start(tmp_path, slack, model, git_remote):
    svc = await start_service(tmp_path, slack, model, git_remote.url, pool_size=1)
    backend = svc.sandbox.backend  # type: ignore[union-attr]
    await until(lambda: _warm(svc, 1), what="the pool to fill")
    orphan = await backend.create("hosted-agents/base:bookworm", {f"{LABEL}.role": "session", f"{LABEL}.session": "gone"})
    warm = (await backend.find({f"{LABEL}.role": "pool"}))[0]
    await svc.stop()

    svc = Service(make_settings(service_env(tmp_path / "data", slack, model, repos_config=tmp_path / "repos.yml",
                                            sandbox_network="host", image_rebuild_interval=0)))
    await svc.start()
    try:
        assert not await backend.is_running(orphan)
        assert [e.ref.id for e in svc.sandbox.pool._entries["acme/api"]] == [warm.id], "the warm container was adopted"  # type: ignore[union-attr]
    finally:
        await svc.stop()


async def _warm(svc: Service, n: int) -> bool:
    return svc.sandbox.pool.warm_count("acme/api") >= n  # type: ignore[union-attr]


async def test_stop_during_a_command_kills_its_whole_process_tree(sandboxed, slack, model):
    model.add(Reply(tool_calls=[ToolCall("run_command", {"command": "sh -c 'sleep 30' & sleep 30"})]))
    root = await slack.mention("U0ALICE1", "run something slow")
    session = await until(lambda: sandboxed.sessions.find_by_surface(thread_surface("C0000001", root)))
    await until(lambda: _running_command(sandboxed, session.id), timeout=60, what="the command to start")
    status = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]  # posted 0.5 s into the turn
    await slack.wait_for(lambda: "stop_turn" in status.buttons())
    await slack.click("U0ALICE1", status, "stop_turn")
    await slack.wait_for(lambda: "Stopped by <@U0ALICE1>" in status.rendered(), timeout=5)

    async def tree_gone() -> bool:
        return not await _running_command(sandboxed, session.id)

    await until(tree_gone, timeout=3, what="both sleeps to be killed")


async def test_the_likeliest_repo_warms_while_the_model_classifies(tmp_path, slack, model, git_remote):
    import json

    repos = tmp_path / "two.yml"
    repos.write_text(
        "defaults:\n  pool_size: 0\n  image: {base: 'hosted-agents/base:bookworm'}\n"
        f"repos:\n  - name: acme/api\n    clone_url: {git_remote.url}\n"
        f"  - name: acme/web\n    clone_url: {git_remote.url}\n"
    )
    env = service_env(tmp_path / "data", slack, model, repos_config=repos, sandbox_network="host", image_rebuild_interval=0)
    svc = Service(make_settings(env))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        await until(lambda: svc.sandbox.images.latest("acme/api"), what="the image")  # type: ignore[union-attr]
        first = await slack.mention("U0ALICE1", "in acme/api say hi")
        await slack.wait_for(lambda: finished(slack, first), timeout=60)
        assert svc.sandbox.pool.warm_count("acme/api") == 0  # type: ignore[union-attr]

        model.add(Reply(ttft=3.0, text=json.dumps({"repo": "unknown", "confidence": 0.1, "alternatives": [], "reason": ""})))
        started = time.monotonic()
        vague = await slack.mention("U0ALICE1", "the numbers look odd, can you check?")
        await until(lambda: _warm(svc, 1), timeout=10, what="a warm container of the likeliest repo")
        assert time.monotonic() - started < 3.0, "it warmed while the model was still thinking"
        await slack.wait_for(lambda: slack.bot_messages(thread_ts=vague), timeout=10)  # then the bot asks
    finally:
        await svc.stop()


async def test_typing_on_the_session_page_warms_its_sandbox_and_the_next_turn_uses_it(sandboxed, slack, model):
    """A session whose container was reaped as idle: the first keystroke in the page's prompt box
    restores it from the snapshot, and the next turn finds it ready (it says so in its log)."""
    import json

    from bot.events import WarmUp
    from tests.web_client import signed_in

    model.add(Reply(tool_calls=[ToolCall("write_file", {"path": "notes.txt", "content": "remember me"})]),
              Reply(text="first"))
    root = await slack.mention("U0ALICE1", "in acme/api write a note")
    await slack.wait_for(lambda: finished(slack, root), timeout=60)
    session = await sandboxed.sessions.find_by_surface(thread_surface("C0000001", root))
    manager = sandboxed.sandbox.manager  # type: ignore[union-attr]
    await until(lambda: manager.snapshots.image(session.id), what="the turn's snapshot")
    await manager.drop(session.id)  # what the idle timeout does
    alice = await signed_in(sandboxed, slack, "U0ALICE1")
    try:
        async with alice.http.ws_connect(f"{alice.base}/s/{session.share_token}/ws?after=1000000",
                                         headers={"Origin": alice.base}) as ws:
            await ws.send_str(json.dumps({"type": "typing"}))
            await ws.send_str(json.dumps({"type": "typing"}))  # one warm-up per burst of typing

            async def warmed() -> list[WarmUp]:
                return [e.data for e in sandboxed.sessions.log_of(session.id).read() if isinstance(e.data, WarmUp)]

            ups = await until(warmed, what="the warm-up")
            assert ups == [WarmUp(trigger="web", repo="acme/api", action="started")]
            sandbox = manager.get(session.id)
            assert sandbox is not None and sandbox.warmed_by == "web"
            await sandbox.executor()  # restored before anyone sent anything
            model.add(Reply(text="second"))
            status, body = await alice.post(f"/s/{session.share_token}/prompt", {"text": "and now?"})
            assert status == 200, body
            await slack.wait_for(lambda: finished(slack, root, 2), timeout=60)
        ready = [e.data for e in sandboxed.sessions.log_of(session.id).read() if isinstance(e.data, SandboxReady)]
        assert ready[-1].warm_up == "web" and ready[-1].source == "snapshot"
        assert ready[-1].wait_ms == 0 and (ready[-1].saved_ms or 0) > 0, ready[-1]
    finally:
        await alice.close()


async def test_several_reads_in_one_step_run_at_once_and_answer_in_order(tmp_path, slack, model, git_remote):
    from tests.plugins import Stopwatch

    Stopwatch.spans.clear()
    svc = await start_service(tmp_path, slack, model, git_remote.url, plugins="tests.plugins:Stopwatch")
    try:
        reads = [ToolCall("read_file", {"path": p}) for p in ("app.py", "test_app.py", "README.md")]
        model.add(Reply(tool_calls=[ToolCall("list_directory", {})]), Reply(tool_calls=reads), Reply(text="Read."))
        root = await slack.mention("U0ALICE1", "read the three files")
        await slack.wait_for(lambda: finished(slack, root), timeout=60)
        spans = [s for s in Stopwatch.spans if s[0] == "read_file"]
        assert len(spans) == 3
        assert max(start for _, start, _ in spans) < min(end for _, _, end in spans), f"the reads overlap: {spans}"
        results = tool_results(model, 2)[-3:]
        assert "return a - b" in results[0] and "assertEqual" in results[1], "results in the model's order"
    finally:
        await svc.stop()


async def test_a_session_whose_snapshot_is_not_on_this_host_gets_its_work_back_from_the_saved_state(
        tmp_path, slack, model, git_remote):
    """What a takeover on another host meets (issue 16): no container, no snapshot image, only the
    database. The commit, the edits and the untracked files come back from the workspace state."""
    svc = await start_service(tmp_path, slack, model, git_remote.url)
    try:
        work = ("echo 'def sub(a, b): return a - b' >> app.py && git -c user.name=A -c user.email=a@example.com"
                " commit -qam wip && printf 'x\\n' >> README.md && git log --oneline -1")
        model.add(Reply(tool_calls=[ToolCall("write_file", {"path": "notes/new.txt", "content": "untracked work"}),
                                    ToolCall("run_command", {"command": work})]), Reply(text="did it"))
        root = await slack.mention("U0ALICE1", "do some work")
        await slack.wait_for(lambda: finished(slack, root), timeout=60)
        session = await svc.sessions.find_by_surface(thread_surface("C0000001", root))
        assert session is not None
        manager = svc.sandbox.manager  # type: ignore[union-attr]
        state = await until(lambda: manager.states.get(session.id), what="the workspace state saved")
        assert "notes/new.txt" in state.patch and "def sub" in state.patch
        await until(lambda: manager.snapshots.image(session.id), what="the snapshot")
        await manager.drop(session.id)  # as on another host: neither the container nor the snapshot is here
        await manager._discard_snapshot(session.id, await manager.snapshots.image(session.id))  # type: ignore[arg-type]

        check = "tail -1 app.py; tail -1 README.md; git status --short; git branch --show-current"
        model.add(Reply(tool_calls=[ToolCall("read_file", {"path": "notes/new.txt"}),
                                    ToolCall("run_command", {"command": check})]), Reply(text="all there"))
        await slack.user_message("U0ALICE1", "is it all there?", thread_ts=root)
        await slack.wait_for(lambda: finished(slack, root, 2), timeout=60)
        note, output = tool_results(model, len(model.requests) - 1)[-2:]
        assert note == "untracked work"
        assert "def sub(a, b): return a - b" in output and "\nx\n" in output
        assert " M app.py" in output and " M README.md" in output and "?? notes/" in output
        assert f"hosted-agents/{session.id}" in output, "on the session's own branch"
        assert manager.get(session.id).source in ("image", "pool")  # type: ignore[union-attr]
    finally:
        await svc.stop()
