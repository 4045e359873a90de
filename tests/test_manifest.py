"""manifest.yml asks for exactly what the service uses: no missing scope, no spare one."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.slack import FakeSlack
from tests.slack_threads import all_done

MANIFEST = yaml.safe_load((Path(__file__).parents[1] / "manifest.yml").read_text())
METHOD_SCOPES: dict[str, set[str]] = {
    "auth.test": set(),
    "apps.connections.open": set(),  # the app-level token's connections:write
    "chat.postMessage": {"chat:write"},
    "chat.update": {"chat:write"},
    "chat.postEphemeral": {"chat:write"},
    "chat.startStream": {"chat:write"},
    "chat.appendStream": {"chat:write"},
    "chat.stopStream": {"chat:write"},
    "conversations.info": {"channels:read", "groups:read"},
    "conversations.replies": {"channels:history", "groups:history"},
    "users.info": {"users:read", "users:read.email"},
    "usergroups.users.list": {"usergroups:read"},
    "views.publish": set(),
    "conversations.open": {"im:write"},
    "chat.getPermalink": set(),
    "assistant.threads.setStatus": {"assistant:write"},
    "agents.sessions.setStatus": {"assistant:write", "chat:write"},
    "chat.unfurl": {"links:write"},
}
EVENT_SCOPES: dict[str, str | None] = {
    "app_home_opened": None,
    "assistant_thread_started": "assistant:write",
    "agent_session_stopped": None,
    "link_shared": "links:read",
    "app_mention": "app_mentions:read",
    "message.channels": "channels:history",
    "message.groups": "groups:history",
    "message.im": "im:history",
}


async def test_manifest_scopes_match_the_calls_and_events_the_service_uses(
    tmp_path: Path, slack: FakeSlack, model: FakeOpenAI,
) -> None:
    import asyncio
    import copy
    import json

    from bot.service import Service
    from tests.conftest import make_settings, service_env

    env = service_env(tmp_path, slack, model, repos_config=Path(__file__).parent / "data" / "acme_repos.yml",
                      sandbox_backend="none", allow_usergroups="S0DEVS01")
    slack.usergroups["S0DEVS01"] = ["U0ALICE1", "U0BOB001", "U0CAROL1"]
    service = Service(make_settings(env))
    await service.start()
    await asyncio.wait_for(slack.connected.wait(), 10)
    try:
        await exercise(slack, model, copy, json)
    finally:
        await service.stop()

    used = {c.method for c in slack.calls}
    unknown = used - METHOD_SCOPES.keys()
    assert not unknown, f"add these methods and their scopes to METHOD_SCOPES and manifest.yml: {unknown}"
    events = set(MANIFEST["settings"]["event_subscriptions"]["bot_events"])
    assert events == set(EVENT_SCOPES)
    needed = set().union(*(METHOD_SCOPES[m] for m in used)) | {EVENT_SCOPES[e] for e in events if EVENT_SCOPES[e]}
    needed |= {"commands"} if MANIFEST["features"].get("shortcuts") else set()  # shortcuts need the commands scope
    assert set(MANIFEST["oauth_config"]["scopes"]["bot"]) == needed
    assert MANIFEST["settings"]["socket_mode_enabled"] is True
    assert MANIFEST["settings"]["interactivity"]["is_enabled"] is True
    assert MANIFEST["features"]["app_home"]["home_tab_enabled"] is True
    assert [s["callback_id"] for s in MANIFEST["features"]["shortcuts"]] == ["send_to_agent"]
    assert MANIFEST["features"]["agent_view"]["agent_description"]
    assert MANIFEST["features"]["unfurl_domains"], "session links unfurl on PUBLIC_URL's host"
    assert set(MANIFEST["oauth_config"]["scopes"]["user"]) == {"openid", "profile", "email"}  # Sign in with Slack
    assert "/auth/slack/callback" in MANIFEST["oauth_config"]["redirect_urls"][0]


async def exercise(slack, model, copy, json) -> None:  # type: ignore[no-untyped-def]
    """Every kind of thing the service does in Slack: answer, stop, queue, ask, pick, DM."""
    model.add(Reply(text="x " * 100, chunk_delay=0.01), Reply(text="ok"), Reply(text="dm " * 100, chunk_delay=0.03))
    root = await slack.mention("U0ALICE1", "in acme/api go")
    status = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]
    stale = copy.deepcopy(status)
    await slack.user_message("U0BOB001", "next", thread_ts=root)
    await slack.click("U0ALICE1", status, "stop_turn")
    await slack.wait_for(lambda: all_done(slack, root, 2))
    await slack.click("U0ALICE1", stale, "stop_turn")
    await slack.wait_for(lambda: slack.calls_to("chat.postEphemeral"))
    dm = await slack.user_message("U0ALICE1", "in acme/api hi", channel="D0000001")
    await slack.wait_for(lambda: all_done(slack, dm, 1, channel="D0000001"), what="the DM's answer, streamed")
    assert slack.calls_to("chat.startStream"), "a slow answer is streamed"
    # a mention in someone else's thread that the rules cannot place: the bot asks, someone picks
    chatter = await slack.user_message("U0BOB001", "the numbers look odd today")
    model.add(Reply(text=json.dumps({"repo": "unknown", "confidence": 0.1, "alternatives": [], "reason": ""})))
    await slack.mention("U0CAROL1", "can you check?", thread_ts=chatter)
    ask = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=chatter)))[0]
    await slack.choose("U0BOB001", ask, "pick_repo", "acme/data-pipeline")
    await slack.wait_for(lambda: len(slack.bot_messages(thread_ts=chatter)) == 2)
    # the Home tab (and its sign-in button), and a session link's preview
    await slack.open_home("U0ALICE1")
    await slack.wait_for(lambda: slack.home_views.get("U0ALICE1"))
    await slack.click_home("U0ALICE1", "open_web_view")
    await slack.share_link("U0BOB001", status.buttons()["view_session"]["url"])
    await slack.wait_for(lambda: slack.unfurls)
    # the Home tab's composer and Start (a DM thread), the shortcut, the agent pane
    model.add(Reply(text="home"), Reply(text="shortcut"), Reply(text="pane"))
    await slack.type_home("U0ALICE1", "in acme/api make it faster")
    await slack.click_home("U0ALICE1", "home_start")
    await slack.wait_for(lambda: slack.calls_to("conversations.open"))
    message = await slack.user_message("U0CAROL1", "acme/api: the refunds endpoint 500s")
    await slack.shortcut("U0BOB001", ("C0000001", message), "send_to_agent")
    await slack.wait_for(lambda: slack.calls_to("chat.getPermalink"))
    channel, thread = await slack.start_assistant_thread("U0ALICE1")
    await slack.user_message("U0ALICE1", "in acme/api hello", channel=channel, thread_ts=thread)
    await slack.wait_for(lambda: slack.calls_to("agents.sessions.setStatus"))
