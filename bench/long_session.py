"""A better agent in long sessions, measured (issue 15), each comparison in one run:

1. Tokens sent per turn over a 60-turn session whose tool outputs add up to many context windows,
   with the context budget (a 50,000-token window, `CONTEXT_BUDGET=0.8`) and without (a window so
   large it never compacts). Tokens are counted the way the service counts them (tiktoken when it
   has the encoding, else the high estimate) over every agent request of a turn; the fast model's
   summary requests are added to the budgeted side, so the saving is net.
2. Three read-only tool calls (searches over a generated tree, in a real Docker sandbox) in one
   model step, which run at once, against the same three in a step that also posts a note, which
   runs them one after another: wall time from the first start to the last end (plugin hooks).

Run: `.venv/bin/python -m bench.long_session [--turns 60] [--rounds 5]` (part 2 needs Docker).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from bench.mention_latency import pct
from bot.agent.context import TokenCounter
from bot.agent.hookspecs import Tool, ToolContext, hookimpl
from bot.config import CONTEXT_WINDOWS
from bot.service import Service
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply, Request, ToolCall
from tests.fakes.slack import FakeSlack
from tests.slack_threads import all_done

WINDOW = 50_000
SIZES = [1_500, 8_000, 30_000, 3_000, 60_000, 12_000, 500, 25_000]
"""Characters of the checks' output, turn after turn (capped at 30,000 for the model)."""


