"""Several instances on one PostgreSQL: sessions per minute and first-post latency with 1, 2 and 3
`hosted-agents serve` processes (same run), and the takeover time after kill -9 of an owner.

Each configuration gets a fresh PostgreSQL database and the same Slack and OpenAI fakes (in this
process); Slack spreads events over the instances' Socket Mode connections at random, as Slack
does. A burst of N mentions in N new threads is sent at once; the model answers each after the
same time to first token and streaming time. Measured: sessions per minute (N over the time from
the first mention to the last thread answered), per mention the time from its event to the
first message the bot posts in its thread, and the CPU time all instances used per session
(user + system, from /proc: what coordinating through the database costs, whatever else the
machine is doing). On this 2-core machine the instances share the cores
with the fakes and PostgreSQL, so more instances mean more processes on the same cores: the
figures show the cost of coordination, not added capacity.

Takeover: with three instances, a session's turn is left running (the model never answers) with a
prompt queued behind it; its owner is killed with SIGKILL and the time until the turn is shown
as interrupted in Slack is measured (SESSION_LEASE_TTL bounds it: lapse + one sweep), and until
the queued prompt's answer.

Run: `.venv/bin/python -m bench.instances [--mentions 60] [--ttft 0.3] [--kills 3] [--lease-ttl 10]
[--counts 1,2,3]` (the ratios are against the first count measured).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from bench.mention_latency import pct
from tests.conftest import PG_ADMIN_URL
from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.slack import FakeSlack
from tests.instances import owners, session_by_thread, start_instances, wait_for_ref
from tests.slack_threads import all_done, turns


def asked(model: FakeOpenAI, text: str) -> bool:
    return any(r.last_user_text.endswith(text) for r in model.requests)


def shows(slack: FakeSlack, root: str, text: str) -> bool:
    return any(text in t.rendered() for t in turns(slack, root))


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    name = f"ha_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def burst(count: int, mentions: int, ttft: float, lease_ttl: float
                ) -> tuple[float, list[float], dict[str, int], float]:
    """(sessions per minute, first-post latencies in ms, sessions per instance, instance CPU ms per session)."""
    slack, model = FakeSlack(), FakeOpenAI()
    await slack.start()
    await model.start()
    model.default = lambda r: Reply(text="ok " * 40, ttft=ttft, chunk_delay=0.01, chunk_chars=12)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with fresh_database() as url:
                instances = await start_instances(count, Path(tmp), url, slack, model, session_lease_ttl=lease_ttl,
                                                  max_prompts_per_minute=100_000, max_sessions_per_user=1000,
                                                  log_level="WARNING")
                try:
                    await slack.wait_for(lambda: slack.socket_count == count, timeout=30)
                    slack.spread = True
                    for i in range(3):  # warm-up
                        root = await slack.mention("U0WARM01", f"warm {i}")
                        await slack.wait_for(functools.partial(all_done, slack, root, 1), timeout=60)
                    cpu = sum(i.cpu_seconds() for i in instances)
                    start = time.monotonic()
                    sent: dict[str, float] = {}
                    for i in range(mentions):
                        ts = await slack.mention(f"U0USER{i % 50:03d}", f"task {i}")
                        sent[ts] = time.monotonic()
                    for ts in sent:
                        await slack.wait_for(functools.partial(all_done, slack, ts, 1), timeout=300)
                    elapsed = time.monotonic() - start
                    cpu_ms = (sum(i.cpu_seconds() for i in instances) - cpu) * 1000 / mentions
                    first = {}
                    for call in slack.calls_to("chat.postMessage"):
                        thread = call.params.get("thread_ts")
                        if thread in sent and thread not in first:
                            first[thread] = (call.at - sent[thread]) * 1000
                    spread: dict[str, int] = {}
                    for owner in (await owners(url)).values():
                        spread[owner] = spread.get(owner, 0) + 1
                    return mentions / elapsed * 60, sorted(first.values()), spread, cpu_ms
                finally:
                    await asyncio.gather(*(i.stop() for i in instances))
    finally:
        await slack.stop()
        await model.stop()


async def takeovers(kills: int, lease_ttl: float) -> list[tuple[float, float]]:
    """(seconds to the interrupted turn shown, seconds to the queued prompt answered) per kill."""
    slack, model = FakeSlack(), FakeOpenAI()
    await slack.start()
    await model.start()
    out = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with fresh_database() as url:
                instances = await start_instances(3, Path(tmp), url, slack, model, session_lease_ttl=lease_ttl,
                                                  model_timeout=600, log_level="WARNING")
                alive = list(instances)
                try:
                    await slack.wait_for(lambda: slack.socket_count == 3, timeout=30)
                    slack.spread = True
                    for k in range(kills):
                        model.add_for(f"long job {k}", Reply(text="never", hang=True))
                        root = await slack.mention("U0BOB001", f"long job {k}")
                        await slack.wait_for(functools.partial(asked, model, f"long job {k}"), timeout=30)
                        session_id, _ = await session_by_thread(url, root)
                        await slack.user_message("U0BOB001", f"after {k}", thread_ts=root)
                        await slack.wait_for(functools.partial(shows, slack, root, "1 more queued"), timeout=30)
                        await wait_for_ref(url, session_id)  # its posted message is in the shared log
                        owner = (await owners(url))[session_id]
                        victim = next(i for i in alive if i.name == owner)
                        victim.kill()
                        killed = time.monotonic()
                        await slack.wait_for(functools.partial(shows, slack, root, "interrupted"),
                                             timeout=lease_ttl * 3 + 30)
                        shown = time.monotonic() - killed
                        await slack.wait_for(functools.partial(all_done, slack, root, 2), timeout=60)
                        out.append((shown, time.monotonic() - killed))
                        alive.remove(victim)
                        alive += await start_instances(1, Path(tmp), url, slack, model,
                                                       session_lease_ttl=lease_ttl, model_timeout=600,
                                                       log_level="WARNING", prefix=f"r{k}-")
                finally:
                    await asyncio.gather(*(i.stop() for i in alive))
    finally:
        await slack.stop()
        await model.stop()
    return out


async def main(mentions: int, ttft: float, kills: int, lease_ttl: float, counts: list[int]) -> None:
    print(f"1. a burst of {mentions} mentions in new threads; model: {ttft:g} s to first token, ~0.04 s streaming")
    base = None
    for count in counts:
        per_minute, first, spread, cpu_ms = await burst(count, mentions, ttft, lease_ttl)
        base = base or per_minute
        print(f"   {count} instance(s): {per_minute:7.0f} sessions/min ({per_minute / base:.2f}x of 1)  "
              f"first post p50 {pct(first, 50):6.0f} ms  p95 {pct(first, 95):6.0f} ms  "
              f"instances' CPU {cpu_ms:5.0f} ms/session  sessions per instance {dict(sorted(spread.items()))}")
    print(f"2. kill -9 of a session's owner mid-turn (SESSION_LEASE_TTL={lease_ttl:g} s), {kills} time(s)")
    results = await takeovers(kills, lease_ttl)
    for shown, answered in results:
        print(f"   interrupted turn shown after {shown:5.1f} s, queued prompt answered after {answered:5.1f} s")
    print(f"   median: shown {statistics.median(r[0] for r in results):.1f} s, "
          f"answered {statistics.median(r[1] for r in results):.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mentions", type=int, default=60)
    parser.add_argument("--ttft", type=float, default=0.3)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--lease-ttl", type=float, default=10.0)
    parser.add_argument("--counts", default="1,2,3", help="instance counts to measure, in this order")
    args = parser.parse_args()
    asyncio.run(main(args.mentions, args.ttft, args.kills, args.lease_ttl, [int(c) for c in args.counts.split(",")]))
