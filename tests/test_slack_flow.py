"""End to end through the real service, the real slack-bolt/slack-sdk and openai clients, and the fakes."""

from __future__ import annotations

from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.slack import FakeSlack
from tests.slack_threads import all_done, pace_breaks, turns


async def test_mention_gets_a_threaded_reply_streamed_in_place(service, slack: FakeSlack, model: FakeOpenAI):
    answer = "The login page loads **three** bundles; see [the trace](https://example.com/t)."
    model.add(Reply(text=answer, chunk_delay=0.1, chunk_chars=3))
    ts = await slack.mention("U0ALICE1", "why is the login page slow?")

    status = await slack.wait_for(lambda: slack.bot_messages(thread_ts=ts), what="a reply in the thread")
    first = status[0]
    assert first.thread_ts == ts
    assert "View session" in first.rendered() and "Stop" in first.rendered()
    assert first.buttons()["view_session"]["url"].startswith("http://agents.test/s/")

    await slack.wait_for(lambda: all_done(slack, ts, 1), what="the turn to finish")
    (turn,) = turns(slack, ts)
    assert turn.head is first and "Done" in first.rendered()
    assert len(turn.after) == 1, "the answer streams into one message below the turn's"
    assert turn.after[0].rendered() == answer, "Slack renders the Markdown as the model wrote it"
    assert [c.method for c in slack.calls_to("chat.startStream")] and slack.calls_to("chat.stopStream")
    assert "<@U0ALICE1> asked: why is the login page slow?" in first.rendered()
    assert "Stop" not in first.rendered()
    assert model.requests[0].last_user_text.endswith("why is the login page slow?")


def done(message) -> bool:
    return any(word in message.rendered() for word in ("Done", "Stopped", ":warning:"))


async def test_follow_ups_while_a_turn_runs_are_answered_in_order_with_their_authors(service, slack, model):
    model.add(Reply(text="First answer, slowly.", chunk_delay=0.1, chunk_chars=2))
    root = await slack.mention("U0ALICE1", "look at the flaky test")
    await slack.wait_for(lambda: model.requests, what="the first model request")
    await slack.user_message("U0BOB001", "also check the CI config", thread_ts=root)
    await slack.user_message("U0CAROL1", "and the docker cache", thread_ts=root)

    await slack.wait_for(lambda: all_done(slack, root, 3), timeout=20, what="three finished turns")
    first, second, third = turns(slack, root)
    assert "<@U0ALICE1> asked: look at the flaky test" in first.rendered()
    assert "<@U0BOB001> asked: also check the CI config" in second.rendered()
    assert "<@U0CAROL1> asked: and the docker cache" in third.rendered()
    assert "Answer to: also check the CI config" in second.rendered()
    assert "Answer to: and the docker cache" in third.rendered()
    assert [r.last_user_text for r in model.requests] == [
        "From <@U0ALICE1>:\nlook at the flaky test",
        "From <@U0BOB001>:\nalso check the CI config",
        "From <@U0CAROL1>:\nand the docker cache",
    ]
    # the conversation carries over: the third request holds the earlier turns
    roles = [m["role"] for m in model.requests[2].body["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]


async def test_stop_cancels_a_slow_turn_and_keeps_the_queue(service, slack, model):
    model.add(Reply(text="word " * 400, chunk_delay=0.05))
    root = await slack.mention("U0ALICE1", "write a long essay")
    status = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]
    await slack.wait_for(lambda: "word" in turns(slack, root)[0].rendered(), what="streaming to start")
    await slack.user_message("U0BOB001", "then summarise it", thread_ts=root)
    await slack.wait_for(lambda: "1 more queued" in status.rendered(), what="the queue to show")

    await slack.click("U0BOB001", status, "stop_turn")  # only queued: not his turn to stop
    refusal = await slack.wait_for(lambda: slack.calls_to("chat.postEphemeral"), what="Bob's refusal")
    assert refusal[0].params["user"] == "U0BOB001" and "Only the person whose request is running" in refusal[0].params["text"]
    await slack.click("U0ALICE1", status, "stop_turn")
    await slack.wait_for(lambda: "Stopped by <@U0ALICE1>" in status.rendered(), timeout=3, what="the stop")
    assert model.disconnected == 1, "the model stream was closed"
    # the queued prompt still runs
    await slack.wait_for(lambda: all_done(slack, root, 2))
    stopped, second = turns(slack, root)
    assert 0 < stopped.rendered().count("word") < 400
    assert "Answer to: then summarise it" in second.rendered()


async def test_clear_queue_drops_waiting_prompts(service, slack, model):
    model.add(Reply(text="slow " * 60, chunk_delay=0.05))
    root = await slack.mention("U0ALICE1", "start")
    status = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]
    await slack.user_message("U0BOB001", "queued one", thread_ts=root)
    await slack.user_message("U0BOB001", "queued two", thread_ts=root)
    await slack.wait_for(lambda: "clear_queue" in status.buttons() and "(2)" in status.buttons()["clear_queue"]["text"]["text"])
    await slack.click("U0ALICE1", status, "clear_queue")
    await slack.wait_for(lambda: done(status), timeout=10)
    await service.sessions.close()  # let nothing else run, then look
    assert len(model.requests) == 1
    assert len(turns(slack, root)) == 1


