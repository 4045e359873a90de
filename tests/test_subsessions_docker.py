"""Sub-sessions end to end on the real Docker engine: a parent mentioned in Slack spawns children in
two repositories (each with its own sandbox, log and branch), reads their status and sums up
naming both; the depth and count limits answer with tool errors; stopping the parent stops the
children, down to the command running in a child's sandbox; a child's pull request is opened in
the name of the person who prompted the parent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.events import Origin, Outcome
from bot.service import Service
from tests.conftest import make_settings, service_env
from tests.fakes.github import FakeGitHub
from tests.fakes.openai import FakeOpenAI, Reply, ToolCall
from tests.fakes.slack import FakeSlack
from tests.github_fixtures import github  # noqa: F401 (fixture)
from tests.sandbox_fixtures import BASE_IMAGE, GitRemote
from tests.slack_threads import turns
from tests.test_github_link import link
from tests.test_pull_requests import start as start_with_github
from tests.test_subsessions import board, parent_of, spawned, tool_outputs, until

pytestmark = pytest.mark.usefixtures("docker_cleanup")


def two_repos(path: Path, clone_url: str) -> Path:
    """acme/api and acme/web, both cloned from the fake git remote."""
    entries = "".join(
        f"  - name: {name}\n    clone_url: {clone_url}\n    default_branch: main\n    pool_size: 0\n"
        f"    image:\n      base: {BASE_IMAGE}\n"
        for name in ("acme/api", "acme/web"))
    path.write_text("repos:\n" + entries)
    return path


@pytest.fixture
async def sandboxed(tmp_path: Path, slack: FakeSlack, model: FakeOpenAI, git_remote: GitRemote) -> AsyncIterator[Service]:
    env = service_env(tmp_path / "data", slack, model, repos_config=two_repos(tmp_path / "repos.yml", git_remote.url),
                      sandbox_network="host", sandbox_memory="512m", sandbox_pids=256, image_rebuild_interval=0,
                      max_spawn_depth=1, max_children_per_session=2)
    svc = Service(make_settings(env))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        images = svc.sandbox.images  # type: ignore[union-attr]

        async def built() -> bool:
            return bool(await images.latest("acme/api") and await images.latest("acme/web"))

        await until(built, timeout=120, what="both images")
        yield svc
    finally:
        await svc.stop()


def report(name: str) -> Any:
    """A child's answer: what its sandbox said about its checkout."""
    return lambda req: Reply(text=f"{name} report: " + " ".join(tool_outputs(req)[0].split("\n")[1:]))


