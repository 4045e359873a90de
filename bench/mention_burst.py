"""A burst of mentions: how long until every thread is answered, against a minimal bolt app.

Two apps, each in its own process, talk to the same Slack and OpenAI fakes (in this process):

- baseline: a minimal slack-bolt AsyncApp over Socket Mode that, on `app_mention`, makes the
  same streaming chat-completions call with the openai client (same model, system prompt and
  user message, the same tools offered: post_note) and posts the answer in the thread (one `chat.postMessage`);
- hosted-agents: the real `hosted-agents serve`, no repositories configured, so no sandbox.

Each gets a few warm-up mentions, then N mentions in N new threads, sent as fast as the socket
takes them. The model answers every request after the same time to first token. A thread is
*answered* when a person looking at it would see the model's answer and nothing in it still says
the bot is working (no Stop button, no hourglass, no "Working…"/"Thinking…"): `answered()`.
Measured: from the first mention written to the socket until the last thread is answered, and per
mention from its own envelope to its thread being answered; plus each process's CPU time during
the burst (less sensitive to a busy machine than wall time). Repetitions alternate the order of
the two apps; the ratio reported is the median of the per-repetition ratios.

Run: `.venv/bin/python -m bench.mention_burst [--mentions 200] [--reps 3] [--ttft 0.3]`.
`--only hosted-agents` skips the baseline; `--service-env KEY=VALUE` passes a setting to `serve`
(e.g. `SLACK_UPDATE_INTERVAL=0.2`); `--profile DIR` samples each app process with py-spy during
the burst (`.venv/bin/pip install py-spy`; needs ptrace rights) and prints where its event loop's
time went, per mention.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.mention_latency import pct
from tests.conftest import service_env
from tests.fakes.openai import FakeOpenAI, Reply, Request
from tests.fakes.slack import FakeSlack, Message

BASELINE, HOSTED = "baseline", "hosted-agents"
USER = "U0BURST1"
_TAG = re.compile(r"burst (\S+):")
_WRITES = ("chat.postMessage", "chat.update", "chat.startStream", "chat.appendStream", "chat.stopStream")


def prompt_for(tag: str) -> str:
    return f"burst {tag}: why is the login page slow?"


def answer_for(tag: str) -> str:
    return f"Answer {tag}: the login page waits on an unindexed query."


def model_reply(ttft: float) -> Any:
    """The model fake's script: a short answer naming the mention, after `ttft` seconds."""

    def reply(request: Request) -> Reply:
        found = _TAG.search(request.last_user_text)
        return Reply(text=answer_for(found.group(1) if found else "?"), ttft=ttft)

    return reply


# -- what a person sees in a thread -------------------------------------------------------


def visible_text(msg: Message) -> str:
    """Every string Slack would show for the message: its text and any text in its blocks."""
    parts = [msg.text]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    parts.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(msg.blocks)
    return "\n".join(parts)


def still_working(msg: Message) -> bool:
    """The message still says the bot is at it: a Stop button, an hourglass, "Working…"."""
    if any("stop" in action_id for action_id in msg.buttons()):
        return True
    text = visible_text(msg)
    return ":hourglass" in text or "Working…" in text or "Thinking…" in text


def answered(bot_messages: list[Message], answer: str) -> bool:
    """A person reading the thread sees the answer, and nothing says the turn is still running."""
    return any(answer in visible_text(m) for m in bot_messages) and not any(still_working(m) for m in bot_messages)


class WatchedSlack(FakeSlack):
    """The Slack fake, plus the moment each watched thread first became answered.

    Checked after every Web API write that touches a watched thread, so the time recorded is the
    time of the call that completed the answer (no polling; a check costs microseconds).
    """

    def __init__(self) -> None:
        super().__init__(echo_bot_messages=True)
        self.expect: dict[str, str] = {}
        """thread ts -> the answer text that must be visible in it"""
        self.answered: dict[str, float] = {}
        self._bot_messages: dict[str, list[Message]] = defaultdict(list)
        self._indexed = 0

    async def _api(self, request: web.Request) -> web.Response:
        first = len(self.calls)
        response = await super()._api(request)
        touched: set[str] = set()
        for call in self.calls[first:]:
            if call.method not in _WRITES:
                continue
            self._index()
            channel = str(call.params.get("channel", ""))
            for key in ("thread_ts", "ts"):
                msg = self.messages.get((channel, str(call.params.get(key, ""))))
                if msg is not None:
                    touched.add(msg.thread_ts or msg.ts)
            if call.params.get("thread_ts"):
                touched.add(str(call.params["thread_ts"]))
        now = time.monotonic()
        for thread in touched:
            answer = self.expect.get(thread)
            if answer is not None and thread not in self.answered and answered(self._bot_messages[thread], answer):
                self.answered[thread] = now
        return response

    def _index(self) -> None:
        if len(self.messages) == self._indexed:
            return
        for msg in list(self.messages.values())[self._indexed :]:
            if msg.bot:
                self._bot_messages[msg.thread_ts or msg.ts].append(msg)
        self._indexed = len(self.messages)