async def test_a_stale_or_forged_stop_button_gets_a_clear_ephemeral_answer(service, slack, model):
    import copy

    model.add(Reply(text="short answer", ttft=1.5))  # outlasts the first post, which has a Stop button
    root = await slack.mention("U0ALICE1", "quick one")
    status = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]
    stale = copy.deepcopy(status)  # what a client that has not refreshed still shows
    await slack.wait_for(lambda: done(status))
    await slack.click("U0ALICE1", stale, "stop_turn")
    await slack.wait_for(lambda: slack.calls_to("chat.postEphemeral"), what="an ephemeral answer")
    assert slack.calls_to("chat.postEphemeral")[-1].params["text"] == "Nothing is running in this session right now."

    stale.buttons()["stop_turn"]["value"] = "../../etc/passwd"
    await slack.click("U0BOB001", stale, "stop_turn")
    await slack.wait_for(lambda: len(slack.calls_to("chat.postEphemeral")) == 2)
    assert "can't find that session" in slack.calls_to("chat.postEphemeral")[-1].params["text"]


async def test_a_redelivered_event_and_the_double_delivery_of_a_mention_are_handled_once(service, slack, model):
    ts = slack.next_ts()
    event = {"type": "app_mention", "user": "U0ALICE1", "text": f"<@{slack.bot_user_id}> hello", "ts": ts,
             "channel": "C0000001", "event_ts": ts}
    await slack.send_event(event, event_id="Ev0DUPLICATE")
    await slack.send_event(event, event_id="Ev0DUPLICATE", retry_attempt=1)  # Slack's retry
    await slack.send_event({**event, "type": "message", "channel_type": "channel"})  # the same message again
    await slack.wait_for(lambda: slack.bot_messages(thread_ts=ts) and done(slack.bot_messages(thread_ts=ts)[0]))
    await slack.mention("U0BOB001", "a later mention")  # everything before it has been processed
    await slack.wait_for(lambda: len(model.requests) == 2)
    assert len(turns(slack, ts)) == 1
    assert [r.last_user_text for r in model.requests].count("From <@U0ALICE1>:\nhello") == 1


async def test_a_direct_message_works_like_a_mention(service, slack, model):
    ts = await slack.user_message("U0ALICE1", "what does the deploy script do?", channel="D0000001")
    reply = (await slack.wait_for(lambda: slack.bot_messages(channel="D0000001", thread_ts=ts)))[0]
    await slack.wait_for(lambda: done(reply))
    assert "Answer to: what does the deploy script do?" in reply.rendered()


async def test_bots_and_unrelated_threads_are_ignored(service, slack, model):
    root = await slack.mention("U0ALICE1", "hello")
    await slack.wait_for(lambda: slack.bot_messages(thread_ts=root) and done(slack.bot_messages(thread_ts=root)[0]))
    await slack.send_event({"type": "message", "subtype": "bot_message", "bot_id": "B0OTHER1", "text": "deploy finished",
                            "ts": slack.next_ts(), "channel": "C0000001", "thread_ts": root})
    await slack.send_event({"type": "message", "user": "U0OTHER1", "bot_id": "B0OTHER1", "text": "beep",
                            "ts": slack.next_ts(), "channel": "C0000001", "thread_ts": root})
    other_root = await slack.user_message("U0BOB001", "lunch?")
    await slack.user_message("U0CAROL1", "sure", thread_ts=other_root)
    await slack.mention("U0BOB001", "a later mention")
    await slack.wait_for(lambda: len(model.requests) == 2)
    assert [r.last_user_text for r in model.requests] == ["From <@U0ALICE1>:\nhello", "From <@U0BOB001>:\na later mention"]
    assert slack.bot_messages(thread_ts=other_root) == []


async def test_empty_and_oversized_mentions_get_a_clear_reply_and_no_session(service, slack, model):
    empty = await slack.user_message("U0ALICE1", f"<@{slack.bot_user_id}>   ")
    reply = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=empty)))[0]
    assert "Tell me what you need" in reply.text

    huge = await slack.mention("U0ALICE1", "x" * 40_000)
    reply = (await slack.wait_for(lambda: slack.calls_to("chat.postEphemeral")))[0].params
    assert "40,000 characters" in reply["text"] and "20,000" in reply["text"]
    assert (reply["user"], reply["thread_ts"]) == ("U0ALICE1", huge), "told privately, in the thread"
    assert model.requests == [] and not slack.bot_messages(thread_ts=huge)


