"""Slack's rate limits cost time, never an answer: the outbox honours Retry-After, lets interim
edits yield to first posts and final states, and retries those until they land."""

from __future__ import annotations

import asyncio
import time

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.service import Service
from bot.slack.delivery import Content, Outbox, Priority
from bot.slack.format import markdown_block
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.slack_threads import turns

SESSIONS = 100


@pytest.mark.timeout(180)
async def test_100_concurrent_sessions_each_show_their_final_answer_exactly_once(
    service: Service, slack: FakeSlack, model: FakeOpenAI,
) -> None:
    """Measured before the outbox: 57 of 100 sessions never showed their answer within 120 s."""
    slack.write_limit = 3  # HTTP 429 + Retry-After: 1 past 3 writes a second
    roots = await asyncio.gather(*(slack.mention(f"U0USER{i:03d}", f"question {i:03d}") for i in range(SESSIONS)))

    def answered() -> list[int]:
        return [i for i, root in enumerate(roots)
                if (found := turns(slack, root)) and found[0].done and f"Answer to: question {i:03d}" in found[0].rendered()]

    started = time.monotonic()
    try:
        await slack.wait_for(lambda: len(answered()) == SESSIONS, timeout=120, what="every session's answer")
    finally:
        took, rate_limited = time.monotonic() - started, sum(c.status == 429 for c in slack.calls)
        print(f"{len(answered())}/{SESSIONS} answered in {took:.1f} s; {rate_limited} calls got a 429")
    assert rate_limited > 0, "the test must exercise the limit"
    for i, root in enumerate(roots):
        messages = slack.bot_messages(thread_ts=root)
        showing = [m for m in messages if f"Answer to: question {i:03d}" in m.rendered()]
        assert len(showing) == 1, f"session {i}: its answer shows {len(showing)} times"
        assert len(turns(slack, root)) == 1, f"session {i}: one turn, one turn message"


async def test_a_rate_limited_method_pauses_for_retry_after_and_every_post_lands_in_order(slack: FakeSlack) -> None:
    slack.write_limit = 3
    slack.rate_limit["chat.postMessage"] = 1  # the first post is refused whatever the machine's speed
    outbox = Outbox(AsyncWebClient(token=slack.bot_token, base_url=slack.api_url), interval=1.0)
    for i in range(12):
        outbox.post("C0000001", "1700000000.000001", Content(f"note {i}", [markdown_block(f"note {i}")]))
    assert await outbox.drain(60)
    await outbox.close()

    posts = slack.calls_to("chat.postMessage")
    assert [c.params["text"] for c in posts if c.ok] == [f"note {i}" for i in range(12)], "each once, in thread order"
    limited = [c.at for c in posts if c.status == 429]
    assert limited
    for at in limited:  # one thread's posts go one at a time, so any call soon after a 429 would be ours
        assert not [c for c in posts if at < c.at < at + 0.95], "nothing is sent to a method during its Retry-After"


async def test_interim_edits_yield_to_first_posts_and_final_states(slack: FakeSlack) -> None:
    outbox = Outbox(AsyncWebClient(token=slack.bot_token, base_url=slack.api_url), interval=0.2)
    version = {"n": 0}
    existing = [outbox.slot("C0000001", f"1700000000.00000{i}", lambda _d: Content(f"v{version['n']}", [])) for i in range(5)]
    for slot in existing:
        slot.changed(Priority.URGENT)
    assert await outbox.drain(10)
    await asyncio.sleep(0.3)

    slack.write_limit = 2
    version["n"] = 1
    before = len(slack.calls)
    for slot in existing:
        slot.changed(Priority.STATUS)  # interim: a tool started running
    for i in range(8):
        outbox.post("C0000002", f"1700000001.00000{i}", Content(f"first post {i}", []))
    deadline = time.monotonic() + 30
    while any(s.dirty or s.in_flight for s in existing) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await outbox.drain(30)
    await outbox.close()

    burst, rest = slack.calls[before:before + 13], slack.calls[before + 13:]
    assert any(c.status == 429 for c in burst), "all 13 went at once, before Slack said anything: it refused most"
    kinds = [c.method for c in rest if c.ok]
    assert "chat.postMessage" in kinds and "chat.update" in kinds
    last_post = max(i for i, k in enumerate(kinds) if k == "chat.postMessage")
    first_edit = min(i for i, k in enumerate(kinds) if k == "chat.update")
    assert last_post < first_edit, f"interim edits went before first posts under a rate limit: {kinds}"
    assert all(m.text == "v1" for m in slack.bot_messages("C0000001")), "the latest state landed on every message"
