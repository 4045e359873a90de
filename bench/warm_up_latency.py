"""Warm-up while typing, side by side in one run, each mode starting from an empty warm pool:
submit → the first tool result (a `read_file`) when

- the person typed in the Home tab's composer 3 s before pressing *Start* (the typing warm-up),
- nothing was warm (a cold start from the repo's image),
- the repo's pool had a container ready (a pool hit: `pool_size: 1`).

`serve` runs in its own process with the Slack and OpenAI fakes; both ends of every figure are
read from this process's clock (the envelope sent, the model request that carries the tool result).
Target: the typing warm-up within 1.2x of a pool hit, and at least 5x faster than cold.

Run: `.venv/bin/python -m bench.warm_up_latency [--sessions 10] [--lead 3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.mention_latency import pct
from bench.sandbox_latency import Serve, scripted
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.sandbox_fixtures import remove_created_since, repos_yaml, serve_git_remote

USER = "U0BENCH1"


async def to_tool_result(slack: FakeSlack, model: FakeOpenAI, submit: object) -> float:
    """Seconds from the submitting envelope to the model request carrying the first tool result."""
    seen, mark = len(model.requests), len(slack.sent_envelopes)
    await submit  # type: ignore[misc]
    sent = slack.sent_envelopes[mark][1]
    await slack.wait_for(lambda: len(model.requests) >= seen + 2, timeout=120)
    return model.requests[seen + 1].at - sent


async def figures(n: int, lead: float) -> dict[str, list[float]]:
    slack, model = FakeSlack(), FakeOpenAI()
    model.default = scripted
    await slack.start()
    await model.start()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with serve_git_remote(tmp) as remote:
            async def run(label: str, pool_size: int, typing: bool) -> None:
                repos = repos_yaml(tmp / f"{label}.yml", remote.url, pool_size=pool_size)
                times: list[float] = []
                async with Serve(tmp / label.replace(" ", "-"), slack, model, repos_config=repos,
                                 sandbox_idle_timeout=5, warm_up_ttl=60):
                    await asyncio.wait_for(slack.connected.wait(), 60)
                    await asyncio.sleep(6)  # the image build (and the pool's fill)
                    await slack.open_home(USER)
                    await slack.wait_for(lambda: slack.home_views.get(USER), timeout=30)
                    for i in range(n + 1):  # the first one is a warm-up of the service itself
                        if typing:
                            await slack.type_home(USER, "what does the README")
                            await asyncio.sleep(lead)
                            await slack.type_home(USER, "what does the README say?")
                            took = await to_tool_result(slack, model, slack.click_home(USER, "home_start"))
                        else:
                            took = await to_tool_result(slack, model, slack.mention(USER, "what does the README say?"))
                        if i:
                            times.append(took)
                        await asyncio.sleep(2.0)  # the pool refills (pool hit), the last container settles
                slack.connected.clear()
                results[label] = times

            since = time.time()
            try:
                await run("typing warm-up", 0, typing=True)
                await run("cold start", 0, typing=False)
                await run("pool hit", 1, typing=False)
            finally:
                import docker

                remove_created_since(docker.from_env(), since)
    await slack.stop()
    await model.stop()
    return results


async def main(n: int, lead: float) -> None:
    results = await figures(n, lead)
    print(f"submit → first tool result ({n} sessions each; serve in its own process; typing {lead:g} s before submit):")
    for label, values in results.items():
        ms = [v * 1000 for v in values]
        print(f"  {label:16} p50 {statistics.median(ms):7.1f} ms   p95 {pct(ms, 95):7.1f} ms")
    warm = statistics.median(results["typing warm-up"])
    pool = statistics.median(results["pool hit"])
    cold = statistics.median(results["cold start"])
    print(f"  typing warm-up / pool hit: {warm / pool:.2f}x (target ≤ 1.2x); cold / typing warm-up: {cold / warm:.1f}x "
          "(target ≥ 5x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--lead", type=float, default=3.0, help="seconds of typing before submit")
    args = parser.parse_args()
    asyncio.run(main(args.sessions, args.lead))
