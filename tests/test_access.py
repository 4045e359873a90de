"""The access rules through the Slack fake: who may ask, who may prompt or stop a session, and how
much one person may run. A refusal is private (ephemeral), queues nothing, starts nothing and
calls no model."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.service import Service
from bot.slack.messages import thread_surface
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.slack import FakeSlack
from tests.slack_threads import all_done

ALICE, BOB, CAROL, GUEST, OUTSIDER = "U0ALICE1", "U0BOB001", "U0CAROL1", "U0GUEST1", "U0EXTERN1"


async def start(tmp_path: Path, slack: FakeSlack, model: FakeOpenAI, **extra: Any) -> Service:
    svc = Service(make_settings(service_env(tmp_path / "data", slack, model, **extra)))
    await svc.start()
    await asyncio.wait_for(slack.connected.wait(), 10)
    return svc


@pytest.fixture
async def people(slack: FakeSlack) -> FakeSlack:
    slack.users[GUEST] = {"is_restricted": True}
    slack.users["U0SINGLE1"] = {"is_restricted": True, "is_ultra_restricted": True}
    slack.users[OUTSIDER] = {"team_id": "T0OTHER01"}  # Slack Connect: another organisation
    return slack


def ephemerals(slack: FakeSlack, user: str) -> list[dict[str, Any]]:
    return [c.params for c in slack.calls_to("chat.postEphemeral") if c.params.get("user") == user]


async def refused(slack: FakeSlack, user: str, count: int = 1) -> dict[str, Any]:
    await slack.wait_for(lambda: len(ephemerals(slack, user)) >= count, what=f"a private refusal for {user}")
    return ephemerals(slack, user)[count - 1]


async def test_guests_and_other_organisations_are_refused_privately_and_nothing_starts(
        tmp_path, people: FakeSlack, model, caplog: pytest.LogCaptureFixture):
    slack = people
    svc = await start(tmp_path, slack, model)
    try:
        caplog.set_level(logging.INFO, logger="bot.sessions.access")
        roots = {user: await slack.mention(user, "please delete the prod database") for user in (GUEST, "U0SINGLE1", OUTSIDER)}
        assert "full members of this workspace, not from guests" in (await refused(slack, GUEST))["text"]
        assert "not from guests" in (await refused(slack, "U0SINGLE1"))["text"]
        assert "not from other organisations" in (await refused(slack, OUTSIDER))["text"]
        assert (await refused(slack, OUTSIDER))["thread_ts"] == roots[OUTSIDER]
        await slack.mention(ALICE, "hello")  # a member, after them: everything before was handled
        await slack.wait_for(lambda: model.requests)
        for root in roots.values():
            assert await svc.sessions.find_by_surface(thread_surface("C0000001", root)) is None
            assert not slack.bot_messages(thread_ts=root), "nothing public in their thread"
        assert len(model.requests) == 1 and model.requests[0].last_user_text.endswith("hello")
        assert svc.access.refusals == {"guest": 2, "external": 1}
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert f"refused {GUEST} (slack_thread): guest" in logged and f"refused {OUTSIDER} (slack_thread): external" in logged
        assert "prod database" not in logged, "what they asked is never logged"
    finally:
        await svc.stop()


async def test_allow_guests_and_allow_external_let_them_in(tmp_path, people: FakeSlack, model):
    svc = await start(tmp_path, people, model, allow_guests="true", allow_external="true")
    try:
        for user in (GUEST, OUTSIDER):
            root = await people.mention(user, "hi")
            await people.wait_for(lambda root=root: all_done(people, root, 1))
        assert len(model.requests) == 2 and not people.calls_to("chat.postEphemeral")
    finally:
        await svc.stop()


async def test_allow_users_and_usergroups_narrow_who_may_ask(tmp_path, slack: FakeSlack, model):
    slack.usergroups["S0DEVS001"] = [CAROL]
    svc = await start(tmp_path, slack, model, allow_users=ALICE, allow_usergroups="S0DEVS001")
    try:
        bob_root = await slack.mention(BOB, "hi")
        assert "not on the list of people who may use me" in (await refused(slack, BOB))["text"]
        for user in (ALICE, CAROL):  # listed, and a member of a listed group
            root = await slack.mention(user, "hi")
            await slack.wait_for(lambda root=root: all_done(slack, root, 1))
        assert await svc.sessions.find_by_surface(thread_surface("C0000001", bob_root)) is None
        assert len(model.requests) == 2
        # the user group's members are asked once, then cached
        await slack.mention(CAROL, "again")
        await slack.wait_for(lambda: len(model.requests) == 3)
        assert len(slack.calls_to("usergroups.users.list")) == 1
    finally:
        await svc.stop()


async def test_a_person_slack_cannot_place_is_refused_and_the_lookup_failing_fails_closed(tmp_path, slack, model):
    slack.hidden_users.add("U0GHOST01")  # users.info: user_not_found (someone from outside)
    svc = await start(tmp_path, slack, model)
    try:
        await slack.mention("U0GHOST01", "hi")
        assert "other organisations" in (await refused(slack, "U0GHOST01"))["text"]
        slack.rate_limit["users.info"] = 100  # Slack keeps answering 429: we cannot tell who this is
        await slack.mention("U0NEWBIE1", "hi")
        assert "couldn't check who you are" in (await refused(slack, "U0NEWBIE1"))["text"]
        assert model.requests == []
    finally:
        slack.rate_limit.clear()
        await svc.stop()


async def test_with_participants_only_the_starter_and_those_they_add_may_prompt_or_stop(tmp_path, slack, model):
    svc = await start(tmp_path, slack, model, session_prompters="participants", admin_users="U0ADMIN01")
    try:
        model.add(Reply(text="word " * 300, chunk_delay=0.05))
        root = await slack.mention(ALICE, "write a long essay")
        status = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]
        await slack.wait_for(lambda: model.requests, what="the turn to start")

        await slack.user_message(BOB, "and make it rhyme", thread_ts=root)  # an outsider's reply
        assert "Only the people taking part in this session can prompt it" in (await refused(slack, BOB))["text"]
        await slack.click(BOB, status, "stop_turn")
        assert "can stop it" in (await refused(slack, BOB, 2))["text"]
        session = await svc.sessions.find_by_surface(thread_surface("C0000001", root))
        assert session is not None and (await svc.sessions.view(session.id)).queue == []

        await slack.user_message(ALICE, f"<@{CAROL}> can follow up here", thread_ts=root)  # the starter adds Carol
        await slack.wait_for(lambda: any("<@U0CAROL1> can now prompt this session" in m.rendered()
                                         for m in slack.bot_messages(thread_ts=root)), what="the note")
        await slack.user_message(CAROL, "and a summary", thread_ts=root)
        await slack.click("U0ADMIN01", status, "stop_turn")  # an admin may stop anyone's turn
        await slack.wait_for(lambda: "Stopped by <@U0ADMIN01>" in status.rendered(), what="the admin's stop")
        await slack.wait_for(lambda: all_done(slack, root, 2), timeout=15, what="the participant's prompt")
        texts = [r.last_user_text for r in model.requests]
        # Alice talking to Carol is conversation (issue 15), not a prompt: the agent overhears it
        assert texts[1:] == [f"From <@{CAROL}>:\nand a summary"]
        assert f"<@{CAROL}> can follow up here" in str(model.requests[-1].body["messages"])
        assert svc.access.refusals == {"not_participant": 1, "not_yours": 1}
    finally:
        await svc.stop()


async def test_a_fourth_concurrent_session_of_one_person_waits_with_a_message(tmp_path, slack, model):
    svc = await start(tmp_path, slack, model, max_sessions_per_user="3")
    try:
        for _ in range(3):
            model.add(Reply(text="slow " * 40, chunk_delay=0.05))
        roots = [await slack.mention(ALICE, f"task {i}") for i in range(3)]
        await slack.wait_for(lambda: len(model.requests) == 3, what="three sessions running")
        fourth = await slack.mention(ALICE, "task 3")
        await slack.wait_for(lambda: any("already has 3 sessions running" in m.rendered()
                                         for m in slack.bot_messages(thread_ts=fourth)), what="the waiting message")
        bob = await slack.mention(BOB, "my own task")  # someone else's session does not wait behind hers
        await slack.wait_for(lambda: all_done(slack, bob, 1), what="Bob's session")
        assert "task 3" not in [r.last_user_text.rsplit("\n", 1)[-1] for r in model.requests], "it waited"
        await slack.wait_for(lambda: all(all_done(slack, r, 1) for r in roots), timeout=20)
        await slack.wait_for(lambda: all_done(slack, fourth, 1), what="the fourth, once one finished")
    finally:
        await svc.stop()


async def test_prompts_past_the_rate_limit_are_refused_with_when_to_go_on(tmp_path, slack, model):
    svc = await start(tmp_path, slack, model, max_prompts_per_minute="2")
    try:
        first = await slack.mention(ALICE, "one")
        await slack.user_message(ALICE, "two", thread_ts=first)
        await slack.user_message(ALICE, "three", thread_ts=first)
        text = (await refused(slack, ALICE))["text"]
        assert "You've sent 2 requests in the last minute; you can send more in" in text
        await slack.wait_for(lambda: all_done(slack, first, 2))
        assert [r.last_user_text.rsplit("\n", 1)[-1] for r in model.requests] == ["one", "two"]
    finally:
        await svc.stop()


@pytest.fixture
async def restricted_catalog(tmp_path: Path) -> AsyncIterator[Path]:
    path = tmp_path / "repos.yml"
    path.write_text(
        "repos:\n"
        "  - name: acme/api\n    channels: [C0000001]\n"
        "  - name: acme/secrets\n    users: [U0ALICE1]\n"
        "  - name: acme/web\n    channels: [eng-web]\n"
    )
    yield path


async def test_only_the_repos_a_person_may_use_in_that_channel_are_offered_or_picked(
        tmp_path, slack, model, restricted_catalog: Path):
    import json

    slack.channels["C0000WEB"] = {"name": "eng-web", "topic": ""}
    svc = await start(tmp_path, slack, model, repos_config=restricted_catalog, sandbox_backend="none")
    try:
        # Bob in #general: only acme/api is his there, so that is the repository, without asking anyone
        root = await slack.mention(BOB, "the numbers look odd")
        await slack.wait_for(lambda: all_done(slack, root, 1))
        assert (await svc.sessions.find_by_surface(thread_surface("C0000001", root))).repo == "acme/api"
        await slack.mention(BOB, "in acme/secrets rotate the key")
        assert (await refused(slack, BOB))["text"] == ("You can't use acme/secrets here. Repositories you can use here: "
                                                       "acme/api.")
        # Alice may use two there: the select offers those two, and a forged pick of another is refused
        model.add(Reply(text=json.dumps({"repo": "unknown", "confidence": 0.1, "alternatives": [], "reason": ""})))
        asked = await slack.mention(ALICE, "can you check the numbers?")
        ask = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=asked)))[0]
        select = next(b for b in ask.blocks if b["type"] == "actions")["elements"][0]
        offered = {o["value"] for group in select.get("option_groups", [select]) for o in group["options"]}
        assert offered == {"acme/api", "acme/secrets"}
        await slack.choose(BOB, ask, "pick_repo", "acme/secrets")  # Bob may not use it, even for Alice
        assert "You can't use acme/secrets" in (await refused(slack, BOB, 2))["text"]
        await slack.choose(ALICE, ask, "pick_repo", "acme/web")  # not in this channel
        assert "You can't use acme/web here" in (await refused(slack, ALICE))["text"]
        await slack.choose(ALICE, ask, "pick_repo", "acme/secrets")
        await slack.wait_for(lambda: all_done(slack, asked, 1), what="the picked session")
        assert (await svc.sessions.find_by_surface(thread_surface("C0000001", asked))).repo == "acme/secrets"
    finally:
        await svc.stop()
