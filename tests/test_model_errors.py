"""Model errors end to end, with the OpenAI fake speaking the real streaming protocol to the real
`openai` client: each ends as expected, and the session answers the next prompt in its thread.

What the client does by itself (openai's `_base_client`): it retries 408/409/429/5xx and
connection errors up to MODEL_MAX_RETRIES times, waiting what `retry-after-ms` / `Retry-After`
ask when that is at most two minutes (else it does not retry at all), otherwise 0.5 s, 1 s, 2 s … (up to
8 s) less up to 25 % jitter. The loop adds one thing: a stream that stalls before its first piece is asked once more.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import openai

from bot.agent.model import ModelStalled, describe_error, retry_after
from bot.service import Service
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply, ToolCall
from tests.fakes.slack import FakeSlack
from tests.slack_threads import Turn, all_done, turns


@asynccontextmanager
async def running(tmp_path: Path, slack: FakeSlack, model: FakeOpenAI, **env: Any) -> AsyncIterator[Service]:
    svc = Service(make_settings(service_env(tmp_path / "data", slack, model, **env)))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        yield svc
    finally:
        await svc.stop()


def status_line(turn: Turn) -> str:
    """The turn's status line (the last context block of its own message)."""
    contexts = [e["text"] for b in turn.head.blocks if b.get("type") == "context" for e in b.get("elements", [])]
    return contexts[-1]


async def next_prompt_is_answered(slack: FakeSlack, root: str, count: int) -> None:
    """The session lives on: a plain follow-up in the same thread is answered."""
    await slack.user_message("U0ALICE1", "and now a normal question", thread_ts=root)
    await slack.wait_for(lambda: all_done(slack, root, count), timeout=15, what="the follow-up's answer")
    last = turns(slack, root)[-1]
    assert "Answer to: and now a normal question" in last.rendered() and "Done" in last.rendered()


def tool_messages(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m.get("role") == "tool"]


async def test_invalid_tool_call_json_is_a_tool_error_the_model_sees(tmp_path, slack, model):
    async with running(tmp_path, slack, model):
        model.add(Reply(tool_calls=[ToolCall("post_note", '{"text": "unterminated')]), Reply(text="Fixed my call."))
        root = await slack.mention("U0ALICE1", "note something")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=10)
        assert "Fixed my call." in turns(slack, root)[0].rendered() and "Done" in turns(slack, root)[0].rendered()
        assert len(model.requests) == 2
        [error] = tool_messages(model.requests[1].body)
        assert error.startswith("Arguments are not valid JSON"), error
        asked = model.requests[1].body["messages"][-2]
        assert asked["role"] == "assistant" and asked["tool_calls"][0]["function"]["arguments"] == '{"text": "unterminated'
        await next_prompt_is_answered(slack, root, 2)


async def test_an_unknown_tool_is_a_tool_error_the_model_sees(tmp_path, slack, model):
    async with running(tmp_path, slack, model):
        model.add(Reply(tool_calls=[ToolCall("launch_rockets", {"count": 3})]), Reply(text="No rockets, then."))
        root = await slack.mention("U0ALICE1", "launch")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=10)
        assert "No rockets, then." in turns(slack, root)[0].rendered()
        [error] = tool_messages(model.requests[1].body)
        assert error.startswith("Unknown tool 'launch_rockets'. Available tools:") and "post_note" in error
        await next_prompt_is_answered(slack, root, 2)


async def test_a_429_with_retry_after_is_retried_after_the_stated_delay(tmp_path, slack, model):
    async with running(tmp_path, slack, model, model_max_retries=2):
        model.add(Reply(status=429, error="Rate limit reached for requests", code="rate_limit_exceeded",
                        headers={"Retry-After": "1"}),
                  Reply(text="Worth the wait."))
        root = await slack.mention("U0ALICE1", "hello")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=10)
        assert "Worth the wait." in turns(slack, root)[0].rendered()
        first, second = model.requests[:2]
        assert second.at - first.at >= 1.0, f"retried after {second.at - first.at:.2f} s, not the 1 s asked"
        assert len(model.requests) == 2
        await next_prompt_is_answered(slack, root, 2)


async def test_a_429_asking_for_longer_than_the_client_waits_ends_the_turn_saying_when_to_try_again(tmp_path, slack, model):
    async with running(tmp_path, slack, model, model_max_retries=2):
        model.add(Reply(status=429, error="Rate limit reached for requests", code="rate_limit_exceeded",
                        headers={"Retry-After": "600"}))
        root = await slack.mention("U0ALICE1", "hello")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=10)
        assert len(model.requests) == 1, "the client does not wait ten minutes, nor ask again at once"
        line = status_line(turns(slack, root)[0])
        assert "\n" not in line and "rate limiting" in line and "try again in 10 minutes (after " in line, line
        assert re.search(r"\(after \d\d:\d\d UTC\)", line)
        await next_prompt_is_answered(slack, root, 2)


