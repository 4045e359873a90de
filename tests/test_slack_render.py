"""Answers in Slack threads, end to end through the real service: Slack's own Markdown, streamed
(or edited in place where streaming is refused), whole at any length, and never a ping."""

from __future__ import annotations

import json

import pytest

from bot.service import Service
from bot.slack.delivery import WRITES
from tests.fakes.openai import FakeOpenAI, Reply, ToolCall
from tests.fakes.slack import FakeSlack
from tests.slack_threads import all_done, content_lines, pace_breaks, turns
from tests.test_formatting import AS_WRITTEN


@pytest.fixture(params=["streamed", "edited"])
def mode(request: pytest.FixtureRequest, slack: FakeSlack) -> str:
    """Run a test with Slack streaming, and with a Slack that refuses it (answers edited in place)."""
    if request.param == "edited":
        slack.stream_error = "method_not_supported"
    return str(request.param)


def refused_writes(slack: FakeSlack) -> list[tuple[str, int, str | None]]:
    return [(c.method, c.status, c.reply.get("error")) for c in slack.calls if c.method in WRITES and not c.ok]


def slow(text: str, seconds: float = 2.5, chunk_chars: int = 8) -> Reply:
    """A reply streamed over about `seconds`: long enough that the renderer streams it."""
    chunks = max(1, len(text) // chunk_chars)
    return Reply(text=text, chunk_chars=chunk_chars, chunk_delay=seconds / chunks)


async def test_markdown_reaches_slack_as_written(service: Service, slack: FakeSlack, model: FakeOpenAI, mode: str) -> None:
    model.add(slow(AS_WRITTEN))
    root = await slack.mention("U0ALICE1", "explain __init__")
    await slack.wait_for(lambda: all_done(slack, root, 1), timeout=20, what="the answer")
    (turn,) = turns(slack, root)
    assert turn.answer() == AS_WRITTEN, "`__init__`, *italic*, code and links exactly as the model wrote them"
    if mode == "streamed":
        assert len(turn.after) == 1 and slack.calls_to("chat.startStream") and slack.calls_to("chat.appendStream")
    else:
        assert turn.after == [] and turn.head.updates, "in the turn's message, edited in place"
    refused = {method for method, *_ in refused_writes(slack)}
    assert refused == (set() if mode == "streamed" else {"chat.startStream"}), "every other write was accepted"


async def test_a_60000_character_answer_reaches_the_thread_whole(
    service: Service, slack: FakeSlack, model: FakeOpenAI, mode: str,
) -> None:
    lines: list[str] = []
    while sum(map(len, lines)) < 60_000:
        n = len(lines)
        lines.append(f"Paragraph {n}: the invoice total is computed per line item, then rounded, then taxed.\n")
        if n % 40 == 0:
            lines += ["```python\n", *[f"def step_{n}_{i}(x):  # part of block {n}\n" for i in range(60)], "```\n"]
    answer = "".join(lines)
    assert len(answer) >= 60_000
    model.add(slow(answer, seconds=3.0, chunk_chars=300))
    root = await slack.mention("U0ALICE1", "write it all down")
    await slack.wait_for(lambda: all_done(slack, root, 1), timeout=60, what="the whole answer")

    (turn,) = turns(slack, root)
    assert content_lines(turn.answer()) == content_lines(answer), "every line, in order, exactly once"
    assert len(turn.messages) >= 6, "split across messages"
    for message in turn.messages:
        markdown = [b["text"] for b in message.blocks if b["type"] == "markdown"]
        assert sum(map(len, markdown)) <= 12_000
        assert sum(1 for m in markdown for line in m.splitlines() if line.startswith("```")) % 2 == 0, "fences balanced"
    refused = {method for method, *_ in refused_writes(slack)}
    assert refused == (set() if mode == "streamed" else {"chat.startStream"}), "every other write was accepted"
    if mode == "streamed":
        assert len(slack.calls_to("chat.startStream")) == len(turn.after) >= 5


async def test_no_slack_token_from_a_prompt_or_the_model_reaches_slack(
    service: Service, slack: FakeSlack, model: FakeOpenAI, mode: str,
) -> None:
    attack = ("Hi <@U0ALICE1>: <!channel> <!here> <!everyone> <!subteam^S0TEAM|@devs> <@U0MALLORY> "
              "<https://evil.example|https://good.example> [https://good.example](https://evil.example/x) & more\n"
              "```\n<!here> in code\n```\n") * 4
    model.add(
        Reply(tool_calls=[ToolCall("post_note", {"text": "<!channel> plan: <!subteam^S0TEAM|@devs> <https://x.example|y>"})]),
        slow(attack),
        Reply(status=500, error="<!channel> upstream <!here> exploded"),
    )
    root = await slack.mention("U0ALICE1", "check <!here> with <@U0MALLORY> <https://evil.example|https://good.example>")
    await slack.wait_for(lambda: all_done(slack, root, 1), timeout=20, what="the first turn")
    await slack.user_message("U0ALICE1", "and fail <!channel>", thread_ts=root)
    await slack.wait_for(lambda: all_done(slack, root, 2), timeout=20, what="the failed turn")

    assert slack.calls
    for call in slack.calls:
        sent = json.dumps(call.params, ensure_ascii=False)
        assert "<!" not in sent, (call.method, sent[:500])
        assert "<@U0MALLORY" not in sent and "<https://evil" not in sent and "<https://x" not in sent, call.method
    first, second = turns(slack, root)
    assert "<@U0ALICE1>" in first.answer(), "people in the session can still be mentioned"
    assert "[https://good.example](https://evil.example/x) (evil.example)" in first.answer()
    assert "upstream" in second.head.rendered() and "&lt;!channel&gt;" in second.head.rendered()


async def test_a_slack_that_refuses_streams_gets_edits_at_most_once_a_second(
    service: Service, slack: FakeSlack, model: FakeOpenAI,
) -> None:
    slack.stream_error = "method_not_supported"
    answer = "word " * 300
    model.add(slow(answer, seconds=3.5, chunk_chars=5), slow("again " * 200, seconds=2.0, chunk_chars=6))
    root = await slack.mention("U0ALICE1", "stream this")
    await slack.wait_for(lambda: all_done(slack, root, 1), timeout=20)
    await slack.user_message("U0ALICE1", "and this", thread_ts=root)
    await slack.wait_for(lambda: all_done(slack, root, 2), timeout=20)

    first, second = turns(slack, root)
    assert first.after == [] and second.after == [], "one message per turn"
    assert first.answer() == answer and second.answer() == "again " * 200
    assert len(slack.calls_to("chat.startStream")) == 1, "a refusal is remembered"
    edits = [c.at for c in slack.calls_to("chat.update") if c.params["ts"] == first.head.ts]
    assert len(edits) >= 3, "the answer grew in place"
    assert not pace_breaks(edits)


async def test_streams_append_at_most_once_a_second_and_a_429_is_retried(
    service: Service, slack: FakeSlack, model: FakeOpenAI,
) -> None:
    answer = "token " * 600
    model.add(slow(answer, seconds=4.0, chunk_chars=6))
    slack.rate_limit["chat.appendStream"] = 1
    root = await slack.mention("U0ALICE1", "stream a lot")
    await slack.wait_for(lambda: all_done(slack, root, 1), timeout=20)

    (turn,) = turns(slack, root)
    (streamed,) = turn.after
    assert streamed.rendered() == answer, "the final text landed despite the 429"
    assert [c.status for c in slack.calls_to("chat.appendStream")].count(429) == 1
    calls = [c.at for c in slack.calls if c.method in WRITES and c.params.get("ts") == streamed.ts]
    assert len(calls) >= 3
    assert not pace_breaks(calls), "one write a second per message, the final one not held back"
    assert len(slack.calls_to("chat.stopStream")) == 1


async def test_a_stream_slack_ended_early_is_finished_by_editing_it(
    service: Service, slack: FakeSlack, model: FakeOpenAI,
) -> None:
    answer = "line of text\n" * 300
    model.add(slow(answer, seconds=4.0, chunk_chars=13))
    root = await slack.mention("U0ALICE1", "a long one")
    streamed = (await slack.wait_for(lambda: [m for m in slack.bot_messages(thread_ts=root) if m.streaming]))[0]
    streamed.streaming = False  # Slack ended it (it expired, or the person stopped it)
    await slack.wait_for(lambda: all_done(slack, root, 1), timeout=20)
    assert turns(slack, root)[0].answer() == answer
    assert any(c.params.get("ts") == streamed.ts for c in slack.calls_to("chat.update"))
