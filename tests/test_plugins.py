"""Plugins load from the PLUGINS setting and can add tools, block, rewrite, observe, and add context."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from typing import Any

import pytest

from bot.agent.hookspecs import Block, ToolCall, ToolContext, hookimpl
from bot.agent.plugins import BuiltinTools, plugin_manager, tool_registry
from bot.config import ConfigError
from bot.events import Event, EventData
from bot.service import Service
from tests.conftest import make_settings, service_env
from tests.fakes.openai import Reply
from tests.fakes.openai import ToolCall as ModelToolCall
from tests.plugins import NoForcePush


async def test_a_plugin_blocks_rewrites_observes_and_adds_context(tmp_path, slack, model):
    svc = Service(make_settings(service_env(tmp_path, slack, model, plugins="tests.plugins:NoForcePush")))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        model.add(
            Reply(tool_calls=[ModelToolCall("run_command", {"command": "git push --force origin main"}),
                              ModelToolCall("post_note", {"text": "Plan: push"})]),
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


async def test_a_plugin_adds_a_tool_the_model_can_call(tmp_path, slack, model):
    svc = Service(make_settings(service_env(tmp_path, slack, model, plugins="tests.plugins:Megaphone")))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        model.add(Reply(tool_calls=[ModelToolCall("shout", {"text": "ship it"})]), Reply(text="done"))
        root = await slack.mention("U0ALICE1", "say it loud")
        await slack.wait_for(lambda: len(model.requests) == 2)
        offered = [t["function"]["name"] for t in model.requests[0].body["tools"]]
        # built-ins first, then plugins' tools; a session without a repository is not offered the workspace tools
        assert offered == ["post_note", "shout"]
        assert [m["content"] for m in model.requests[1].body["messages"] if m["role"] == "tool"] == ["SHIP IT"]
        await slack.wait_for(lambda: any("SHIP IT" in m.rendered() for m in slack.bot_messages(thread_ts=root)))
    finally:
        await svc.stop()


def test_two_tools_of_one_name_are_a_config_error():
    with pytest.raises(ConfigError, match="two tools are named 'shout'"):
        tool_registry(plugin_manager("tests.plugins:Megaphone,tests.plugins:Megaphone", builtins=[BuiltinTools()]))


def test_a_plugin_that_cannot_be_loaded_is_a_clear_config_error(tmp_path, slack, model):
    with pytest.raises(ConfigError, match=r"PLUGINS: cannot load 'tests\.nope:Thing'"):
        Service(make_settings(service_env(tmp_path, slack, model, plugins="tests.nope:Thing")))


class Waits:
    """A before-hook that takes a moment (as the git-sync gate does), and remembers it ran."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    @hookimpl
    async def tool_execute_before(self, call: ToolCall, ctx: ToolContext) -> None:
        await asyncio.sleep(0.05)
        self.finished.append(call.name)


class Refuses:
    def __init__(self, error: Exception | None = None):
        self.error = error

    @hookimpl
    def tool_execute_before(self, call: ToolCall, ctx: ToolContext) -> Block:
        if self.error:
            raise self.error
        return Block("not today")


def context() -> tuple[ToolContext, list[EventData]]:
    emitted: list[EventData] = []

    def emit(data: EventData) -> Event:
        emitted.append(data)
        return Event(len(emitted), time.time(), 1, data)

    return ToolContext("s1", emit), emitted


async def test_when_one_hook_blocks_the_others_that_were_due_still_run():
    waits = Waits()
    # pluggy calls the last registered first: the block comes before the wait
    registry = tool_registry(plugin_manager(builtins=[BuiltinTools(), waits, Refuses()]))
    ctx, emitted = context()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = await registry.call("post_note", '{"text": "hi"}', ctx)
        gc.collect()
    assert outcome.output == "Not run: not today" and not outcome.ok
    assert waits.finished == ["post_note"], "the waiting hook was awaited, not dropped"
    assert emitted == [], "the blocked tool did not run"
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_a_hook_that_raises_ends_the_call_and_leaves_nothing_pending():
    waits = Waits()
    registry = tool_registry(plugin_manager(builtins=[BuiltinTools(), waits, Refuses(RuntimeError("policy down"))]))
    ctx, _ = context()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="policy down"):
            await registry.call("post_note", '{"text": "hi"}', ctx)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_hooks_are_awaited_in_order_and_rewrites_apply_in_turn():
    order: list[str] = []

    class Rewrite:
        def __init__(self, suffix: str, delay: float):
            self.suffix, self.delay = suffix, delay

        @hookimpl
        async def tool_execute_before(self, call: ToolCall, ctx: ToolContext) -> dict[str, Any]:
            await asyncio.sleep(self.delay)
            order.append(self.suffix)
            return {"text": call.arguments["text"] + self.suffix}

    # the slower one is called first, and still finishes (and applies) first
    registry = tool_registry(plugin_manager(builtins=[BuiltinTools(), Rewrite(" b", 0.0), Rewrite(" a", 0.05)]))
    ctx, emitted = context()
    assert (await registry.call("post_note", '{"text": "hi"}', ctx)).output == "Posted."
    assert order == [" a", " b"]
    assert [e.text for e in emitted] == ["hi b"], "each rewrite replaced the arguments in turn; the last one stands"
