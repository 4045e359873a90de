"""Usage accounting: every model call's tokens (as reported, or estimated and marked), its cost
from MODEL_PRICES, summed per turn and per session, and the turn's footer in Slack and on the page."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from bot.config import ConfigError, load_settings
from bot.events import ModelCall
from bot.service import Service
from bot.slack.messages import thread_surface
from tests.conftest import make_settings, service_env
from tests.fakes.openai import Reply, ToolCall
from tests.slack_threads import all_done, turns

PRICES = '{"gpt-5": {"input": 1.0, "cached_input": 0.5, "output": 10.0}}'
USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 40}}


async def start(tmp_path, slack, model, **extra) -> Service:  # type: ignore[no-untyped-def]
    svc = Service(make_settings(service_env(tmp_path / "data", slack, model, **extra)))
    await svc.start()
    await asyncio.wait_for(slack.connected.wait(), 10)
    return svc


async def test_reported_usage_is_summed_per_turn_and_session_and_priced(tmp_path, slack, model):
    svc = await start(tmp_path, slack, model, model_prices=PRICES)
    try:
        model.add(Reply(tool_calls=[ToolCall("no_such_tool", {})], usage=USAGE), Reply(text="Done.", usage=USAGE))
        root = await slack.mention("U0ALICE1", "count for me")
        await slack.wait_for(lambda: all_done(slack, root, 1))
        session = await svc.sessions.find_by_surface(thread_surface("C0000001", root))
        view = await svc.sessions.view(session.id)
        reported = model.reported_usage
        assert len(reported) == 2
        assert view.totals.usage.prompt_tokens == sum(u["prompt_tokens"] for u in reported) == 200
        assert view.totals.usage.completion_tokens == sum(u["completion_tokens"] for u in reported) == 40
        assert view.totals.usage.cached_tokens == 80 and not view.totals.usage.estimated
        assert view.totals.usage.cost_usd == pytest.approx(2 * (60 * 1.0 + 40 * 0.5 + 20 * 10.0) / 1e6)
        assert all(r.body.get("stream_options") == {"include_usage": True} for r in model.requests)
        assert "240 tokens · $0.0006" in turns(slack, root)[0].head.rendered()
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{svc.web_port}/s/{session.share_token}") as resp:
            assert "240 tokens · $0.0006" in await resp.text()
    finally:
        await svc.stop()


async def test_without_usage_from_the_server_the_counts_are_estimated_and_marked(tmp_path, slack, model):
    svc = await start(tmp_path, slack, model)  # no prices: tokens only
    try:
        model.add(Reply(text="An answer of some length. " * 20))
        root = await slack.mention("U0ALICE1", "estimate")
        await slack.wait_for(lambda: all_done(slack, root, 1))
        session = await svc.sessions.find_by_surface(thread_surface("C0000001", root))
        calls = [e.data for e in svc.sessions.log_of(session.id).read() if isinstance(e.data, ModelCall)]
        assert len(calls) == 1 and calls[0].estimated and calls[0].cost_usd is None
        assert calls[0].completion_tokens == len("An answer of some length. " * 20) // 4 and calls[0].prompt_tokens > 0
        head = turns(slack, root)[0].head.rendered()
        assert f"~{calls[0].prompt_tokens + calls[0].completion_tokens:,} tokens" in head and "$" not in head
    finally:
        await svc.stop()


async def test_the_footer_can_be_hidden(tmp_path, slack, model):
    svc = await start(tmp_path, slack, model, usage_footer="false")
    try:
        model.add(Reply(text="ok", usage=USAGE))
        root = await slack.mention("U0ALICE1", "quiet")
        await slack.wait_for(lambda: all_done(slack, root, 1))
        assert "tokens" not in turns(slack, root)[0].head.rendered()
    finally:
        await svc.stop()


def test_model_prices_are_checked_when_settings_load(tmp_path):
    bad_prices = ("nope", '{"gpt-5": {"input": 1}}', '{"gpt-5": {"input": "x", "output": 1}}',
                  '{"gpt-5": {"input": -1, "output": 1}}')
    for bad in bad_prices:
        with pytest.raises(ConfigError, match="MODEL_PRICES"):
            load_settings(_env_file=None, data_dir=tmp_path, model_prices=bad)
    prices = tmp_path / "prices.yml"
    prices.write_text("gpt-5:\n  input: 1.25\n  output: 10\n")
    assert load_settings(_env_file=None, data_dir=tmp_path, model_prices=str(prices)).model_prices == str(prices)
