"""Failures outside the model: the turn still ends visibly, and the person always hears back."""

from __future__ import annotations

import asyncio
import sqlite3

from bot.events import Outcome, TurnEnded
from bot.service import Service
from bot.slack.messages import thread_surface
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.slack import FakeSlack


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