# -- the baseline app (runs in its own process) ----------------------------------------------


async def baseline_app() -> None:
    """The least a bolt app can do: ack, one streamed model call, one post in the thread."""
    from openai import AsyncOpenAI
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
    from slack_bolt.app.async_app import AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    from bot.agent.conversation import SYSTEM_PROMPT, user_text
    from bot.agent.plugins import BuiltinTools, plugin_manager, tool_registry
    from bot.config import Settings
    from bot.events import Author
    from bot.slack.app import SlackContext

    # The same model call as hosted-agents makes for a session without a repository: its system
    # prompt (with what the Slack surface adds) and the tools it offers there (post_note).
    system = "\n\n".join([SYSTEM_PROMPT, SlackContext().session_context(("slack_thread",)) or ""])
    tools: Any = tool_registry(plugin_manager(builtins=[BuiltinTools()])).specs(workspace=False)

    env = os.environ
    token = env.pop("SLACK_BOT_TOKEN")  # else bolt reads it as well and warns that the client's wins
    client = AsyncWebClient(token=token, base_url=env["SLACK_API_URL"])
    app = AsyncApp(client=client)
    model = AsyncOpenAI(api_key=env["OPENAI_API_KEY"], base_url=env["OPENAI_BASE_URL"], max_retries=0)
    model_name = Settings.model_fields["agent_model"].default

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any]) -> None:
        text = re.sub(r"<@[A-Z0-9]+>", " ", event.get("text", "")).strip()
        stream = await model.chat.completions.create(
            model=model_name,
            messages=[{"role": "system", "content": system},
                      {"role": "user", "content": user_text(Author(id=event["user"]), text)}],
            tools=tools,
            stream=True,
        )
        parts: list[str] = []
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices or []:
                    if choice.delta is not None and choice.delta.content:
                        parts.append(choice.delta.content)
        await client.chat_postMessage(channel=event["channel"], thread_ts=event["ts"], text="".join(parts))

    @app.event("message")
    async def on_message() -> None:
        """Slack sends a mention as `message` too, and echoes the bot's own posts."""

    handler = AsyncSocketModeHandler(app, env["SLACK_APP_TOKEN"], web_client=client)
    await handler.connect_async()
    await asyncio.Event().wait()


# -- one burst against one app ----------------------------------------------------------


