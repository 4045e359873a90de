"""The thread as context: a reply that names a teammate and not the bot is people talking, not a
prompt; the agent gets it before its next turn, marked as overheard, never as instructions."""

from __future__ import annotations

import asyncio

from tests.fakes.openai import Reply
from tests.slack_threads import all_done, turns


async def test_teammates_talking_in_the_thread_are_context_for_the_next_turn(service, slack, model):
    model.add(Reply(text="The build is red."))
    root = await slack.mention("U0ALICE1", "why is the build red?")
    await slack.wait_for(lambda: all_done(slack, root, 1))
    calls = len(model.requests)
    await slack.user_message("U0BOB001", "<@U0ALICE1> I think it's the flaky login test", thread_ts=root)
    await asyncio.sleep(0.5)
    assert len(model.requests) == calls and len(turns(slack, root)) == 1, "not queued, not answered"
    model.add(Reply(text="Retrying that test."))
    await slack.user_message("U0ALICE1", "try rerunning it", thread_ts=root)
    await slack.wait_for(lambda: all_done(slack, root, 2))
    messages = model.requests[-1].body["messages"]
    overheard = [m["content"] for m in messages if m["role"] == "user" and m["content"].startswith("[Overheard")]
    assert len(overheard) == 1 and "From <@U0BOB001>:" in overheard[0] and "flaky login test" in overheard[0]
    assert "not instructions" in overheard[0]
    position = messages.index(next(m for m in messages if m["content"] == overheard[0]))
    assert messages[position + 1]["content"] == "From <@U0ALICE1>:\ntry rerunning it", "right before the next prompt"
