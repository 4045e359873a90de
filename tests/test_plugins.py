"""Plugins load from the PLUGINS setting and can block, rewrite, observe, and add context."""

from __future__ import annotations

import asyncio

import pytest

from bot.config import ConfigError
from bot.service import Service
from tests.conftest import make_settings, service_env
from tests.fakes.openai import Reply, ToolCall
from tests.plugins import NoForcePush


async def test_a_plugin_blocks_rewrites_observes_and_adds_context(tmp_path, slack, model):
    svc = Service(make_settings(service_env(tmp_path, slack, model, plugins="tests.plugins:NoForcePush")))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        model.add(
            Reply(tool_calls=[ToolCall("run_command", {"command": "git push --force origin main"}),
                              ToolCall("post_note", {"text": "Plan: push"})]),
            Reply(text="ok"),
        )
        root = await slack.mention("U0ALICE1", "push it")
        await slack.wait_for(lambda: len(model.requests) == 2)
        results = [m["content"] for m in model.requests[1].body["messages"] if m["role"] == "tool"]
        assert results == ["Not run: force pushes are not allowed here", "Posted."]
        await slack.wait_for(lambda: any("Plan: push (checked)" in m.rendered() for m in slack.bot_messages(thread_ts=root)))
        assert NoForcePush.seen[-2:] == ["run_command:False", "post_note:True"]
        assert "House rule: never force-push." in model.requests[0].body["messages"][0]["content"]
    finally:
        await svc.stop()


def test_a_plugin_that_cannot_be_loaded_is_a_clear_config_error(tmp_path, slack, model):
    with pytest.raises(ConfigError, match=r"PLUGINS: cannot load 'tests\.nope:Thing'"):
        Service(make_settings(service_env(tmp_path, slack, model, plugins="tests.nope:Thing")))
