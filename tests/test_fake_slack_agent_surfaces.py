"""The Slack fake's Home composer, DMs, agent and assistant surfaces, message shortcuts and permalinks, driven by
the real slack-sdk client.

No app is connected: a plain websocket client opens Socket Mode the way an app would and reads the envelopes.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.fakes.slack import FakeSlack
from tests.test_fake_slack_web_features import app_socket, bot, envelope, slack_error  # the same client side

ALICE, BOB = "U0ALICE1", "U0BOB001"
COMPOSER = {"type": "input", "block_id": "composer", "dispatch_action": True,
            "label": {"type": "plain_text", "text": "Ask for something"},
            "element": {"type": "plain_text_input", "action_id": "prompt", "multiline": True,
                        "dispatch_action_config": {"trigger_actions_on": ["on_character_entered"]}}}
START = {"type": "actions", "block_id": "controls", "elements": [
    {"type": "button", "action_id": "start", "text": {"type": "plain_text", "text": "Start"}, "value": "go"}]}
HOME = {"type": "home", "blocks": [COMPOSER, START]}


async def event_of(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    """The next event of that type (skipping others, such as the echoes of the bot's own posts)."""
    while True:
        env = await envelope(ws)
        if env["type"] == "events_api" and env["payload"]["event"]["type"] == kind:
            return dict(env["payload"]["event"])


# -- Home tab composer -----------------------------------------------------------------------


async def test_typing_in_the_home_composer(slack: FakeSlack):
    view = (await bot(slack).views_publish(user_id=ALICE, view=HOME))["view"]
    assert view["blocks"][0]["element"]["action_id"] == "prompt" and view["state"] == {"values": {}}
    async with app_socket(slack) as ws:
        envelope_id = await slack.type_home(ALICE, "fix the login bug")
        env = await envelope(ws)
        assert env["envelope_id"] == envelope_id and env["type"] == "interactive"
        payload = env["payload"]
        assert payload["type"] == "block_actions" and payload["user"]["id"] == ALICE
        assert payload["team"]["id"] == slack.team_id and payload["api_app_id"] and payload["trigger_id"]
        assert payload["container"] == {"type": "view", "view_id": view["id"]}
        assert not {"channel", "message", "response_url"} & set(payload)
        (action,) = payload["actions"]
        assert action == {"type": "plain_text_input", "action_id": "prompt", "block_id": "composer",
                          "value": "fix the login bug", "action_ts": action["action_ts"]}
        assert payload["view"]["id"] == view["id"] and payload["view"]["type"] == "home"
        assert payload["view"]["state"]["values"] == {
            "composer": {"prompt": {"type": "plain_text_input", "value": "fix the login bug"}}}
        assert slack.home_composer[ALICE] == "fix the login bug"

        # a button pressed afterwards carries what was typed
        await slack.click_home(ALICE, "start")
        payload = (await envelope(ws))["payload"]
        assert payload["actions"][0]["action_id"] == "start"
        assert payload["view"]["state"]["values"]["composer"]["prompt"]["value"] == "fix the login bug"

        # typing more replaces the value; removing everything sends an empty one
        await slack.type_home(ALICE, "fix the login bug now", action_id="prompt")
        assert (await envelope(ws))["payload"]["actions"][0]["value"] == "fix the login bug now"
        await slack.type_home(ALICE, "")
        assert (await envelope(ws))["payload"]["view"]["state"]["values"]["composer"]["prompt"]["value"] == ""


async def test_a_republished_home_keeps_or_drops_the_typed_text(slack: FakeSlack):
    await bot(slack).views_publish(user_id=ALICE, view=HOME)
    async with app_socket(slack) as ws:
        await slack.type_home(ALICE, "draft")
        await envelope(ws)
        # the same block_id and action_id: Slack keeps the input's value
        again = (await bot(slack).views_publish(user_id=ALICE, view={**HOME, "blocks": [START, COMPOSER]}))["view"]
        assert again["state"]["values"] == {"composer": {"prompt": {"type": "plain_text_input", "value": "draft"}}}
        assert slack.home_composer[ALICE] == "draft"
        await slack.click_home(ALICE, "start")
        assert (await envelope(ws))["payload"]["view"]["state"]["values"]["composer"]["prompt"]["value"] == "draft"
        # a new block_id (how an app clears the composer): the value is gone
        cleared = (await bot(slack).views_publish(user_id=ALICE, view={**HOME, "blocks": [
            {**COMPOSER, "block_id": "composer-2"}, START]}))["view"]
        assert cleared["state"] == {"values": {}} and ALICE not in slack.home_composer
        await slack.click_home(ALICE, "start")
        assert (await envelope(ws))["payload"]["view"]["state"] == {"values": {}}


async def test_type_home_wants_an_input_that_dispatches(slack: FakeSlack):
    with pytest.raises(AssertionError, match="no Home tab"):
        await slack.type_home(ALICE, "hi")
    quiet = {**COMPOSER, "dispatch_action": False}
    await bot(slack).views_publish(user_id=ALICE, view={"type": "home", "blocks": [quiet]})
    with pytest.raises(AssertionError, match="dispatch_action"):
        await slack.type_home(ALICE, "hi")
    on_enter = {**COMPOSER, "element": {**COMPOSER["element"], "dispatch_action_config": {
        "trigger_actions_on": ["on_enter_pressed"]}}}
    await bot(slack).views_publish(user_id=ALICE, view={"type": "home", "blocks": [on_enter]})
    with pytest.raises(AssertionError, match="on_character_entered"):
        await slack.type_home(ALICE, "hi")
    with pytest.raises(AssertionError, match="dispatch_action"):
        await slack.type_home(ALICE, "hi", action_id="nope")
    async with app_socket(slack) as ws:
        await slack.type_home(ALICE, "hi", press_enter=True)
        assert (await envelope(ws))["payload"]["actions"][0]["value"] == "hi"


async def test_views_publish_checks_input_blocks(slack: FakeSlack):
    element = COMPOSER["element"]
    for bad in ({**COMPOSER, "label": None},
                {**COMPOSER, "label": {"type": "mrkdwn", "text": "x"}},
                {**COMPOSER, "label": {"type": "plain_text", "text": "x" * 2001}},
                {k: v for k, v in COMPOSER.items() if k != "element"},
                {**COMPOSER, "element": {**element, "max_length": 3001}},
                {**COMPOSER, "element": {**element, "dispatch_action_config": {"trigger_actions_on": ["on_blur"]}}},
                {**COMPOSER, "element": {"type": "file_input", "action_id": "f"}}):
        assert await slack_error(bot(slack).views_publish(user_id=ALICE, view={"type": "home", "blocks": [bad]})) \
            == "invalid_arguments"
    # an element without action_id gets one, as Slack gives one
    bare = {**COMPOSER, "element": {k: v for k, v in element.items() if k != "action_id"}}
    view = (await bot(slack).views_publish(user_id=ALICE, view={"type": "home", "blocks": [bare]}))["view"]
    assert view["blocks"][0]["element"]["action_id"] and set(slack.home_inputs(ALICE)) == {
        view["blocks"][0]["element"]["action_id"]}


# -- DMs -------------------------------------------------------------------------------------


async def test_conversations_open_gives_the_dm(slack: FakeSlack):
    answer = await bot(slack).conversations_open(users=ALICE)
    im = answer["channel"]["id"]
    assert answer["ok"] and im.startswith("D") and im == slack.dm_channel(ALICE)
    assert answer["channel"] == {"id": im} and "already_open" not in answer
    again = await bot(slack).conversations_open(users=[ALICE], return_im=True)
    assert again["channel"]["id"] == im and again["already_open"] is True
    assert again["channel"]["is_im"] is True and again["channel"]["user"] == ALICE
    assert (await bot(slack).conversations_open(channel=im))["channel"]["id"] == im, "resumed by its id"
    assert (await bot(slack).conversations_open(users=BOB))["channel"]["id"] != im
    group = (await bot(slack).conversations_open(users=[ALICE, BOB]))["channel"]["id"]
    assert group == (await bot(slack).conversations_open(users=[BOB, ALICE]))["channel"]["id"]
    assert [c.method for c in slack.calls].count("conversations.open") == 6

    async with app_socket(slack) as ws:
        posted = await bot(slack).chat_postMessage(channel=im, text="Your session is ready")
        echo = await event_of(ws, "message")
    assert posted["ok"] and posted["channel"] == im
    assert slack.bot_messages(im)[0].text == "Your session is ready"
    assert echo["channel"] == im and echo["channel_type"] == "im" and echo["bot_id"] == slack.bot_id


async def test_conversations_open_refuses_what_slack_refuses(slack: FakeSlack):
    slack.hidden_users.add("U0GHOST1")
    assert await slack_error(bot(slack).conversations_open(users="U0GHOST1")) == "user_not_found"
    assert await slack_error(bot(slack).conversations_open(users="C0000001")) == "user_not_found"
    assert await slack_error(bot(slack).conversations_open(users=[f"U0000{i:03d}" for i in range(9)])) \
        == "too_many_users"
    assert await slack_error(bot(slack).conversations_open(channel="C0000001")) == "channel_not_found"
    assert await slack_error(bot(slack).api_call("conversations.open", params={})) == "users_list_not_supplied"


# -- assistant and agent status --------------------------------------------------------------


async def test_assistant_threads_set_status(slack: FakeSlack):
    async with app_socket(slack):
        root = await slack.mention(ALICE, "fix the login bug")
    key = ("C0000001", root)
    client = bot(slack)
    await client.assistant_threads_setStatus(channel_id="C0000001", thread_ts=root, status="is thinking…",
                                             loading_messages=["Reading the repo", "Running the tests"])
    assert slack.assistant_status[key] == "is thinking…"
    # a form body (loading_messages as JSON text), then a clear
    await client.api_call("assistant.threads.setStatus", data={
        "channel_id": "C0000001", "thread_ts": root, "status": "is running tests…",
        "loading_messages": json.dumps(["Still running"])})
    await client.assistant_threads_setStatus(channel_id="C0000001", thread_ts=root, status="")
    assert slack.assistant_status[key] == ""
    assert [e["status"] for e in slack.assistant_status_log] == ["is thinking…", "is running tests…", ""]
    assert slack.assistant_status_log[0]["loading_messages"] == ["Reading the repo", "Running the tests"]
    assert slack.assistant_status_log[1]["loading_messages"] == ["Still running"]
    assert slack.assistant_status_log[2] == {"channel_id": "C0000001", "thread_ts": root, "status": "",
                                             "loading_messages": None}
    assert [c.method for c in slack.calls if c.method.startswith("assistant.")] == ["assistant.threads.setStatus"] * 3

    def set_status(**kwargs: Any) -> Any:
        return client.api_call("assistant.threads.setStatus", json=kwargs)

    assert await slack_error(set_status(channel_id="C0NOPE01", thread_ts=root, status="x")) == "channel_not_found"
    assert await slack_error(set_status(channel_id="C0000001", thread_ts="1.000001", status="x")) == "invalid_thread_ts"
    assert await slack_error(set_status(channel_id="C0000001", status="x")) == "invalid_thread_ts"
    assert await slack_error(set_status(channel_id="C0000001", thread_ts=root)) == "invalid_arguments"
    assert await slack_error(set_status(channel_id="C0000001", thread_ts=root, status="x",
                                        loading_messages=["m"] * 11)) == "invalid_arguments"
    assert len(slack.assistant_status_log) == 3


async def test_agents_sessions_set_status(slack: FakeSlack):
    async with app_socket(slack):
        root = await slack.mention(ALICE, "fix the login bug")
    key = ("C0000001", root)
    client = bot(slack)
    await client.agents_sessions_setStatus(channel_id="C0000001", thread_ts=root, status="processing",
                                           title="api: fix login", initiator_user_id=ALICE)
    assert slack.agent_sessions[key] == {"status": "processing", "title": "api: fix login", "initiator_user_id": ALICE}
    await client.agents_sessions_setStatus(channel_id="C0000001", thread_ts=root, status="active", title="ignored")
    assert slack.agent_sessions[key]["status"] == "active"
    assert slack.agent_sessions[key]["title"] == "api: fix login", "a title only counts when the session is created"
    assert [e["status"] for e in slack.agent_session_log] == ["processing", "active"]
    assert slack.agent_session_log[1]["title"] == "ignored"

    def set_status(**kwargs: Any) -> Any:
        return client.agents_sessions_setStatus(**kwargs)

    for status in ("is thinking…", "", "done"):  # an enum, not display text
        assert await slack_error(set_status(channel_id="C0000001", thread_ts=root, status=status)) == "invalid_arguments"
    assert await slack_error(set_status(channel_id="C0000001", thread_ts=root, status="closed", title="x" * 201)) \
        == "invalid_arguments"
    assert await slack_error(set_status(channel_id="C0NOPE01", thread_ts=root, status="active")) == "channel_not_found"
    assert await slack_error(set_status(channel_id="C0000001", thread_ts="1.000001", status="active")) \
        == "invalid_thread_ts"
    assert len(slack.agent_session_log) == 2
    await set_status(channel_id="C0000001", thread_ts=root, status="closed")
    assert slack.agent_sessions[key]["status"] == "closed"


async def test_an_assistant_thread_in_the_dm(slack: FakeSlack):
    client = bot(slack)
    async with app_socket(slack) as ws:
        channel, thread_ts = await slack.start_assistant_thread(ALICE, context_channel="C0000001")
        started = await event_of(ws, "assistant_thread_started")
        assert channel == slack.dm_channel(ALICE)
        assert started["assistant_thread"] == {
            "user_id": ALICE, "channel_id": channel, "thread_ts": thread_ts,
            "context": {"channel_id": "C0000001", "team_id": slack.team_id, "enterprise_id": None}}
        assert started["event_ts"]
        root = slack.messages[(channel, thread_ts)]
        assert root.subtype == "assistant_app_thread" and not root.bot and slack.bot_messages(channel) == []

        # the app answers with a status; the person writes in the thread
        await client.assistant_threads_setStatus(channel_id=channel, thread_ts=thread_ts, status="is thinking…")
        ts = await slack.user_message(ALICE, "what broke the build?", channel=channel, thread_ts=thread_ts)
        message = await event_of(ws, "message")
        assert message["channel"] == channel and message["channel_type"] == "im" and message["ts"] == ts
        assert message["thread_ts"] == thread_ts and message["user"] == ALICE and "subtype" not in message
        assert slack.assistant_status[(channel, thread_ts)] == "is thinking…"

        # with no context (opened from the DM itself)
        _, second = await slack.start_assistant_thread(BOB)
        event = await event_of(ws, "assistant_thread_started")
        assert event["assistant_thread"]["context"] == {} and event["assistant_thread"]["thread_ts"] == second
    replies = (await client.conversations_replies(channel=channel, ts=thread_ts))["messages"]
    assert [m["ts"] for m in replies] == [thread_ts, ts] and replies[0]["subtype"] == "assistant_app_thread"


async def test_stopping_an_agent_session(slack: FakeSlack):
    client = bot(slack)
    async with app_socket(slack) as ws:
        channel, thread_ts = await slack.start_assistant_thread(ALICE)
        await event_of(ws, "assistant_thread_started")
        await client.agents_sessions_setStatus(channel_id=channel, thread_ts=thread_ts, status="processing")
        done = await client.chat_postMessage(channel=channel, thread_ts=thread_ts, text="Looking…")
        stream = await client.chat_startStream(channel=channel, thread_ts=thread_ts, markdown_text="Working")

        envelope_id = await slack.stop_agent_session(ALICE, channel, thread_ts)
        stopped = await event_of(ws, "agent_session_stopped")
    assert slack.sent_envelopes[-1][0] == envelope_id
    assert stopped == {"type": "agent_session_stopped", "channel": channel, "thread_ts": thread_ts, "user": ALICE,
                       "streaming_message_ts": [stream["ts"]], "event_ts": stopped["event_ts"]}
    assert done["ts"] not in stopped["streaming_message_ts"]
    assert await slack_error(client.chat_appendStream(channel=channel, ts=stream["ts"], markdown_text="more")) \
        == "message_not_in_streaming_state", "Slack stopped the stream"
    assert slack.agent_sessions[(channel, thread_ts)]["status"] == "processing", "the app moves the status on"

    async with app_socket(slack) as ws:
        await slack.stop_agent_session(ALICE, channel, thread_ts)
        assert (await event_of(ws, "agent_session_stopped"))["streaming_message_ts"] == []


# -- message shortcuts and permalinks --------------------------------------------------------


async def test_a_message_shortcut(slack: FakeSlack):
    async with app_socket(slack) as ws:
        root = await slack.user_message(ALICE, "the login page 500s")
        reply = await slack.user_message(BOB, "since this morning", thread_ts=root)
        await envelope(ws)
        await envelope(ws)

        envelope_id = await slack.shortcut(BOB, ("C0000001", reply), "start_session")
        env = await envelope(ws)
        assert env["envelope_id"] == envelope_id and env["type"] == "interactive"
        payload = env["payload"]
        assert payload["type"] == "message_action" and payload["callback_id"] == "start_session"
        assert payload["trigger_id"] and payload["response_url"].startswith("http") and payload["action_ts"]
        assert payload["message_ts"] == reply and payload["user"]["id"] == BOB
        assert payload["channel"] == {"id": "C0000001", "name": "general"}
        assert payload["team"]["id"] == slack.team_id
        message = payload["message"]
        assert message["type"] == "message" and message["user"] == BOB and message["text"] == "since this morning"
        assert message["ts"] == reply and message["thread_ts"] == root

        await slack.shortcut(ALICE, slack.messages[("C0000001", root)], "start_session")
        message = (await envelope(ws))["payload"]["message"]
        assert message["ts"] == root and "thread_ts" not in message

        dm = slack.dm_channel(ALICE)
        posted = await bot(slack).chat_postMessage(channel=dm, text="Session ready")
        await envelope(ws)  # the echo
        await slack.shortcut(ALICE, (dm, posted["ts"]), "start_session")
        payload = (await envelope(ws))["payload"]
    assert payload["channel"] == {"id": dm, "name": "directmessage"} and payload["message"]["bot_id"] == slack.bot_id


async def test_chat_get_permalink(slack: FakeSlack):
    async with app_socket(slack):
        root = await slack.user_message(ALICE, "the login page 500s")
        reply = await slack.user_message(BOB, "since this morning", thread_ts=root)
    link = await bot(slack).chat_getPermalink(channel="C0000001", message_ts=root)
    assert link["ok"] and link["channel"] == "C0000001"
    assert link["permalink"] == f"https://fake.slack.test/archives/C0000001/p{root.replace('.', '')}"
    threaded = (await bot(slack).chat_getPermalink(channel="C0000001", message_ts=reply))["permalink"]
    assert threaded == f"https://fake.slack.test/archives/C0000001/p{reply.replace('.', '')}" \
                       f"?thread_ts={root}&cid=C0000001"
    assert link["permalink"].startswith((await bot(slack).auth_test())["url"])
    assert slack.calls_to("chat.getPermalink")[0].params == {"channel": "C0000001", "message_ts": root}

    assert await slack_error(bot(slack).chat_getPermalink(channel="C0000001", message_ts="1.000001")) \
        == "message_not_found"
    assert await slack_error(bot(slack).chat_getPermalink(channel="C0NOPE01", message_ts=root)) == "channel_not_found"
