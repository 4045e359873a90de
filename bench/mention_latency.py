"""Mention → first model request, and Slack API calls per streamed turn.

The real `hosted-agents serve` runs in its own process; the Slack and OpenAI fakes run here, so
both ends of each measurement are read from this process's monotonic clock:

- overhead: from the moment the mention's envelope is written to the Socket Mode socket to the
  moment the agent's first chat-completions request reaches the model fake (which answers at
  once), over N new sessions, one at a time;
- Slack calls: how many Web API calls one turn costs while the model streams a 2,000-token
  answer, against the 2,000 a naive one-update-per-token renderer would make.

Run: `make bench` or `.venv/bin/python -m bench.mention_latency [--sessions 200]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.conftest import service_env
from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.slack import FakeSlack


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(sessions: int, tokens: int, tokens_per_second: float) -> None:
    slack, model = FakeSlack(echo_bot_messages=True), FakeOpenAI()
    await slack.start()
    await model.start()
    with tempfile.TemporaryDirectory() as tmp:
        # One person sends every mention: lift the per-person limits (their check still runs).
        env = service_env(Path(tmp) / "data", slack, model, log_level="WARNING", max_prompts_per_minute=100_000,
                          max_sessions_per_user=10_000)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "serve", env={"PATH": os.environ["PATH"], **env},
        )
        try:
            await asyncio.wait_for(slack.connected.wait(), 60)
            model.default = lambda r: Reply(text="ok")

            for _ in range(5):  # warm-up: first-request costs (auth.test, connection pools)
                await one_mention(slack, model)
            latencies = [await one_mention(slack, model) for _ in range(sessions)]

            model.add(Reply(text="tok " * tokens, chunk_chars=4, chunk_delay=1 / tokens_per_second))
            before = len(slack.calls)
            root = await slack.mention("U0BENCH1", "stream a long answer")
            started = time.monotonic()
            await slack.wait_for(
                lambda: slack.bot_messages(thread_ts=root) and "Done" in slack.bot_messages(thread_ts=root)[0].rendered(),
                timeout=tokens / tokens_per_second + 60,
            )
            streamed = time.monotonic() - started
            writes = ("chat.postMessage", "chat.update", "chat.startStream", "chat.appendStream", "chat.stopStream")
            turn_calls = [c.method for c in slack.calls[before:] if c.method in writes]  # this turn is all there is
        finally:
            proc.terminate()
            await proc.wait()
    await slack.stop()
    await model.stop()

    ms = [x * 1000 for x in latencies]
    print(f"mention → first model request, {sessions} new sessions (serve in its own process, SQLite):")
    print(f"  p50 {statistics.median(ms):.1f} ms   p95 {pct(ms, 95):.1f} ms   max {max(ms):.1f} ms   (goal: p50 < 20 ms)")
    counts = Counter(turn_calls)
    print(f"Slack Web API writes for one turn streaming {tokens} tokens over {streamed:.1f} s:")
    print(f"  {len(turn_calls)} calls ({', '.join(f'{n} {m}' for m, n in counts.items())}), "
          f"{len(turn_calls) / streamed:.2f} calls/s; one write per token would be {tokens}: "
          f"{tokens / max(1, len(turn_calls)):.0f}x fewer")


async def one_mention(slack: FakeSlack, model: FakeOpenAI) -> float:
    seen = len(model.requests)
    mark = len(slack.sent_envelopes)
    await slack.mention("U0BENCH1", "why is the login page slow?")
    sent_at = slack.sent_envelopes[mark][1]  # the app_mention envelope; Slack sends `message` after it
    await slack.wait_for(lambda: len(model.requests) > seen, timeout=30)
    latency = model.requests[seen].at - sent_at
    await asyncio.sleep(0.03)  # let the turn's own Slack traffic pass before the next mention
    return latency


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--tokens-per-second", type=float, default=200.0)
    args = parser.parse_args()
    asyncio.run(main(args.sessions, args.tokens, args.tokens_per_second))