async def test_unknown_and_malformed_input_is_ignored_and_the_service_keeps_working(service, slack, model):
    await slack.send_event({"type": "reaction_added", "user": "U0ALICE1", "reaction": "eyes"})
    await slack.send_event({"type": "team_join", "user": {"id": "U0NEW001"}})
    await slack.send_event({"type": "app_mention"})  # no user, channel, ts
    await slack.send_event({"type": "app_mention", "user": "U0ALICE1", "channel": "C0000001", "ts": "not-a-ts", "text": "x"})
    await slack.send_event({"type": "app_mention", "user": ["U1"], "channel": {"id": 1}, "ts": 5, "text": None})
    await slack.send_envelope("events_api", "not an object")
    await slack.send_envelope("events_api", {"type": "event_callback", "event": "nope"})
    await slack.send_envelope("interactive",
                              {"type": "block_actions", "actions": [{"action_id": "stop_turn", "value": "../../etc"}]})
    await slack.send_envelope("slash_commands", {"command": "/unknown"})
    await slack.send_envelope("mystery_type", {"x": 1})
    await slack.send_raw("this is not json")
    await slack.send_raw('{"type": "disconnect_maybe", "envelope_id": 7}')

    root = await slack.mention("U0ALICE1", "still there?")
    reply = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]
    await slack.wait_for(lambda: done(reply))
    assert "Answer to: still there?" in reply.rendered()
    assert len(model.requests) == 1


async def test_model_errors_become_a_clear_message_and_the_session_lives_on(service, slack, model):
    model.add(Reply(status=500, error="upstream exploded"), Reply(garbage=True, text="partial"), Reply(status=401))
    root = await slack.mention("U0ALICE1", "first")
    await slack.user_message("U0ALICE1", "second", thread_ts=root)
    await slack.user_message("U0ALICE1", "third", thread_ts=root)
    await slack.user_message("U0ALICE1", "fourth", thread_ts=root)
    await slack.wait_for(lambda: all_done(slack, root, 4), timeout=20)
    first, second, third, fourth = (t.rendered() for t in turns(slack, root))
    assert "The model service answered with an error (HTTP 500): upstream exploded." in first
    assert ":warning:" in second and "Traceback" not in second
    assert "refused our API key (HTTP 401)" in third
    assert "Answer to: fourth" in fourth and "Done" in fourth


async def test_a_silent_model_times_out_with_a_clear_message(tmp_path, slack, model):
    from bot.service import Service
    from tests.conftest import make_settings, service_env

    svc = Service(make_settings(service_env(tmp_path, slack, model, model_timeout=0.5)))
    await svc.start()
    try:
        model.add(Reply(hang=True), Reply(hang=True))  # a stalled stream is asked once more, then the turn ends
        root = await slack.mention("U0ALICE1", "are you there?")
        reply = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]
        await slack.wait_for(lambda: done(reply), timeout=10)
        assert "did not answer for 0.5 s" in reply.rendered()
    finally:
        await svc.stop()


async def test_updates_are_coalesced_to_one_a_second_and_429s_are_retried(service, slack, model):
    model.add(Reply(text="token " * 600, chunk_delay=0.005, chunk_chars=6))  # about 3.5 s of streaming
    slack.stream_error = "method_not_supported"  # in-place edits (streams: tests/test_slack_render.py)
    slack.rate_limit["chat.update"] = 1
    root = await slack.mention("U0ALICE1", "stream a lot")
    status = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root)))[0]
    await slack.wait_for(lambda: done(status), timeout=20)
    assert status.rendered().count("token ") == 600, "the final state landed despite the 429"
    calls = [c.at for c in slack.calls_to("chat.update")]
    assert len(calls) >= 3
    assert not pace_breaks(calls), f"updates closer than one a second: {pace_breaks(calls)}"
    assert len(calls) <= 8


async def test_tools_run_and_bad_tool_calls_go_back_to_the_model(service, slack, model):
    from tests.fakes.openai import ToolCall

    model.add(
        Reply(tool_calls=[ToolCall("post_note", {"text": "Plan: read the logs, then fix."})]),
        Reply(tool_calls=[ToolCall("post_note", "{not json"), ToolCall("launch_rockets", {})]),
        Reply(text="All done."),
    )
    root = await slack.mention("U0ALICE1", "fix the bug")
    await slack.wait_for(lambda: len(model.requests) == 3 and slack.bot_messages(thread_ts=root)
                         and done(slack.bot_messages(thread_ts=root)[0]), timeout=10)
    messages = [m.rendered() for m in slack.bot_messages(thread_ts=root)]
    assert any(":memo: Plan: read the logs, then fix." in m for m in messages)
    assert any("All done." in m for m in messages)
    tool_results = [m["content"] for m in model.requests[2].body["messages"] if m["role"] == "tool"]
    assert tool_results[0] == "Posted."
    assert tool_results[1].startswith("Arguments are not valid JSON")
    assert tool_results[2].startswith("Unknown tool 'launch_rockets'. Available tools: edit_file, git_diff,")