async def test_a_parent_spawns_children_in_two_repos_and_sums_up_while_limits_answer_with_tool_errors(
        sandboxed, slack, model):
    spawn = [ToolCall("spawn_session", {"repo": repo, "prompt": f"Report on the {what} checkout.", "title": title})
             for repo, what, title in (("acme/api", "API", "API checkout"), ("acme/web", "web", "Web checkout"),
                                       ("acme/web", "extra", "One too many"))]
    model.add_for("compare", Reply(tool_calls=spawn),
                  lambda req: Reply(tool_calls=[ToolCall("session_status", {"id": c, "wait_seconds": 90})
                                                for c in spawned(req)]),
                  lambda req: Reply(text="Summary:\n" + "\n".join(
                      line for out in tool_outputs(req) for line in out.splitlines() if " report: " in line)))
    branch = ToolCall("run_command", {"command": "git rev-parse --abbrev-ref HEAD && head -1 README.md"})
    too_deep = ToolCall("spawn_session", {"repo": "acme/api", "prompt": "go deeper", "title": "Too deep"})
    model.add_for("the API checkout", Reply(tool_calls=[branch, too_deep]), report("API"))
    model.add_for("the web checkout", Reply(tool_calls=[branch]), report("Web"))

    root = await slack.mention("U0ALICE1", "in acme/api compare the API and web checkouts")
    parent = await parent_of(sandboxed, root)
    await slack.wait_for(lambda: (t := turns(slack, root)) and t[0].done, timeout=150, what="the parent's summary")

    children = {c.repo: c for c in [await sandboxed.sessions.get(i) for i in await sandboxed.sessions.child_ids(parent)]}
    assert sorted(children) == ["acme/api", "acme/web"], "the third child was refused"
    api, web = children["acme/api"], children["acme/web"]
    summary = turns(slack, root)[0].answer()
    assert f"API report: hosted-agents/{api.id} # acme/api" in summary, summary
    assert f"Web report: hosted-agents/{web.id} # acme/api" in summary, "each child worked on its own branch"

    parent_steps = [out for r in model.requests if "compare" in r.last_user_text for out in tool_outputs(r)]
    assert parent_steps[2].startswith("Not started: this session already started 2 sub-sessions, the most one session "
                                      "may (MAX_CHILDREN_PER_SESSION=2).")
    api_steps = [out for r in model.requests if "the API checkout" in r.last_user_text for out in tool_outputs(r)]
    assert api_steps[1].startswith("Not started: sub-sessions nest at most 1 level(s) deep (MAX_SPAWN_DEPTH)")

    manager = sandboxed.sandbox.manager  # type: ignore[union-attr]
    sandboxes = {manager.get(c.id).ref.id for c in (api, web)}
    assert len(sandboxes) == 2, "a sandbox each"
    for child in (api, web):
        assert child.creator == "U0ALICE1" and child.origin is Origin.PARENT_SESSION and child.parent_id == parent
        view = await sandboxed.sessions.view(child.id)
        assert [t.outcome for t in view.turns.values()] == [Outcome.DONE]
        assert view.branch == f"hosted-agents/{child.id}"
    line = await slack.wait_for(lambda: (b := board(slack, root)) and "working" not in b.rendered() and b.rendered(),
                                what="both children's lines to say done")
    assert "|API checkout> · `acme/api` · :white_check_mark: done" in line
    assert "|Web checkout> · `acme/web` · :white_check_mark: done" in line


async def test_stopping_the_parent_stops_the_children_and_their_commands(sandboxed, slack, model):
    model.add_for("oversee", Reply(tool_calls=[
        ToolCall("spawn_session", {"repo": "acme/web", "prompt": "Run the long job.", "title": "Long job"})]),
        lambda req: Reply(tool_calls=[ToolCall("session_status", {"id": spawned(req)[0], "wait_seconds": 120})]))
    model.add_for("the long job", Reply(tool_calls=[ToolCall("run_command", {"command": "sleep 45"})]))
    root = await slack.mention("U0ALICE1", "in acme/api oversee a long job")
    parent = await parent_of(sandboxed, root)

    async def child_sleeping() -> str | None:
        children = await sandboxed.sessions.child_ids(parent)
        sandbox = sandboxed.sandbox.manager.get(children[0]) if children else None  # type: ignore[union-attr]
        if sandbox is None or sandbox.ref is None:
            return None
        code, _ = await sandboxed.sandbox.backend.docker_exec(sandbox.ref, ["pgrep", "-f", "^sleep 45$"])  # type: ignore[union-attr]
        return children[0] if code == 0 else None

    child = await until(child_sleeping, timeout=90, what="the child's command to run")
    head = await slack.wait_for(lambda: (t := turns(slack, root)) and "stop_turn" in t[0].head.buttons() and t[0].head,
                                what="the parent's Stop button")
    await slack.click("U0ALICE1", head, "stop_turn")
    await slack.wait_for(lambda: (t := turns(slack, root)) and t[0].done, timeout=15, what="the parent to stop")
    assert "Stopped by" in turns(slack, root)[0].head.rendered()

    async def child_stopped() -> bool:
        view = await sandboxed.sessions.view(child)
        return view.state == "idle" and [t.outcome for t in view.turns.values()] == [Outcome.STOPPED]

    await until(child_stopped, timeout=15, what="the child to stop")
    assert await child_sleeping() is None, "the child's command was killed"
    line = await slack.wait_for(lambda: (b := board(slack, root)) and "stopped" in b.rendered() and b.rendered(),
                                what="the child's line to say stopped")
    assert "|Long job> · `acme/web` · :black_square_for_stop: stopped" in line