@dataclass
class Result:
    app: str
    total: float
    """seconds from the first mention sent to the last thread answered (nan if some never were)"""
    latencies: list[float]
    """per answered mention: seconds from its envelope to its thread being answered"""
    sent: int
    send_time: float
    app_cpu: float
    fakes_cpu: float
    """CPU of this process (the fakes and the bench) during the burst"""
    calls: Counter[str] = field(default_factory=Counter)
    model_requests: int = 0

    @property
    def answered(self) -> int:
        return len(self.latencies)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def wait_answered(slack: WatchedSlack, threads: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(t not in slack.answered for t in threads) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def run_app(app: str, slack: WatchedSlack, model: FakeOpenAI, args: argparse.Namespace, rep: int) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        # One person sends every mention: lift the per-person limits (their check still runs).
        env = service_env(Path(tmp) / "data", slack, model, log_level="WARNING", max_prompts_per_minute=100_000,
                          max_sessions_per_user=10_000)
        if app == HOSTED:
            env.update(args.service_env)
            cmd = [sys.executable, "-m", "bot.cli", "serve"]
        else:
            cmd = [sys.executable, "-m", "bench.mention_burst", "--baseline-app"]
        proc = await asyncio.create_subprocess_exec(*cmd, env={"PATH": os.environ["PATH"], **env})
        profile = Path(args.profile) / f"rep{rep + 1}-{app}.folded" if args.profile else None
        spy: asyncio.subprocess.Process | None = None
        try:
            await asyncio.wait_for(slack.connected.wait(), 60)
            prefix = f"r{rep + 1}{app[0]}"

            async def mention(name: str) -> tuple[str, float]:
                sent = time.monotonic()
                thread = await slack.mention(USER, prompt_for(f"{prefix}-{name}"))
                slack.expect[thread] = answer_for(f"{prefix}-{name}")
                return thread, sent

            warm = [await mention(f"w{i}") for i in range(args.warmup)]  # connection pools, first-call costs
            await wait_answered(slack, [t for t, _ in warm], 60)
            await asyncio.sleep(0.5)  # the warm-up's trailing traffic

            calls_before, requests_before = len(slack.calls), len(model.requests)
            if profile is not None:
                spy = await start_profiler(proc.pid, profile)
            cpu_app, cpu_fakes = cpu_seconds(proc.pid), own_cpu()
            start = time.monotonic()
            burst = [await mention(str(i)) for i in range(args.mentions)]
            send_time = time.monotonic() - start
            await wait_answered(slack, [t for t, _ in burst], args.timeout)
            done = [slack.answered[t] for t, _ in burst if t in slack.answered]
            total = (max(done) - start) if len(done) == len(burst) else float("nan")
            cpu_app, cpu_fakes = cpu_seconds(proc.pid) - cpu_app, own_cpu() - cpu_fakes
            if spy is not None:
                spy.send_signal(2)  # py-spy writes its profile on SIGINT
                await spy.wait()
                spy = None
            await asyncio.sleep(0.5)  # trailing traffic (last edits, echoes) is counted with the burst
            return Result(app, total, [slack.answered[t] - s for t, s in burst if t in slack.answered], len(burst),
                          send_time, cpu_app, cpu_fakes, Counter(c.method for c in slack.calls[calls_before:]),
                          len(model.requests) - requests_before)
        finally:
            if spy is not None:
                spy.send_signal(2)
                await spy.wait()
            proc.terminate()
            await proc.wait()
            while slack.connected.is_set():  # the next app gets a fresh socket
                await asyncio.sleep(0.02)


# -- profiling (optional) -----------------------------------------------------------------

_PROFILE_BUCKETS = (  # first match wins, so the order goes from specific to general
    ("per-session log (bot/sessions/log.py, sqlite3 on the loop)", ("bot/sessions/log.py",)),
    ("central DB (SQLAlchemy async + aiosqlite)", ("sqlalchemy/", "aiosqlite/")),
    ("Slack Web API calls (slack_sdk + aiohttp client)", ("slack_sdk/web/", "slack_sdk/http_retry/", "aiohttp/client_reqrep",
                                                         "aiohttp/connector")),
    ("model client (openai, request + stream parsing)", ("openai/", "httpx", "httpcore", "anyio/")),
    ("Socket Mode in (slack_bolt, slack_sdk.socket_mode)", ("slack_bolt/", "slack_sdk/socket_mode/")),
    ("the service's own code (bot/, classifier/, sandbox/)", ("(bot/", "(classifier/", "(sandbox/")),
    ("epoll select", ("EpollSelector.select",)),
    ("asyncio and the rest", ("",)),
)


async def start_profiler(pid: int, out: Path) -> asyncio.subprocess.Process | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("  (--profile: py-spy is not installed; `.venv/bin/pip install py-spy`)")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--threads", "--nonblocking",
        "--output", str(out), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)  # attached
    return spy


def print_profile(path: Path, mentions: int, rate: int = 200) -> None:
    """Where the app's main thread (its event loop) spent the burst, from py-spy's folded stacks."""
    if not path.exists():
        return
    buckets: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "MainThread" not in frames[0]:
            continue
        body = ";".join(f for f in frames[1:] if "bot/cli.py" not in f and "bench/mention_burst.py" not in f)
        buckets[next(name for name, keys in _PROFILE_BUCKETS if any(k in body for k in keys))] += int(count)
    total = sum(buckets.values()) or 1
    print(f"         main thread, {total / rate:.2f} s sampled ({path}):")
    for name, _ in _PROFILE_BUCKETS:
        if buckets[name]:
            print(f"           {name:<58} {buckets[name] / total:6.1%}  {buckets[name] / rate / mentions * 1000:6.2f} ms/mention")


