"""Choosing the repository in Slack: decided by rules or model, or asked with a select."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import pytest

from bot.service import Service
from bot.slack.messages import thread_surface
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.slack import FakeSlack

REPOS = Path(__file__).parent / "data" / "acme_repos.yml"


def vote(repo: str, confidence: float, alternatives: list[str] | None = None) -> Reply:
    return Reply(text=json.dumps({"repo": repo, "confidence": confidence, "alternatives": alternatives or [], "reason": "r"}))


async def start(tmp_path: Path, slack: FakeSlack, model: FakeOpenAI, **extra: object) -> Service:
    env = service_env(tmp_path / "data", slack, model, repos_config=REPOS, sandbox_backend="none", **extra)
    svc = Service(make_settings(env))
    await svc.start()
    await asyncio.wait_for(slack.connected.wait(), 10)
    return svc


@pytest.fixture
async def classified(tmp_path, slack, model):  # type: ignore[no-untyped-def]
    slack.channels["C0000API"] = {"name": "eng-api", "topic": "Billing API"}
    svc = await start(tmp_path, slack, model)
    yield svc
    await svc.stop()


def done(slack: FakeSlack, root: str, index: int = 0) -> bool:
    msgs = slack.bot_messages(thread_ts=root)
    return len(msgs) > index and "Done" in msgs[index].rendered()


async def test_the_channel_decides_and_the_session_gets_the_repo(classified, slack, model):
    root = await slack.mention("U0ALICE1", "the exports are slow for big accounts", channel="C0000API")
    await slack.wait_for(lambda: slack.bot_messages(channel="C0000API", thread_ts=root)
                         and "Done" in slack.bot_messages(channel="C0000API", thread_ts=root)[0].rendered())
    session = await classified.sessions.find_by_surface(thread_surface("C0000API", root))
    assert session.repo == "acme/api"
    assert len(model.requests) == 1 and model.requests[0].body.get("stream"), "no classifier model call was needed"
    assert "checkout of acme/api" in model.requests[0].body["messages"][0]["content"]


async def test_a_confident_model_decides_when_the_rules_cannot(classified, slack, model):
    model.add(vote("acme/mobile", 0.85))
    root = await slack.mention("U0ALICE1", "the camera permission prompt appears twice on first launch")
    await slack.wait_for(lambda: done(slack, root))
    assert (await classified.sessions.find_by_surface(thread_surface("C0000001", root))).repo == "acme/mobile"
    assert "response_format" in model.requests[0].body and model.requests[1].body["stream"]


async def test_an_undecided_request_is_held_and_starts_with_its_text_when_someone_picks(classified, slack, model):
    model.add(vote("unknown", 0.2, ["acme/web", "acme/api"]))
    root = await slack.mention("U0ALICE1", "the dashboard shows invoices twice after a refund")
    ask = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root), what="the question"))[0]
    assert "<@U0ALICE1>, which repository is this about?" in ask.rendered()
    select = next(b for b in ask.blocks if b["type"] == "actions")["elements"][0]
    likely, everything = select["option_groups"]
    assert [o["value"] for o in likely["options"]][:2] == ["acme/web", "acme/api"]
    assert len(likely["options"]) + len(everything["options"]) == 9
    assert len(model.requests) == 1, "nothing runs until someone picks"
    stale = copy.deepcopy(ask)  # what a client that has not refreshed still shows

    await slack.choose("U0BOB001", ask, "pick_repo", "acme/web")
    await slack.wait_for(lambda: "picked by <@U0BOB001>" in ask.rendered(), what="the pick to show")
    await slack.wait_for(lambda: done(slack, root, 1), what="the session to answer")
    session = await classified.sessions.find_by_surface(thread_surface("C0000001", root))
    assert session.repo == "acme/web" and session.creator == "U0ALICE1"
    assert model.requests[-1].last_user_text == "From <@U0ALICE1>:\nthe dashboard shows invoices twice after a refund"
    assert "<@U0ALICE1> asked:" in slack.bot_messages(thread_ts=root)[1].rendered()

    await slack.choose("U0CAROL1", stale, "pick_repo", "acme/api")  # a late second pick
    await slack.wait_for(lambda: slack.calls_to("chat.postEphemeral"))
    assert slack.calls_to("chat.postEphemeral")[-1].params["text"] == "Someone already picked acme/web for this request."


async def test_a_held_request_survives_a_restart(tmp_path, slack, model):
    model.add(vote("unknown", 0.1))
    svc = await start(tmp_path, slack, model)
    root = await slack.mention("U0ALICE1", "products with accents in the name are hard to find")
    ask = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]
    await svc.stop()
    slack.connected.clear()
    svc = await start(tmp_path, slack, model)
    try:
        await slack.choose("U0ALICE1", ask, "pick_repo", "acme/search")
        await slack.wait_for(lambda: done(slack, root, 1))
        assert (await svc.sessions.find_by_surface(thread_surface("C0000001", root))).repo == "acme/search"
    finally:
        await svc.stop()


async def test_an_expired_request_says_so_and_a_late_pick_is_refused(tmp_path, slack, model):
    model.add(vote("unknown", 0.1))
    svc = await start(tmp_path, slack, model, pending_request_ttl=0.6)
    try:
        root = await slack.mention("U0ALICE1", "someone should explain idempotency keys somewhere public")
        ask = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]
        stale = [dict(b) for b in ask.blocks]
        await slack.wait_for(lambda: "dropped this request" in ask.rendered(), timeout=5, what="the expiry notice")
        ask.blocks = stale  # a client that has not refreshed still shows the select
        await slack.choose("U0BOB001", ask, "pick_repo", "acme/docs")
        await slack.wait_for(lambda: slack.calls_to("chat.postEphemeral"))
        assert "expired" in slack.calls_to("chat.postEphemeral")[-1].params["text"]
        assert await svc.sessions.find_by_surface(thread_surface("C0000001", root)) is None
        assert len(model.requests) == 1
    finally:
        await svc.stop()


async def test_in_owner_repo_overrides_the_channel_where_that_repo_may_be_used(classified, slack, model):
    slack.channels["C0000WEB"] = {"name": "design", "topic": ""}  # acme/web's (and only its) channel
    root = await slack.mention("U0ALICE1", "in acme/api make the invoices table sortable", channel="C0000001")
    await slack.wait_for(lambda: slack.bot_messages(channel="C0000001", thread_ts=root))
    assert (await classified.sessions.find_by_surface(thread_surface("C0000001", root))).repo == "acme/api"


async def test_in_owner_repo_for_a_repo_not_allowed_in_that_channel_is_refused_with_the_allowed_list(
        classified, slack, model):
    root = await slack.mention("U0ALICE1", "in acme/web make the invoices table sortable", channel="C0000API")
    refusal = (await slack.wait_for(lambda: slack.calls_to("chat.postEphemeral")))[0].params
    assert refusal["user"] == "U0ALICE1" and refusal["channel"] == "C0000API"
    assert refusal["text"] == "You can't use acme/web here. Repositories you can use here: acme/api."
    await asyncio.sleep(0.2)
    assert await classified.sessions.find_by_surface(thread_surface("C0000API", root)) is None
    assert not slack.bot_messages(channel="C0000API", thread_ts=root) and model.requests == []
    assert classified.access.refusals["repo_not_allowed"] == 1
