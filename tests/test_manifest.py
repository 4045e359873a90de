"""manifest.yml asks for exactly what the service uses: no missing scope, no spare one."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.fakes.openai import Reply

MANIFEST = yaml.safe_load((Path(__file__).parents[1] / "manifest.yml").read_text())
METHOD_SCOPES = {
    "auth.test": None,
    "apps.connections.open": None,  # the app-level token's connections:write
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write",
}
EVENT_SCOPES = {
    "app_mention": "app_mentions:read",
    "message.channels": "channels:history",
    "message.groups": "groups:history",
    "message.im": "im:history",
}


async def test_manifest_scopes_match_the_calls_and_events_the_service_uses(service, slack, model):
    import copy

    model.add(Reply(text="x " * 100, chunk_delay=0.01), Reply(text="ok"), Reply(text="dm"))
    root = await slack.mention("U0ALICE1", "go")
    status = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]
    stale = copy.deepcopy(status)
    await slack.user_message("U0BOB001", "next", thread_ts=root)
    await slack.click("U0ALICE1", status, "stop_turn")
    await slack.wait_for(lambda: len(slack.bot_messages(thread_ts=root)) == 2 and "Done" in slack.bot_messages(thread_ts=root)[1].rendered())
    await slack.click("U0ALICE1", stale, "stop_turn")
    await slack.wait_for(lambda: slack.calls_to("chat.postEphemeral"))
    await slack.user_message("U0ALICE1", "hi", channel="D0000001")
    await slack.wait_for(lambda: slack.bot_messages(channel="D0000001"))

    used = {c.method for c in slack.calls}
    unknown = used - METHOD_SCOPES.keys()
    assert not unknown, f"add these methods and their scopes to METHOD_SCOPES and manifest.yml: {unknown}"
    events = set(MANIFEST["settings"]["event_subscriptions"]["bot_events"])
    assert events == set(EVENT_SCOPES)
    needed = {METHOD_SCOPES[m] for m in used if METHOD_SCOPES[m]} | {EVENT_SCOPES[e] for e in events}
    assert set(MANIFEST["oauth_config"]["scopes"]["bot"]) == needed
    assert MANIFEST["settings"]["socket_mode_enabled"] is True
    assert MANIFEST["settings"]["interactivity"]["is_enabled"] is True