# -- the run --------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    slack, model = WatchedSlack(), FakeOpenAI()
    await slack.start()
    await model.start()
    model.default = model_reply(args.ttft)
    apps = [a for a in (BASELINE, HOSTED) if args.only in (None, a)]
    print(f"{args.mentions} mentions at once in {args.mentions} threads, model answering after {args.ttft:g} s, "
          f"{args.reps} repetition(s), each app in its own process:")
    results: list[dict[str, Result]] = []
    try:
        for rep in range(args.reps):
            got: dict[str, Result] = {}
            for app in apps if rep % 2 == 0 else apps[::-1]:
                got[app] = result = await run_app(app, slack, model, args, rep)
                print_result(rep, result)
                if args.profile:
                    print_profile(Path(args.profile) / f"rep{rep + 1}-{app}.folded", args.mentions)
            results.append(got)
    finally:
        await slack.stop()
        await model.stop()
    if len(apps) == 2:
        summarise([(r[BASELINE], r[HOSTED]) for r in results], args)
    return 0 if all(r.answered == r.sent for got in results for r in got.values()) else 1


def _ms(values: list[float], p: float) -> str:
    return f"{pct(values, p) * 1000:.0f}" if values else "-"


def print_result(rep: int, r: Result) -> None:
    calls = ", ".join(f"{m} {n}" for m, n in sorted(r.calls.items()))
    print(f"  rep {rep + 1}  {r.app:<13} {r.total:6.2f} s   p50 {_ms(r.latencies, 50):>5} ms  p95 {_ms(r.latencies, 95):>5} ms   "
          f"answered {r.answered}/{r.sent}   app CPU {r.app_cpu / r.sent * 1000:5.1f} ms/mention   "
          f"fakes CPU {r.fakes_cpu / max(r.total, 1e-9):4.0%} of the burst   sent in {r.send_time * 1000:.0f} ms")
    print(f"         Slack calls: {calls or 'none'}; model requests: {r.model_requests}", flush=True)


def summarise(results: list[tuple[Result, Result]], args: argparse.Namespace) -> None:
    ratios = [h.total / b.total for b, h in results]
    print()
    print(f"{'':7} {'baseline':>9} {'hosted':>9} {'ratio':>6}   {'p50 / p95 ms, baseline':>22}   {'hosted':>11}   "
          f"{'app CPU ms/mention, baseline':>28}   {'hosted':>6}")
    for i, (b, h) in enumerate(results):
        b_pct, h_pct = f"{_ms(b.latencies, 50)} / {_ms(b.latencies, 95)}", f"{_ms(h.latencies, 50)} / {_ms(h.latencies, 95)}"
        print(f"  rep {i + 1} {b.total:8.2f}s {h.total:8.2f}s {ratios[i]:5.2f}x   {b_pct:>22}   {h_pct:>11}   "
              f"{b.app_cpu / b.sent * 1000:28.1f}   {h.app_cpu / h.sent * 1000:6.1f}")
    ratio = statistics.median(ratios)
    base, hosted = statistics.median(b.total for b, _ in results), statistics.median(h.total for _, h in results)
    verdict = "within target" if ratio <= 1.5 else "over target"
    print(f"  median: baseline {base:.2f} s, hosted-agents {hosted:.2f} s; median ratio {ratio:.2f}x (target ≤ 1.5x: {verdict})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--mentions", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ttft", type=float, default=0.3, help="the model's time to first token, seconds")
    parser.add_argument("--warmup", type=int, default=5, help="mentions answered before each burst")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a burst may take")
    parser.add_argument("--only", choices=[BASELINE, HOSTED], help="run one of the two apps")
    parser.add_argument("--service-env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for `hosted-agents serve` (repeatable)")
    parser.add_argument("--profile", metavar="DIR", help="sample each app with py-spy during the burst")
    parser.add_argument("--baseline-app", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any("=" not in kv for kv in args.service_env):
        parser.error("--service-env takes KEY=VALUE")
    args.service_env = dict(kv.split("=", 1) for kv in args.service_env)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.baseline_app:
        asyncio.run(baseline_app())
    else:
        sys.exit(asyncio.run(main(arguments)))
