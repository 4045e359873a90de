"""A tool's output reaches the model capped (head and tail, with a marker) and binary output is
described instead of shown; the session goes on."""

from __future__ import annotations

import asyncio

from bot.agent.tools import MAX_OUTPUT_CHARS, cap_output
from bot.service import Service
from tests.conftest import make_settings, service_env
from tests.fakes.openai import Reply, ToolCall
from tests.slack_threads import all_done


def test_long_output_keeps_its_head_and_tail():
    text = "HEAD" + "a" * 60_000 + "MIDDLE" + "b" * 60_000 + "TAIL"
    shown = cap_output(text)
    assert shown.startswith("HEAD") and shown.endswith("TAIL") and "MIDDLE" not in shown
    assert len(shown) < MAX_OUTPUT_CHARS + 300 and "characters left out here" in shown
    assert cap_output("short") == "short"
    assert cap_output("\x00\x01" * 10).startswith("[binary output of 20 characters")


async def test_the_model_sees_the_capped_output_and_the_turn_goes_on(tmp_path, slack, model):
    env = service_env(tmp_path / "data", slack, model, plugins="tests.plugins:LongOutput")
    svc = Service(make_settings(env))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        model.add(Reply(tool_calls=[ToolCall("dump", {}), ToolCall("dump", {"binary": True})]), Reply(text="Seen."))
        root = await slack.mention("U0ALICE1", "dump it")
        await slack.wait_for(lambda: all_done(slack, root, 1))
        long, binary = [m["content"] for m in model.requests[-1].body["messages"] if m["role"] == "tool"]
        assert long.startswith("HEAD") and long.endswith("TAIL") and "MIDDLE" not in long
        assert binary == "[binary output of 3,000 characters, not shown]"
    finally:
        await svc.stop()
