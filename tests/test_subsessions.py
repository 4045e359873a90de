"""Sub-sessions without sandboxes (SANDBOX_BACKEND=none): through the Slack fake, the model fake and
the real service. The agent spawns children through its tools, reads their status, sends them
follow-ups and stops them; limits answer with tool errors; the parent's thread keeps a line per
child and the web pages link parent and children both ways. The same on Docker:
tests/test_subsessions_docker.py."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.events import Author, ChildSession, Origin, Outcome
from bot.service import Service
from bot.sessions.intake import Request as IntakeRequest
from bot.sessions.intake import Started
from bot.slack.messages import thread_surface
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply, Request, ToolCall
from tests.fakes.slack import FakeSlack, Message
from tests.slack_threads import turns
from tests.web_client import anonymous

REPOS = Path(__file__).parent / "data" / "acme_repos.yml"
STARTED = re.compile(r"Started sub-session ([0-9a-f]{16})")


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return result


def tool_outputs(req: Request) -> list[str]:
    """The tool results of the step before this request (the latest run of tool messages)."""
    out: list[str] = []
    for message in reversed(req.body["messages"]):
        if message["role"] != "tool":
            break
        out.insert(0, message["content"])
    return out


def spawned(req: Request) -> list[str]:
    return [m.group(1) for m in STARTED.finditer("\n".join(m.get("content") or "" for m in req.body["messages"]
                                                           if m["role"] == "tool"))]


def board(slack: FakeSlack, root: str) -> Message | None:
    return next((m for m in slack.bot_messages(thread_ts=root) if m.text.startswith("Sub-sessions:")), None)


async def start(tmp_path: Path, slack: FakeSlack, model: FakeOpenAI, **extra: Any) -> Service:
    env = service_env(tmp_path / "data", slack, model, repos_config=REPOS, sandbox_backend="none", **extra)
    svc = Service(make_settings(env))
    await svc.start()
    await asyncio.wait_for(slack.connected.wait(), 10)
    return svc


@pytest.fixture
async def service(tmp_path, slack, model) -> AsyncIterator[Service]:
    svc = await start(tmp_path, slack, model)
    yield svc
    await svc.stop()


async def parent_of(svc: Service, root: str) -> str:
    async def find() -> str | None:
        info = await svc.sessions.find_by_surface(thread_surface("C0000001", root))
        return info.id if info else None

    return str(await until(find, what="the parent session"))


async def test_a_parent_spawns_children_in_two_repos_reads_their_status_and_sums_up(service, slack, model):
    model.add_for("compare", Reply(tool_calls=[
        ToolCall("spawn_session", {"repo": "acme/api", "prompt": "List the API's endpoints.", "title": "API endpoints"}),
        ToolCall("spawn_session", {"repo": "acme/web", "prompt": "List the web app's pages.", "title": "Web pages"}),
    ]))
    model.add_for("compare", lambda req: Reply(tool_calls=[
        ToolCall("session_status", {"id": child, "wait_seconds": 20}) for child in spawned(req)]))
    model.add_for("compare", lambda req: Reply(text="Summary: " + " / ".join(
        line for out in tool_outputs(req) for line in out.splitlines() if line.startswith("Answer to:"))))
    model.add_for("List the API", Reply(text="Answer to: the API has /invoices and /refunds", chunk_delay=0.05))
    model.add_for("List the web", Reply(text="Answer to: the web app has /login and /checkout", chunk_delay=0.05))

    root = await slack.mention("U0ALICE1", "in acme/api compare the API's endpoints with the web app's pages")
    parent = await parent_of(service, root)
    await slack.wait_for(lambda: (t := turns(slack, root)) and t[0].done, timeout=20, what="the parent's answer")
    answer = turns(slack, root)[0].answer()
    assert "/invoices and /refunds" in answer and "/login and /checkout" in answer, answer

    children = sorted([await service.sessions.get(c) for c in await service.sessions.child_ids(parent)], key=lambda c: c.repo)
    api, web = children
    assert (api.repo, api.title, web.repo, web.title) == ("acme/api", "API endpoints", "acme/web", "Web pages")
    for child in (api, web):
        assert child.parent_id == parent and child.origin is Origin.PARENT_SESSION and child.surfaces == ()
        assert child.creator == "U0ALICE1", "children are the person's who prompted the parent"
        turn = next(iter((await service.sessions.view(child.id)).turns.values()))
        assert turn.author.id == "U0ALICE1" and turn.author.origin is Origin.PARENT_SESSION
        assert turn.outcome is Outcome.DONE
    status = tool_outputs(next(r for r in model.requests if "Summary" not in r.last_user_text and tool_outputs(r)
                               and tool_outputs(r)[0].startswith("Sub-session")))
    assert status[0].startswith(f'Sub-session {api.id} "API endpoints" on acme/api: idle.') and "Outcome: done" in status[0]

    # the parent's thread: one line per child, kept current (both done)
    message = await slack.wait_for(lambda: (b := board(slack, root)) and "working" not in b.rendered() and b,
                                   what="the children's lines to say done")
    text = message.rendered()
    assert f"<http://agents.test/s/{api.share_token}|API endpoints> · `acme/api` · :white_check_mark: done" in text
    assert f"<http://agents.test/s/{web.share_token}|Web pages> · `acme/web` · :white_check_mark: done" in text
    assert "view_session" not in message.buttons(), "the list is no turn of its own"
    view = await service.sessions.view(parent)
    assert [(c.id, c.status) for c in view.children.values()] == [(api.id, "done"), (web.id, "done")], "in spawn order"

    # the web pages link parent and children both ways
    viewer = anonymous(service)
    try:
        parent_info = await service.sessions.get(parent)
        status, html = await viewer.get(f"/s/{parent_info.share_token}")
        assert status == 200
        assert f'<a class="title" href="/s/{api.share_token}">API endpoints</a>' in html
        assert f'<a class="title" href="/s/{web.share_token}">Web pages</a>' in html
        assert '<span class="status status-done">done</span>' in html
        status, html = await viewer.get(f"/s/{api.share_token}")
        assert status == 200
        assert f'Sub-session of <a href="/s/{parent_info.share_token}">in acme/api compare' in html
        assert "from a parent session" in html
    finally:
        await viewer.close()

    # the system prompts: the parent is told when to spawn, a child that it is one
    parent_system = next(r for r in model.requests if "compare" in r.last_user_text).body["messages"][0]["content"]
    assert "research across several repositories" in parent_system and "split a large change" in parent_system
    child_system = next(r for r in model.requests if "List the API" in r.last_user_text).body["messages"][0]["content"]
    assert "You are a sub-session" in child_system


async def test_limits_answer_with_tool_errors(tmp_path, slack, model):
    svc = await start(tmp_path, slack, model, max_spawn_depth=1, max_children_per_session=2)
    try:
        spawn = [ToolCall("spawn_session", {"repo": "acme/api", "prompt": f"child {i}", "title": f"Child {i}"})
                 for i in range(3)]
        model.add_for("three children", Reply(tool_calls=spawn), Reply(text="tried"))
        model.add_for("child 0", Reply(tool_calls=[
            ToolCall("spawn_session", {"repo": "acme/api", "prompt": "grandchild", "title": "Too deep"})]), Reply(text="ok"))
        root = await slack.mention("U0ALICE1", "in acme/api start three children")
        parent = await parent_of(svc, root)
        await slack.wait_for(lambda: (t := turns(slack, root)) and t[0].done, timeout=20, what="the parent's answer")
        results = next(tool_outputs(r) for r in model.requests if "three children" in r.last_user_text and tool_outputs(r))
        assert [bool(STARTED.match(r)) for r in results] == [True, True, False]
        assert results[2].startswith("Not started: this session already started 2 sub-sessions, the most one session "
                                     "may (MAX_CHILDREN_PER_SESSION=2).")
        children = await svc.sessions.child_ids(parent)
        assert len(children) == 2

        async def children_done() -> bool:
            views = [await svc.sessions.view(c) for c in children]
            return all(v.turns and not any(t.running for t in v.turns.values()) for v in views)

        await until(children_done, what="the children to finish")
        deep = next(tool_outputs(r) for r in model.requests if "child 0" in r.last_user_text and tool_outputs(r))
        assert deep[0].startswith("Not started: sub-sessions nest at most 1 level(s) deep (MAX_SPAWN_DEPTH)")
        assert await svc.sessions.child_ids(children[0]) == []
        child_system = next(r for r in model.requests if "child 0" in r.last_user_text).body["messages"][0]["content"]
        assert "You cannot start sub-sessions of your own." in child_system
    finally:
        await svc.stop()


async def test_the_tree_limit_counts_every_session_in_the_tree(tmp_path, slack, model):
    svc = await start(tmp_path, slack, model, max_sessions_per_tree=3)
    try:
        model.add_for("grow a tree", Reply(tool_calls=[
            ToolCall("spawn_session", {"repo": "acme/nope", "prompt": "x", "title": "Nowhere"}),
            ToolCall("spawn_session", {"repo": "acme/api", "prompt": "branch out", "title": "Branch"})]),
            lambda req: Reply(tool_calls=[ToolCall("session_status", {"id": spawned(req)[0], "wait_seconds": 20})]),
            Reply(tool_calls=[ToolCall("spawn_session", {"repo": "acme/web", "prompt": "leaf", "title": "Leaf"})]),
            Reply(text="grown"))
        model.add_for("branch out", Reply(tool_calls=[
            ToolCall("spawn_session", {"repo": "acme/api", "prompt": "twig", "title": "Twig"})]), Reply(text="branched"))
        root = await slack.mention("U0ALICE1", "in acme/api grow a tree")
        await slack.wait_for(lambda: (t := turns(slack, root)) and t[0].done, timeout=20, what="the parent's answer")
        outputs = [out for r in model.requests if "grow a tree" in r.last_user_text for out in tool_outputs(r)]
        assert outputs[-1] == ("Not started: this tree of sessions already holds 3 sessions, the most one tree may "
                               "(MAX_SESSIONS_PER_TREE=3). Reuse a sub-session with send_to_session, or do the work here.")
        assert outputs[0] == "The sub-session was not started: I don't know the repository acme/nope."
        assert len(outputs) == 4, outputs
    finally:
        await svc.stop()


async def test_send_queues_a_follow_up_and_cancel_stops_a_child(service, slack, model):
    model.add_for("babysit", Reply(tool_calls=[
        ToolCall("spawn_session", {"repo": "acme/web", "prompt": "slow work", "title": "Slow"})]),
        lambda req: Reply(tool_calls=[ToolCall("send_to_session", {"id": spawned(req)[0], "prompt": "and then more"})]),
        lambda req: Reply(tool_calls=[ToolCall("cancel_session", {"id": spawned(req)[0]})]),
        lambda req: Reply(tool_calls=[ToolCall("session_status", {"id": spawned(req)[0]}),
                                      ToolCall("session_status", {"id": "0123456789abcdef"})]),
        Reply(text="cancelled it"))
    model.add_for("slow work", Reply(text="working on it", chunk_delay=0.5, chunk_chars=2))
    root = await slack.mention("U0ALICE1", "in acme/api babysit a child")
    parent = await parent_of(service, root)
    await slack.wait_for(lambda: (t := turns(slack, root)) and t[0].done, timeout=20, what="the parent's answer")
    (child,) = await service.sessions.child_ids(parent)
    outputs = [out for r in model.requests if "babysit" in r.last_user_text for out in tool_outputs(r)]
    assert outputs[1].startswith(f"Queued on sub-session {child}. It runs after what the sub-session is doing now.")
    assert outputs[2] == f"Stopped sub-session {child}: its running turn, 1 queued prompt(s)."
    assert "Outcome: stopped by U0ALICE1." in outputs[3]
    assert outputs[4] == f"'0123456789abcdef' is not a sub-session of this session. Yours: {child}."
    view = await service.sessions.view(child)
    assert [t.outcome for t in view.turns.values()] == [Outcome.STOPPED], "the follow-up never ran"
    message = await slack.wait_for(lambda: (b := board(slack, root)) and ":black_square_for_stop: stopped" in b.rendered()
                                   and b, what="the child's line to say stopped")
    assert "Slow" in message.rendered()


async def test_stopping_the_parent_stops_its_children(service, slack, model):
    model.add_for("supervise", Reply(tool_calls=[
        ToolCall("spawn_session", {"repo": "acme/web", "prompt": "very slow work", "title": "Very slow"})]),
        lambda req: Reply(tool_calls=[ToolCall("session_status", {"id": spawned(req)[0], "wait_seconds": 60})]))
    model.add_for("very slow work", Reply(text="x" * 200, chunk_delay=0.5, chunk_chars=1))
    root = await slack.mention("U0ALICE1", "in acme/api supervise a child")
    parent = await parent_of(service, root)

    async def child_running() -> str | None:
        children = await service.sessions.child_ids(parent)
        return children[0] if children and service.sessions.running_author(children[0]) else None

    child = await until(child_running, what="the child to run")
    head = await slack.wait_for(lambda: (t := turns(slack, root)) and "stop_turn" in t[0].head.buttons() and t[0].head,
                                what="the Stop button")
    await slack.click("U0ALICE1", head, "stop_turn")
    await slack.wait_for(lambda: (t := turns(slack, root)) and t[0].done, timeout=10, what="the parent to stop")
    await until(lambda: _idle(service, child), timeout=10, what="the child to stop")
    view = await service.sessions.view(child)
    assert [(t.outcome, t.stopped_by) for t in view.turns.values()] == [(Outcome.STOPPED, "U0ALICE1")]
    events = list(service.sessions.log_of(parent).read())
    assert any(isinstance(e.data, ChildSession) and e.data.outcome is Outcome.STOPPED for e in events)


async def _idle(svc: Service, session_id: str) -> bool:
    view = await svc.sessions.view(session_id)
    return view.state == "idle" and bool(view.turns)


async def test_a_childs_line_stays_current_while_the_parent_is_idle_and_after_a_restart(tmp_path, slack, model):
    svc = await start(tmp_path, slack, model)
    try:
        model.add_for("hand off", Reply(tool_calls=[
            ToolCall("spawn_session", {"repo": "acme/web", "prompt": "take your time", "title": "Patient"})]),
            Reply(text="Handed off; ask me later."))
        model.add_for("take your time", Reply(text="took my time " * 10, chunk_delay=0.1, chunk_chars=6))
        root = await slack.mention("U0ALICE1", "in acme/api hand off the work")
        parent = await parent_of(svc, root)
        await slack.wait_for(lambda: (t := turns(slack, root)) and t[0].done, timeout=20, what="the parent's answer")
        line = await slack.wait_for(lambda: (b := board(slack, root)) and b.rendered(), what="the child's line")
        assert "|Patient> · `acme/web` · :hourglass_flowing_sand: working" in line, "the parent is done, the child is not"
        await slack.wait_for(lambda: (b := board(slack, root)) and ":white_check_mark: done" in b.rendered(),
                             what="the line to say done while the parent is idle")
        assert (await svc.sessions.view(parent)).state == "idle"
        (child,) = await svc.sessions.child_ids(parent)
    finally:
        await svc.stop()

    svc = await start(tmp_path, slack, model)  # a new process: the same message goes on being edited
    try:
        message = board(slack, root)
        model.add_for("once more", Reply(text="again", ttft=0.5))
        alice = Author(id="U0ALICE1", name="Alice", origin=Origin.WEB)
        assert isinstance(await svc.intake.submit(IntakeRequest("once more", alice, session_id=child)), Started)
        await slack.wait_for(lambda: ":hourglass_flowing_sand: working" in board(slack, root).rendered(),
                             what="the line to say working again")
        await slack.wait_for(lambda: ":white_check_mark: done" in board(slack, root).rendered(), what="done again")
        assert board(slack, root) is message and [m for m in slack.bot_messages(thread_ts=root)
                                                  if m.text.startswith("Sub-sessions:")] == [message]
    finally:
        await svc.stop()
