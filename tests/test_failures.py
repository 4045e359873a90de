"""Failures outside the model: the turn still ends visibly, and the person always hears back."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from typing import Any

import aiohttp

from bot.events import Outcome, TurnEnded
from bot.service import Service
from bot.slack.messages import thread_surface
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply, ToolCall
from tests.fakes.slack import FakeSlack
from tests.slack_threads import all_done, turns
from tests.web_client import base_url


async def test_a_turn_whose_end_path_raises_ends_as_failed_in_the_log_and_in_slack(tmp_path, slack: FakeSlack, model: FakeOpenAI):
    svc = Service(make_settings(service_env(tmp_path / "data", slack, model, plugins="tests.plugins.turn_end:BrokenNotifier")))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        model.add(Reply(text="all good here"))
        root = await slack.mention("U0ALICE1", "hello")
        status = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]
        await slack.wait_for(lambda: ":warning:" in status.rendered(), what="the failure to show")
        assert "could not be finished cleanly" in status.rendered() and "Stop" not in status.rendered()
        assert "Traceback" not in status.rendered() and "notification service" not in status.rendered()
        session = await svc.sessions.find_by_surface(thread_surface("C0000001", root))
        assert session is not None
        ended = [e.data for e in svc.sessions.log_of(session.id).read() if isinstance(e.data, TurnEnded)]
        assert [e.outcome for e in ended] == [Outcome.ERROR]
        assert svc.sessions.log_of(session.id).next_prompt() is None, "the prompt is not left running or queued"

        await slack.user_message("U0BOB001", "and now?", thread_ts=root)  # the session lives on
        await slack.wait_for(lambda: len(slack.bot_messages(thread_ts=root)) == 2
                             and "Done" in slack.bot_messages(thread_ts=root)[1].rendered())
    finally:
        await svc.stop()


async def test_a_mention_that_fails_to_be_handled_is_answered_and_its_redelivery_is_handled(tmp_path, slack, model):
    data = tmp_path / "data"
    svc = Service(make_settings(service_env(data, slack, model)))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        db = sqlite3.connect(data / "hosted-agents.db")
        db.execute("ALTER TABLE sessions RENAME TO sessions_away")  # the database breaks under the service
        db.commit()
        ts = slack.next_ts()
        event = {"type": "app_mention", "user": "U0ALICE1", "text": f"<@{slack.bot_user_id}> hello", "ts": ts,
                 "channel": "C0000001", "event_ts": ts}
        await slack.send_event(event, event_id="Ev0FAILS001")
        await slack.wait_for(lambda: slack.calls_to("chat.postEphemeral"), what="a word to the person")
        told = slack.calls_to("chat.postEphemeral")[-1].params
        assert told["user"] == "U0ALICE1" and "something went wrong on my side" in told["text"]
        assert not slack.bot_messages(thread_ts=ts)

        db.execute("ALTER TABLE sessions_away RENAME TO sessions")
        db.commit()
        db.close()
        await slack.send_event(event, event_id="Ev0FAILS001", retry_attempt=1)  # Slack's retry
        await slack.wait_for(lambda: slack.bot_messages(thread_ts=ts)
                             and "Done" in slack.bot_messages(thread_ts=ts)[0].rendered(),
                             what="the retried mention to be answered")
    finally:
        await svc.stop()


async def test_a_stream_that_stalls_before_answering_is_asked_once_more(tmp_path, slack, model):
    from bot.service import Service
    from tests.conftest import make_settings, service_env
    from tests.fakes.openai import Reply
    from tests.slack_threads import all_done, turns

    svc = Service(make_settings(service_env(tmp_path / "data", slack, model, model_timeout="0.5")))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        model.add(Reply(hang=True), Reply(text="Here I am."))
        root = await slack.mention("U0ALICE1", "are you there?")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=10)
        assert "Here I am." in turns(slack, root)[0].rendered() and len(model.requests) == 2
    finally:
        await svc.stop()


# -- a failed turn links to where it failed in the session page's trace ---------------------------

_TRACE_LINK = re.compile(r"<(http://agents\.test/s/([A-Za-z0-9_-]+)#(e\d+))\|See where in the trace>")


def _warning_line(slack: FakeSlack, root: str, index: int) -> str:
    head = turns(slack, root)[index].head
    lines = [e["text"] for b in head.blocks if b.get("type") == "context" for e in b["elements"] if ":warning:" in e["text"]]
    assert len(lines) == 1, head.blocks
    return lines[0]


async def _page(svc: Service, token: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{base_url(svc)}/s/{token}") as resp:
        assert resp.status == 200
        return await resp.text()


async def test_a_failed_turn_says_what_failed_in_one_line_and_links_to_its_place_in_the_trace(tmp_path, slack, model):
    svc = Service(make_settings(service_env(tmp_path / "data", slack, model, model_max_retries=1)))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        model.add(Reply(text="first answer"), Reply(status=500, error="upstream exploded\n  at line 3"),
                  Reply(status=500, error="upstream exploded\n  at line 3"))
        root = await slack.mention("U0ALICE1", "hello")
        await slack.wait_for(lambda: all_done(slack, root, 1))
        await slack.user_message("U0ALICE1", "now fail", thread_ts=root)
        await slack.wait_for(lambda: all_done(slack, root, 2), timeout=10)

        line = _warning_line(slack, root, 1)
        assert "\n" not in line and "Traceback" not in line and "sk-test" not in line
        assert line.startswith(":warning: The model service answered with an error (HTTP 500, 2 attempts): "
                               "upstream exploded at line 3.")
        link = _TRACE_LINK.search(line)
        assert link is not None, line
        token, anchor = link.group(2), link.group(3)

        html = await _page(svc, token)
        element = re.search(rf'<div class="outcome outcome-error" id="{anchor}">([^<]*)', html)
        assert element is not None, f"no element with id {anchor} on the page"
        assert "The model service answered with an error (HTTP 500, 2 attempts)" in element.group(1)
        assert html.count(f'id="{anchor}"') == 1
        assert re.search(r'<div class="prompt" id="e\d+">now fail</div>', html), "every trace entry has its anchor"

        await slack.user_message("U0ALICE1", "and now?", thread_ts=root)  # the session lives on
        await slack.wait_for(lambda: all_done(slack, root, 3), timeout=10)
        assert "Answer to: and now?" in turns(slack, root)[2].rendered()
        assert "#e" not in turns(slack, root)[2].rendered(), "only failures link to the trace"
    finally:
        await svc.stop()


async def test_a_turn_that_fails_in_a_tool_links_to_that_tool(tmp_path, slack, model):
    svc = Service(make_settings(service_env(tmp_path / "data", slack, model,
                                            plugins="tests.plugins.turn_end:BrokenPolicy")))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        model.add(Reply(tool_calls=[ToolCall("post_note", {"text": "Plan: nothing much."})]))
        root = await slack.mention("U0ALICE1", "make a plan")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=10)
        line = _warning_line(slack, root, 0)
        assert "policy.internal" not in line and "\n" not in line
        link = _TRACE_LINK.search(line)
        assert link is not None, line

        html = await _page(svc, link.group(2))
        tool = re.search(rf'<details class="tool" data-id="[^"]+" id="{link.group(3)}" open><summary><code class="name">'
                         r'post_note</code> <span class="state">not finished</span>', html)
        assert tool is not None, "the link lands on the tool that was running, opened"
        outcome = re.search(r'<div class="outcome outcome-error" id="(e\d+)">[^<]*<a class="where" href="#(e\d+)">', html)
        assert outcome is not None and outcome.group(2) == link.group(3) != outcome.group(1)
    finally:
        await svc.stop()


def test_the_projection_places_a_failure_at_the_running_tool_or_the_outcome():
    from bot.events import Author, Event, Origin, ToolCalled, ToolResult, TurnStarted
    from bot.sessions.projection import project

    def events(*data: Any) -> list[Event]:
        return [Event(seq=i, ts=0.0, turn=1, data=d) for i, d in enumerate(data, 1)]

    started = TurnStarted(prompt_id=1, text="go", author=Author(id="U0ALICE1", origin=Origin.SLACK_THREAD))
    done = ToolCalled(id="a", name="read_file", arguments="{}")
    view = project(events(started, done, ToolResult(id="a", name="read_file", ok=True, output="x"),
                          ToolCalled(id="b", name="run", arguments="{}"), TurnEnded(prompt_id=1, outcome=Outcome.ERROR)))
    turn = view.turns[1]
    assert (turn.seq, [t.seq for t in turn.tools], turn.end_seq, turn.trace_seq) == (1, [2, 4], 5, 4)
    view = project(events(started, TurnEnded(prompt_id=1, outcome=Outcome.ERROR, error="boom")))
    assert view.turns[1].trace_seq == 2
    stopped = TurnEnded(prompt_id=1, outcome=Outcome.STOPPED)
    view = project(events(started, ToolCalled(id="b", name="run", arguments="{}"), stopped))
    assert view.turns[1].trace_seq is None, "a stopped turn did not fail"
