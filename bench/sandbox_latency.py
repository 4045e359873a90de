"""Sandboxes on the real engine, side by side in one run.

1. Mention → the agent's first model request, and → its first tool result (a `read_file`), for a
   session with no sandbox (the baseline), a warm-pool claim, a cold start from the repo's image,
   and a snapshot restore (a follow-up after the idle timeout). The first tool result is taken
   when the model fake receives the request that carries it. `serve` runs in its own process;
   both ends of every figure are read from this process's clock.
2. A trivial command's round trip through the sandbox API (the in-container executor) next to
   the same command through `docker exec` from a shell.

Run: `make bench` or `.venv/bin/python -m bench.sandbox_latency [--sessions 20]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.mention_latency import pct
from sandbox.backend import LABEL, SandboxLimits
from sandbox.docker import DockerBackend
from sandbox.protocol import Exec
from tests.conftest import service_env
from tests.fakes.openai import FakeOpenAI, Reply, Request, ToolCall
from tests.fakes.slack import FakeSlack
from tests.sandbox_fixtures import (
    BASE_IMAGE,
    remove_created_since,
    repos_yaml,
    serve_git_remote,
)


def scripted(request: Request) -> Reply:
    """First a read, then an answer: every session makes exactly two model requests."""
    if request.body["messages"][-1]["role"] == "user":
        return Reply(tool_calls=[ToolCall("read_file", {"path": "README.md"})])
    return Reply(text="ok")


class Serve:
    def __init__(self, tmp: Path, slack: FakeSlack, model: FakeOpenAI, **env: object):
        self.env = service_env(tmp / "data", slack, model, log_level="WARNING", sandbox_network="host",
                               image_rebuild_interval=0, **env)
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Serve:
        self.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot.cli", "serve",
                                                         env={"PATH": os.environ["PATH"], **self.env})
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        await self.proc.wait()


async def one(slack: FakeSlack, model: FakeOpenAI, text: str, thread_ts: str | None = None) -> tuple[float, float, str]:
    seen, mark = len(model.requests), len(slack.sent_envelopes)
    ts = await (slack.user_message("U0BENCH1", text, thread_ts=thread_ts) if thread_ts else slack.mention("U0BENCH1", text))
    sent = slack.sent_envelopes[mark][1]
    await slack.wait_for(lambda: len(model.requests) >= seen + 2, timeout=120)
    return model.requests[seen].at - sent, model.requests[seen + 1].at - sent, ts


async def sessions_figures(n: int) -> dict[str, tuple[list[float], list[float]]]:
    results: dict[str, tuple[list[float], list[float]]] = {}
    slack, model = FakeSlack(), FakeOpenAI()
    model.default = scripted
    await slack.start()
    await model.start()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with serve_git_remote(tmp) as remote:
            async def run(label: str, wait_between: float, **env: object) -> list[str]:
                roots: list[str] = []
                first: list[float] = []
                tool: list[float] = []
                async with Serve(tmp / label, slack, model, **env):
                    await asyncio.wait_for(slack.connected.wait(), 60)
                    await asyncio.sleep(wait_between * 3)  # image build and pool fill
                    for _ in range(2):
                        await one(slack, model, "warm-up")
                        await asyncio.sleep(wait_between)
                    for _ in range(n):
                        a, b, ts = await one(slack, model, "what does the README say?")
                        first.append(a)
                        tool.append(b)
                        roots.append(ts)
                        await asyncio.sleep(wait_between)
                    results[label] = (first, tool)
                    if label == "cold start from image":  # the same sessions again, after the idle timeout
                        await asyncio.sleep(4)
                        again_first, again_tool = [], []
                        for root in roots:
                            a, b, _ = await one(slack, model, "and again?", thread_ts=root)
                            again_first.append(a)
                            again_tool.append(b)
                        results["snapshot restore"] = (again_first, again_tool)
                slack.connected.clear()
                return roots

            since = time.time()
            try:
                await run("no sandbox (baseline)", 0.05)
                repos = repos_yaml(tmp / "warm.yml", remote.url, pool_size=3)
                await run("warm pool claim", 1.0, repos_config=repos)
                repos = repos_yaml(tmp / "cold.yml", remote.url, pool_size=0)
                await run("cold start from image", 0.3, repos_config=repos, sandbox_idle_timeout=1.5)
            finally:  # warm containers outlive `serve` (for adoption): their disks are under tmp
                import docker

                remove_created_since(docker.from_env(), since)
    await slack.stop()
    await model.stop()
    return results


async def tool_call_figures(n: int) -> tuple[list[float], list[float]]:
    backend = DockerBackend(SandboxLimits(network="none"))
    ref = await backend.create(BASE_IMAGE, {f"{LABEL}.role": "bench"})
    try:
        executor = await backend.executor(ref)
        via_executor = []
        for _ in range(n):
            start = time.monotonic()
            await executor.call(Exec(cmd="true"))
            via_executor.append(time.monotonic() - start)
        via_docker_exec = []
        for _ in range(max(10, n // 10)):
            start = time.monotonic()
            subprocess.run(["docker", "exec", ref.id, "true"], check=True)
            via_docker_exec.append(time.monotonic() - start)
        await executor.close()
        return via_executor, via_docker_exec
    finally:
        await backend.remove(ref)


def line(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"  {label:28} p50 {statistics.median(ms):7.1f} ms   p95 {pct(ms, 95):7.1f} ms"


async def main(sessions: int, calls: int) -> None:
    import docker

    since = time.time()
    try:
        await report(sessions, calls)
    finally:
        remove_created_since(docker.from_env(), since)  # what the run made, nothing else


async def report(sessions: int, calls: int) -> None:
    figures = await sessions_figures(sessions)
    baseline = statistics.median(figures["no sandbox (baseline)"][0]) * 1000
    print(f"mention → first model request ({sessions} sessions each; serve in its own process):")
    for label, (first, _) in figures.items():
        delta = statistics.median(first) * 1000 - baseline
        goal = "" if label.startswith("no sandbox") else f"   ({delta:+.1f} ms vs baseline; goal within 20)"
        print(line(label, first) + goal)
    print("mention → first tool result (read_file README.md):")
    for label, (_, tool) in figures.items():
        if not label.startswith("no sandbox"):
            print(line(label, tool) + ("   (goal < 100 ms)" if label == "warm pool claim" else ""))
    via_executor, via_docker_exec = await tool_call_figures(calls)
    ratio = statistics.median(via_docker_exec) / statistics.median(via_executor)
    print("trivial command round trip (`true`), same container, same run:")
    print(line("sandbox executor", via_executor) + "   (goal < 10 ms)")
    print(line("docker exec from a shell", via_docker_exec))
    print(f"  executor is {ratio:.0f}x faster (goal ≥ 10x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.sessions, args.calls))