async def test_a_500_once_is_retried_with_backoff(tmp_path, slack, model):
    async with running(tmp_path, slack, model, model_max_retries=2):
        model.add(Reply(status=500, error="upstream hiccup"), Reply(text="Second time lucky."))
        root = await slack.mention("U0ALICE1", "hello")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=10)
        assert "Second time lucky." in turns(slack, root)[0].rendered()
        first, second = model.requests[:2]
        assert second.at - first.at >= 0.5 * 0.75, "the first retry waits 0.5 s less at most 25 % jitter"
        await next_prompt_is_answered(slack, root, 2)


async def test_a_persistent_500_ends_the_turn_in_one_line_with_the_attempts(tmp_path, slack, model):
    async with running(tmp_path, slack, model, model_max_retries=1):
        model.add(Reply(status=500, error="upstream\nexploded"), Reply(status=500, error="upstream\nexploded"))
        root = await slack.mention("U0ALICE1", "hello")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=10)
        assert len(model.requests) == 2
        line = status_line(turns(slack, root)[0])
        assert line.startswith(":warning: The model service answered with an error (HTTP 500, 2 attempts): "
                               "upstream exploded.")
        assert "#e" in line and "Traceback" not in line and "sk-test" not in line
        await next_prompt_is_answered(slack, root, 2)


async def test_a_stalled_stream_is_asked_once_more_and_a_second_stall_ends_the_turn(tmp_path, slack, model):
    async with running(tmp_path, slack, model, model_timeout="0.4"):
        model.add(Reply(hang=True), Reply(text="Here I am."))
        root = await slack.mention("U0ALICE1", "are you there?")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=10)
        assert "Here I am." in turns(slack, root)[0].rendered() and len(model.requests) == 2
        assert model.requests[1].at - model.requests[0].at >= 0.4, "cancelled after the stall setting"

        model.add(Reply(hang=True), Reply(hang=True))
        began = time.monotonic()
        await slack.user_message("U0ALICE1", "again?", thread_ts=root)
        await slack.wait_for(lambda: all_done(slack, root, 2), timeout=10)
        assert time.monotonic() - began < 5
        line = status_line(turns(slack, root)[1])
        assert line.startswith(":warning: The model did not answer for 0.4 s (asked twice), so this turn was ended.")
        assert len(model.requests) == 4
        await asyncio.sleep(0.1)
        assert model.disconnected >= 3, "the stalled streams were closed, not left open"
        await next_prompt_is_answered(slack, root, 3)


async def test_a_stream_that_stalls_mid_answer_is_not_asked_again(tmp_path, slack, model):
    async with running(tmp_path, slack, model, model_timeout="0.4"):
        model.add(Reply(text="I was saying that", chunk_chars=6, stall_after=3), Reply(text="never asked"))
        root = await slack.mention("U0ALICE1", "talk")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=10)
        line = status_line(turns(slack, root)[0])
        assert "stopped in the middle of its answer (nothing for 0.4 s)" in line, line
        assert len(model.requests) == 1 and "I was saying" in turns(slack, root)[0].rendered(), "what came is kept"
        model.script.clear()
        await next_prompt_is_answered(slack, root, 2)


# -- the one-line messages themselves -----------------------------------------------------------

def _status_error(cls: type[openai.APIStatusError], status: int, body: dict[str, Any],
                  headers: dict[str, str] | None = None, retries: int = 0) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://model.test/v1/chat/completions",
                             headers={"x-stainless-retry-count": str(retries)})
    response = httpx2.Response(status, headers=headers or {}, request=request)
    return cls(f"Error code: {status}", response=response, body=body)


def test_rate_limit_messages_say_when_to_try_again():
    now = time.time()
    short = _status_error(openai.RateLimitError, 429, {"message": "slow down"}, {"retry-after-ms": "2500"}, retries=2)
    assert describe_error(short, 60, now) == "The model provider is rate limiting us (HTTP 429, 3 attempts); try again in 3 s."
    at = email.utils.formatdate(now + 2 * 3600, usegmt=True)
    long = _status_error(openai.RateLimitError, 429, {"message": "slow down"}, {"Retry-After": at})
    assert re.fullmatch(r"The model provider is rate limiting us \(HTTP 429\); try again in 2\.0 hours "
                        r"\(after \d\d:\d\d UTC\)\.", describe_error(long, 60, now))
    unsaid = _status_error(openai.RateLimitError, 429, {"message": "slow down"})
    assert describe_error(unsaid, 60, now).endswith("try again in a minute.")
    quota = _status_error(openai.RateLimitError, 429, {"message": "You exceeded your current quota",
                                                        "code": "insufficient_quota"})
    assert "quota is used up" in describe_error(quota, 60, now)
    assert retry_after(httpx2.Headers({"Retry-After": "soon"})) is None


def test_error_messages_are_one_line_and_mask_what_looks_like_a_key():
    exc = _status_error(openai.BadRequestError, 400, {"message": "Key sk-proj-abcdefghijklmnop\nis not\tallowed"})
    text = describe_error(exc, 60)
    assert text == "The model service answered with an error (HTTP 400): Key sk-… is not allowed."
    assert describe_error(ModelStalled(1, partial=False), 2.5) == "The model did not answer for 2.5 s, so this turn was ended."
