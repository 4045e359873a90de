"""What a turn costs in Slack: a quick turn is one message posted once, a slow one shows up
within a second, a final edit is not held back by the one-edit-a-second pace, and every Web API
call of the service shares one HTTP connection pool."""

from __future__ import annotations

import asyncio
from pathlib import Path

from slack_sdk.web.async_client import AsyncWebClient

from bot.service import Service
from bot.slack.delivery import WRITES, Content, Outbox, Priority
from bot.slack.format import markdown_block
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply, ToolCall
from tests.fakes.slack import Call, FakeSlack
from tests.slack_threads import all_done, turns


def writes_in(slack: FakeSlack, root: str) -> list[Call]:
    """The bot's writes to one thread: posts into it and calls on its messages."""
    ours = {m.ts for m in slack.bot_messages(thread_ts=root)}
    return [c for c in slack.calls if c.method in WRITES and (c.params.get("thread_ts") == root or c.params.get("ts") in ours)]


def envelope_sent(slack: FakeSlack, before: int) -> float:
    """When the first envelope after index `before` (the mention) was written to the socket."""
    return slack.sent_envelopes[before][1]


async def test_a_quick_answer_is_one_post_with_the_answer_status_and_buttons(
    service: Service, slack: FakeSlack, model: FakeOpenAI,
) -> None:
    assert service.slack is not None
    service.slack.renderer.first_post_after = 5.0  # a busy machine's slow turn is still "quick" here
    model.add(Reply(text="The login page waits on an **unindexed** query."))
    root = await slack.mention("U0ALICE1", "why is the login page slow?")
    await slack.wait_for(lambda: all_done(slack, root, 1), what="the answer")
    await asyncio.sleep(0.3)  # a late edit, if there were one, has gone by now

    assert [c.method for c in writes_in(slack, root)] == ["chat.postMessage"], "one write, no edit"
    (turn,) = turns(slack, root)
    assert turn.after == [] and turn.answer() == "The login page waits on an **unindexed** query."
    assert "Done" in turn.head.rendered() and "<@U0ALICE1> asked: why is the login page slow?" in turn.head.rendered()
    assert set(turn.head.buttons()) == {"view_session"}, "no Stop button on a finished turn"


async def test_a_slow_turn_shows_its_message_within_a_second(
    service: Service, slack: FakeSlack, model: FakeOpenAI,
) -> None:
    model.add(Reply(text="Found it.", ttft=2.0))
    before = len(slack.sent_envelopes)
    root = await slack.mention("U0ALICE1", "find the slow query")
    first = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root), timeout=5, what="a reply"))[0]
    posted = slack.calls_to("chat.postMessage")[-1]
    assert posted.at - envelope_sent(slack, before) < 1.0, "a person sees a reply within a second"
    assert "Working…" in first.rendered() and "stop_turn" in first.buttons(), "it says it works, and can be stopped"

    await slack.wait_for(lambda: all_done(slack, root, 1), timeout=10, what="the answer")
    assert "Found it." in turns(slack, root)[0].rendered()
    assert [c.method for c in writes_in(slack, root)] == ["chat.postMessage", "chat.update"]


async def test_a_note_posts_the_turns_message_at_once_above_it(
    service: Service, slack: FakeSlack, model: FakeOpenAI,
) -> None:
    assert service.slack is not None
    service.slack.renderer.first_post_after = 30.0  # only the note can make the turn's message show now
    model.add(Reply(tool_calls=[ToolCall("post_note", {"text": "Plan: read the logs."})]), Reply(text="Done reading.", ttft=3.0))
    root = await slack.mention("U0ALICE1", "read the logs")
    await slack.wait_for(lambda: len(slack.bot_messages(thread_ts=root)) == 2, timeout=2.5, what="the note")

    head, note = slack.bot_messages(thread_ts=root)
    assert "stop_turn" in head.buttons(), "the turn still runs; its message came first"
    assert ":memo: Plan: read the logs." in note.rendered()
    await slack.wait_for(lambda: all_done(slack, root, 1), timeout=10, what="the answer")


async def test_a_turn_cut_short_by_a_shutdown_still_leaves_its_message(
    tmp_path: Path, slack: FakeSlack, model: FakeOpenAI,
) -> None:
    svc = Service(make_settings(service_env(tmp_path / "data", slack, model)))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        assert svc.slack is not None
        svc.slack.renderer.first_post_after = 30.0
        model.add(Reply(text="too late", ttft=5.0))
        root = await slack.mention("U0ALICE1", "a long one")
        await slack.wait_for(lambda: model.requests, what="the model request")
    finally:
        await svc.stop()
    (turn,) = turns(slack, root)
    assert "<@U0ALICE1> asked: a long one" in turn.head.rendered(), "a restart finds it and reports the interruption"


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
