"""What a turn costs in Slack: a final edit is not held back by the one-edit-a-second pace, and
every Web API call of the service shares one HTTP connection pool."""

from __future__ import annotations

import asyncio
from pathlib import Path

from slack_sdk.web.async_client import AsyncWebClient

from bot.service import Service
from bot.slack.delivery import WRITES, Content, Outbox, Priority
from bot.slack.format import markdown_block
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.slack_threads import all_done


async def test_a_final_edit_after_one_earlier_write_is_not_held(slack: FakeSlack) -> None:
    """Edits of one message are paced at one a second, but the final one goes at once unless the
    message already had two writes within that second."""
    outbox = Outbox(AsyncWebClient(token=slack.bot_token, base_url=slack.api_url), interval=1.0)
    state = {"text": "working"}
    slot = outbox.slot("C0000001", "1700000000.000001", lambda _d: Content(state["text"], [markdown_block(state["text"])]))
    slot.changed(Priority.URGENT)
    await slack.wait_for(lambda: slot.ts is not None, what="the first post")
    state["text"] = "still working"
    slot.changed(Priority.STATUS)  # interim: waits a second after the post
    await slack.wait_for(lambda: slack.calls_to("chat.update"), timeout=3, what="the interim edit")
    state["text"] = "the answer"
    slot.changed(Priority.URGENT, final=True)  # one write (the interim edit) in the last second: go now
    assert await outbox.drain(5)

    post, interim, final = (c.at for c in slack.calls if c.method in WRITES)
    assert interim - post >= 0.9, "an interim edit waits a second after the post"
    assert final - interim < 0.5, f"the final edit was held {final - interim:.2f} s"

    state["text"] = "the answer, amended"  # a third write within the second: this one waits
    slot.changed(Priority.URGENT, final=True)
    assert await outbox.drain(5)
    await outbox.close()
    amended = slack.calls[-1]
    assert amended.params["text"] == "the answer, amended" and amended.at - interim >= 0.9, "never 3 writes in a second"
    assert slack.bot_messages()[0].text == "the answer, amended"


async def test_every_web_api_call_shares_one_connection_pool_closed_at_shutdown(
    tmp_path: Path, slack: FakeSlack, model: FakeOpenAI,
) -> None:
    svc = Service(make_settings(service_env(tmp_path / "data", slack, model)))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        assert svc.slack is not None
        session = svc.slack.web.session
        assert session is not None and not session.closed
        for i in range(4):  # one at a time: each call can reuse the connection the one before left
            root = await slack.mention("U0ALICE1", f"question {i}")
            await slack.wait_for(lambda r=root: all_done(slack, r, 1), what=f"answer {i}")
            await asyncio.sleep(0.05)
    finally:
        await svc.stop()
    calls = [c for c in slack.calls if c.method != "apps.connections.open"]
    methods = {c.method for c in calls}
    assert {"auth.test", "chat.postMessage"} <= methods, methods
    peers = {c.peer for c in slack.calls}
    assert None not in peers
    assert len(peers) <= 2, f"{len(slack.calls)} calls ({sorted(methods)}) over {len(peers)} connections"
    assert session.closed, "closed at shutdown"