async def test_a_childs_pull_request_is_the_persons_and_shows_on_the_parents_line(
        tmp_path: Path, slack: FakeSlack, model: FakeOpenAI, github: FakeGitHub, docker_engine: Any) -> None:  # noqa: F811
    github.add_user("alice-gh", 5001, "Alice Example")
    svc = await start_with_github(tmp_path, slack, model, github)
    try:
        model.add_for("delegate", Reply(tool_calls=[ToolCall("spawn_session", {
            "repo": "acme/api", "prompt": "Fix the add function and open a PR.", "title": "Fix add"})]),
            lambda req: Reply(tool_calls=[ToolCall("session_status", {"id": spawned(req)[0], "wait_seconds": 90})]),
            lambda req: Reply(text="The sub-session says:\n" + tool_outputs(req)[0]))
        model.add_for("Fix the add function", Reply(tool_calls=[ToolCall("edit_file", {
            "path": "app.py", "old_text": "return a - b", "new_text": "return a + b"})]),
            Reply(tool_calls=[ToolCall("open_pull_request", {"title": "Fix add", "body": "It subtracted."})]),
            lambda req: Reply(text="No PR: " + tool_outputs(req)[0]))
        root = await slack.mention("U0ALICE1", "in acme/api delegate the fix of add")
        parent = await parent_of(svc, root)
        await slack.wait_for(lambda: (t := turns(slack, root)) and t[0].done, timeout=150, what="the parent's answer")
        assert "No PR: <@U0ALICE1> has not linked a GitHub account" in turns(slack, root)[0].answer()
        offers = [c.params for c in slack.calls_to("chat.postEphemeral") if "connect your GitHub account" in c.params["text"]]
        assert [(o["user"], o["thread_ts"]) for o in offers] == [("U0ALICE1", root)], "offered in the parent's thread"

        # linked now: the parent has the child open its PR, in the person's name
        await link(svc, slack, github, "U0ALICE1", "alice-gh")
        model.add_for("open it now", lambda req: Reply(tool_calls=[ToolCall("send_to_session", {
            "id": spawned(req)[0], "prompt": "The account is linked: open the PR."})]),
            lambda req: Reply(tool_calls=[ToolCall("session_status", {"id": spawned(req)[0], "wait_seconds": 90})]),
            lambda req: Reply(text="The sub-session says:\n" + tool_outputs(req)[0]))
        model.add_for("open the PR.", Reply(tool_calls=[ToolCall("open_pull_request", {"title": "Fix add"})]),
                      Reply(text="Opened the PR."))
        await slack.user_message("U0ALICE1", "open it now", thread_ts=root)
        await slack.wait_for(lambda: len(t := turns(slack, root)) == 2 and t[1].done, timeout=150, what="the second answer")
        (child,) = await svc.sessions.child_ids(parent)
        pr = github.pull("acme", "api", 1)
        assert pr.user == "alice-gh" and not pr.via_app, "opened with the person's own token"
        assert pr.head.startswith(f"agent/{child[:8]}-fix-add")
        commit = github.commit_info("acme", "api", github.branch_head("acme", "api", pr.head) or "")
        assert (commit.author_name, commit.author_email) == ("Alice Example", "5001+alice-gh@users.noreply.github.com")
        assert "Pull request: #1 " in turns(slack, root)[1].answer()
        line = await slack.wait_for(lambda: (b := board(slack, root)) and "PR #1" in b.rendered()
                                    and "done" in b.rendered() and b.rendered(), what="the PR on the child's line")
        assert "|Fix add> · `acme/api` · :white_check_mark: done · <" in line
    finally:
        await svc.stop()