class Checks:
    """A tool like a test run: output of varying length."""

    class Run:
        name: ClassVar[str] = "run_checks"
        description: ClassVar[str] = "Run the checks."
        writes: ClassVar[bool] = False

        class Args(BaseModel):
            turn: int

        async def run(self, args: Args, ctx: ToolContext) -> str:
            size = SIZES[args.turn % len(SIZES)]
            line = "test_case_%05d PASSED  [ %3d%% ] tests/test_module.py::test_something_long\n"
            return "".join(line % (i, i % 100) for i in range(size // 70 + 1))[:size]

    @hookimpl
    def register_tools(self) -> list[Tool]:
        return [Checks.Run()]


def scripted(req: Request) -> Reply:
    if req.body["model"] == "gpt-5-mini":
        return Reply(text="Summary: the checks ran once per task; all passed; answers explained the results.")
    messages = req.body["messages"]
    if messages[-1]["role"] == "tool":
        return Reply(text="All checks passed. " + "The output shows each case and its result. " * 25, chunk_chars=400)
    turn = sum(1 for m in messages if m["role"] == "user")
    return Reply(tool_calls=[ToolCall("run_checks", {"turn": turn})])


async def tokens_per_turn(turns: int, window: int, counter: TokenCounter) -> tuple[list[int], list[int], int, int]:
    """Tokens sent per turn (agent requests), the largest request per turn, the fast model's tokens, and
    compactions."""
    slack, model = FakeSlack(), FakeOpenAI()
    model.default = scripted
    await slack.start()
    await model.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = service_env(Path(tmp) / "data", slack, model, plugins="bench.long_session:Checks",
                              model_context_windows=json.dumps({"gpt-5": window}), max_prompts_per_minute=1000)
            svc = Service(make_settings(env))
            await svc.start()
            try:
                await asyncio.wait_for(slack.connected.wait(), 10)
                per_turn: list[int] = []
                largest: list[int] = []
                root = ""
                for i in range(1, turns + 1):
                    seen = len(model.requests)
                    if i == 1:
                        root = await slack.mention("U0ALICE1", "task 1")
                    else:
                        await slack.user_message("U0ALICE1", f"task {i}", thread_ts=root)
                    await slack.wait_for(functools.partial(all_done, slack, root, i), timeout=60)
                    sent = [_tokens(counter, r.body) for r in model.requests[seen:] if r.body["model"] == "gpt-5"]
                    per_turn.append(sum(sent))
                    largest.append(max(sent))
                fast = sum(_tokens(counter, r.body) for r in model.requests if r.body["model"] == "gpt-5-mini")
                session = svc.sessions.log_of(next(iter(svc.sessions._by_id)))
                compactions = len(session.read_kinds(("context_compacted",)))
                return per_turn, largest, fast, compactions
            finally:
                await svc.stop()
    finally:
        await slack.stop()
        await model.stop()


def _tokens(counter: TokenCounter, body: dict[str, Any]) -> int:
    return counter.messages(body["messages"]) + counter.text(json.dumps(body.get("tools") or []))


async def parallel_reads(rounds: int) -> tuple[list[float], list[float]]:
    """Wall ms of three searches in one step (at once) and with a note in the step (one after another)."""
    from tests.plugins import Stopwatch
    from tests.sandbox_fixtures import serve_git_remote
    from tests.test_sandbox_sessions import finished, start_service

    slack, model = FakeSlack(), FakeOpenAI()
    await slack.start()
    await model.start()
    at_once: list[float] = []
    in_turn: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp_dir, serve_git_remote(Path(tmp_dir)) as remote:
            svc = await start_service(Path(tmp_dir), slack, model, remote.url, plugins="tests.plugins:Stopwatch")
            try:
                make_tree = ("mkdir -p gen && for d in $(seq 1 40); do mkdir -p gen/$d; for f in $(seq 1 50); do "
                             "seq 1 400 | sed \"s/^/line $d $f /\" > gen/$d/f$f.txt; done; done")
                model.add(Reply(tool_calls=[ToolCall("run_command", {"command": make_tree})]), Reply(text="Made."))
                root = await slack.mention("U0BENCH1", "make the tree")
                await slack.wait_for(lambda: finished(slack, root), timeout=120)
                searches = [ToolCall("search", {"pattern": p, "path": "gen"}) for p in ("line 7 3 12$", "x+y", "^zz")]
                for n in range(rounds):
                    for mode, calls in (("at once", searches), ("one after another",
                                                                [*searches, ToolCall("post_note", {"text": "."})])):
                        Stopwatch.spans.clear()
                        model.add(Reply(tool_calls=calls), Reply(text="Searched."))
                        await slack.user_message("U0BENCH1", f"search {mode} {n}", thread_ts=root)
                        await slack.wait_for(lambda: len([s for s in Stopwatch.spans if s[0] == "search"]) == 3,
                                             timeout=60)
                        spans = [s for s in Stopwatch.spans if s[0] == "search"]
                        wall = (max(e for _, _, e in spans) - min(s for _, s, _ in spans)) * 1000
                        (at_once if mode == "at once" else in_turn).append(wall)
                        await asyncio.sleep(0.3)  # the turn's end
            finally:
                await svc.stop()
    finally:
        await slack.stop()
        await model.stop()
    return at_once, in_turn


async def main(turns: int, rounds: int) -> None:
    counter = TokenCounter("gpt-5")
    counter.load()
    print(f"1. {turns}-turn session, tool outputs cycling {SIZES} characters; tokens "
          f"{'by tiktoken' if counter.exact else 'estimated (tiktoken has no encoding offline)'}")
    with_budget, largest_with, fast, compactions = await tokens_per_turn(turns, WINDOW, counter)
    without, largest, _, _ = await tokens_per_turn(turns, 10_000_000, counter)
    for label, figures in (("with the budget", with_budget), ("without", without)):
        print(f"   {label:16} per turn: mean {statistics.mean(figures):9,.0f}  p50 {pct([float(f) for f in figures], 50):9,.0f}  "
              f"max {max(figures):9,.0f}  total {sum(figures):11,}")
    print(f"   fast model (summaries): {fast:,} tokens; compactions: {compactions}; window {WINDOW:,}, "
          f"gpt-5's real one {CONTEXT_WINDOWS['gpt-5']:,}")
    print(f"   tokens sent, without / with (net of summaries): {sum(without) / (sum(with_budget) + fast):.2f}x")
    over = sum(1 for f in largest if f > WINDOW)
    print(f"   largest request: {max(largest_with):,} tokens with the budget; without, {max(largest):,}, and "
          f"{over} of {turns} turns had a request over the {WINDOW:,} window")
    if rounds:
        started = time.monotonic()
        at_once, in_turn = await parallel_reads(rounds)
        print(f"2. three searches, {rounds} rounds ({time.monotonic() - started:.0f} s in all):")
        print(f"   at once          wall ms: p50 {pct(at_once, 50):7.1f}  runs {[round(x) for x in at_once]}")
        print(f"   one after another wall ms: p50 {pct(in_turn, 50):7.1f}  runs {[round(x) for x in in_turn]}")
        print(f"   sequential / parallel: {pct(in_turn, 50) / pct(at_once, 50):.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.turns, args.rounds))
