"""Slack's places where people type before they send (the Home tab composer, the agent pane),
Slack's own stop, the *Send to agent* shortcut, and `set repo` (the channel's default repository)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.service import Service
from bot.sessions.access import Place
from bot.slack.messages import thread_surface
from bot.store.tables import WarmUpRow
from tests.conftest import make_settings, service_env
from tests.fakes.openai import Reply
from tests.slack_threads import all_done

ACME = Path(__file__).parent / "data" / "acme_repos.yml"


@pytest.fixture
async def acme(tmp_path, slack, model):  # type: ignore[no-untyped-def]
    svc = Service(make_settings(service_env(tmp_path / "data", slack, model, repos_config=ACME, sandbox_backend="none")))
    await svc.start()
    await asyncio.wait_for(slack.connected.wait(), 10)
    yield svc
    await svc.stop()


async def warm_ups(svc: Service) -> list[tuple[str, str, str | None]]:
    async with svc.db.session() as s:
        rows = (await s.execute(select(WarmUpRow).order_by(WarmUpRow.id))).scalars().all()
    return [(r.trigger, r.repo, r.user_id) for r in rows]


def unknown_repo_answer() -> Reply:
    return Reply(text=json.dumps({"repo": "unknown", "confidence": 0.1, "alternatives": [], "reason": ""}))


async def test_set_repo_makes_it_the_channels_default_for_requests_the_rules_cannot_place(acme, slack, model):
    root = await slack.mention("U0ALICE1", "set repo acme/web")
    await slack.wait_for(lambda: any("acme/web" in m.rendered() for m in slack.bot_messages(thread_ts=root)),
                         what="the confirmation")
    model.add(Reply(text="Looking."))
    asked = await slack.mention("U0BOB001", "the numbers look odd today")  # no rule names a repo
    await slack.wait_for(lambda: all_done(slack, asked, 1), what="the answer")
    session = await acme.sessions.find_by_surface(thread_surface("C0000001", asked))
    assert session is not None and session.repo == "acme/web"
    assert len(model.requests) == 1, "the default decided: the classifier model was not asked"
    await slack.mention("U0ALICE1", "set repo acme/nope")
    await slack.wait_for(lambda: [c for c in slack.calls_to("chat.postEphemeral") if "acme/nope" in str(c.params)],
                         what="the refusal")
    assert await acme.intake.default_repo(Place("C0000001")) == "acme/web", "a refused change changes nothing"


async def test_the_send_to_agent_shortcut_makes_a_message_a_request_in_a_thread_under_it(acme, slack, model):
    ts = await slack.user_message("U0ALICE1", "the invoice PDF has the wrong VAT since Monday")
    model.add(Reply(text="On it."))
    await slack.shortcut("U0BOB001", ("C0000001", ts), "send_to_agent")
    await slack.wait_for(lambda: all_done(slack, ts, 1), what="the answer under the message")
    session = await acme.sessions.find_by_surface(thread_surface("C0000001", ts))
    assert session is not None and session.repo == "acme/api"  # the rules read the message's text
    prompt = model.requests[-1].last_user_text
    assert "the invoice PDF has the wrong VAT" in prompt and "<@U0ALICE1>" in prompt and "/archives/C0000001/" in prompt
    assert slack.calls_to("chat.getPermalink")


async def test_typing_in_the_home_tab_warms_the_likeliest_repo_and_start_opens_a_dm_thread(acme, slack, model):
    await slack.open_home("U0ALICE1")
    await slack.wait_for(lambda: slack.home_views.get("U0ALICE1"), what="the Home tab")
    await slack.type_home("U0ALICE1", "in acme/api the ")
    await _until(lambda: warm_ups(acme), lambda rows: rows == [("app_home", "acme/api", "U0ALICE1")])
    await slack.type_home("U0ALICE1", "in acme/api the login")
    await asyncio.sleep(0.2)
    assert await warm_ups(acme) == [("app_home", "acme/api", "U0ALICE1")], "the same repo is not warmed again"
    await slack.type_home("U0ALICE1", "in acme/web the login page is slow")  # names another: re-aim
    await _until(lambda: warm_ups(acme), lambda rows: len(rows) == 2 and rows[-1][1] == "acme/web")
    model.add(Reply(text="Profiling it."))
    await slack.click_home("U0ALICE1", "home_start")
    dm = slack.dm_channel("U0ALICE1")
    root = await slack.wait_for(lambda: [m.ts for m in slack.bot_messages(channel=dm) if "From the Home tab" in m.text],
                                what="the DM thread's first message")
    await slack.wait_for(lambda: all_done(slack, root[0], 1, channel=dm), what="the answer in the DM thread")
    session = await acme.sessions.find_by_surface(thread_surface(dm, root[0]))
    assert session is not None and session.repo == "acme/web" and session.origin.value == "app_home"


async def test_the_agent_pane_warms_shows_the_agent_working_and_honours_slacks_stop(acme, slack, model):
    model.add(Reply(text="Earlier work."))
    first = await slack.mention("U0ALICE1", "in acme/infra bump the node pool")  # a recent repo to predict
    await slack.wait_for(lambda: all_done(slack, first, 1))
    channel, thread = await slack.start_assistant_thread("U0ALICE1")
    await _until(lambda: warm_ups(acme), lambda rows: ("agent_pane", "acme/infra", "U0ALICE1") in rows)
    model.add(Reply(text="word " * 2000, chunk_delay=0.01))
    await slack.user_message("U0ALICE1", "in acme/infra add a DNS record", channel=channel, thread_ts=thread)
    await slack.wait_for(lambda: (slack.agent_sessions.get((channel, thread)) or {}).get("status") == "processing",
                         what="the agent session processing (Slack shows its stop button)")
    await slack.stop_agent_session("U0ALICE1", channel, thread)
    await slack.wait_for(lambda: any("Stopped" in m.rendered() for m in slack.bot_messages(channel=channel,
                                                                                           thread_ts=thread)),
                         what="the turn stopped by Slack's stop")
    await slack.wait_for(lambda: slack.agent_sessions[(channel, thread)]["status"] == "active",
                         what="the session moved away from processing")


async def test_without_agent_sessions_the_pane_falls_back_to_the_assistant_status(acme, slack, model):
    slack.method_errors["agents.sessions.setStatus"] = "not_allowed_token_type"  # the app is not declared an agent
    channel, thread = await slack.start_assistant_thread("U0ALICE1")
    model.add(Reply(text="word " * 400, chunk_delay=0.01))
    await slack.user_message("U0ALICE1", "in acme/infra add a DNS record", channel=channel, thread_ts=thread)
    await slack.wait_for(lambda: slack.assistant_status.get((channel, thread)) == "is working…", what="the status")
    await slack.wait_for(lambda: slack.assistant_status.get((channel, thread)) == "", timeout=20, what="cleared")


async def _until(read, check, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await read()
        if check(value):
            return value
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {value}"
        await asyncio.sleep(0.05)
