"""Web view fan-out: one session streaming to many WebSocket viewers, and a long session's page load.

The real service (`bot.service.Service`, under uvloop as `serve` runs it; Slack off, no sandboxes,
no model) runs in this process; every client runs in a child process of its own, so the clients'
CPU is not the service loop's (these machines have 2 cores):

- fan-out: one session streams `--events` `text_delta` events (then `turn_ended` and `status`)
  at a steady `--rate` to `--viewers` WebSocket viewers that joined at its last seq. Each viewer
  checks that seqs arrive contiguous with no duplicate and records, per event, its receive wall
  time minus the event's `ts` (its append to the log: same machine, same clock). Viewers ask for
  permessage-deflate as browsers do (`--no-compress` turns it off). Reported: delivery latency
  p50/p95/p99/max over all viewers and events, events delivered against expected, the service
  process's RSS (before the viewers, at peak, after), its event loop's lag (a ticker's sleep
  overshoot, every 10 ms) during the run, and the CPU of the service, of the clients and of the
  rest of the machine (/proc/stat: another busy process there makes the figures worse);
- time to first content: GET of the streamed session's page (first load, which projects the
  whole log, then a second, from the server's cached projection) and the HTML size; the loop's
  lag while 5 GETs of it run at once, and while 5 GETs of another 10,000-event session (100
  turns, never loaded) run at once; if /usr/bin/chromium exists, Chromium's time from
  `page.goto` to the page being live (`#conn` says "live").

Exits non-zero only if an event was missing, skipped or doubled (a missed target is a figure).

Run: `.venv/bin/python -m bench.web_fanout [--viewers 100] [--events 10000] [--rate 500]`
(`--no-compress`, `--no-browser`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bot.config import load_settings
from bot.events import AssistantMessage, Author, Origin, Outcome, Status, TextDelta, TurnEnded, TurnStarted
from bot.service import Service
from bot.sessions.service import SessionService
from bot.web.server import CONTEXT

CHROMIUM = Path("/usr/bin/chromium")
TARGET_P99_MS = 50.0
USER = "U0BENCH01"


def pct(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def memory() -> dict[str, float]:
    """This process's resident set now and its high-water mark, in MiB."""
    found: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy (all cores, every process), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# -- clients (each kind runs in a child process: `--child KIND ...`) ------------------------


async def _until_go() -> None:
    """The parent writes a line once it is measuring."""
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def _say(kind: str, payload: Any = None) -> None:
    print(kind if payload is None else f"{kind} {json.dumps(payload)}", flush=True)


@dataclass
class _Viewer:
    after: int
    last: int = 0
    events: int = 0
    gaps: int = 0
    duplicates: int = 0
    frames: int = 0
    done: bool = False
    latencies: list[float] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)


async def _watch(ws: aiohttp.ClientWebSocketResponse, viewer: _Viewer) -> None:
    viewer.last = viewer.after
    async for msg in ws:
        now = time.time()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            break
        viewer.frames += 1
        for item in json.loads(msg.data):
            if item.get("type") != "event":
                continue
            seq = int(item["seq"])
            if seq <= viewer.last:
                viewer.duplicates += 1
                continue
            viewer.gaps += seq - viewer.last - 1
            viewer.last = seq
            viewer.events += 1
            viewer.latencies.append(now - float(item["ts"]))
            viewer.received_at.append(now)
            if item["kind"] == "status" and item["data"].get("state") == "idle":
                viewer.done = True
        if viewer.done:
            break
    await ws.close()


async def viewers_child(base: str, token: str, count: int, after: int, compress: bool, timeout: float) -> None:
    """`count` WebSocket viewers of one session from `after`, until its `status: idle` event."""
    url = f"{base}/s/{token}/ws?after={after}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sockets = await asyncio.gather(*[http.ws_connect(url, origin=base, compress=15 if compress else 0,
                                                         max_msg_size=64 * 1024 * 1024) for _ in range(count)])
        negotiated = sum(1 for ws in sockets if ws.compress)
        viewers = [_Viewer(after) for _ in sockets]
        _say("ready")
        await _until_go()
        cpu0, wall0 = time.process_time(), time.monotonic()
        watching = [asyncio.create_task(_watch(ws, v)) for ws, v in zip(sockets, viewers, strict=True)]
        _, late = await asyncio.wait(watching, timeout=timeout)
        for task in late:
            task.cancel()
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    latencies = sorted(x for v in viewers for x in v.latencies)
    # The worst second: p99 of the events received in each second of the run, the highest of them.
    by_second: dict[int, list[float]] = {}
    for v in viewers:
        for at, lat in zip(v.received_at, v.latencies, strict=True):
            by_second.setdefault(int(at), []).append(lat)
    worst = max((pct(sorted(s), 99) for s in by_second.values()), default=float("nan"))
    _say("result", {
        "latency_ms": {k: pct(latencies, p) * 1000 for k, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
        "worst_second_p99_ms": worst * 1000,
        "viewers": [{"events": v.events, "last": v.last, "gaps": v.gaps, "duplicates": v.duplicates,
                     "frames": v.frames, "done": v.done} for v in viewers],
        "timed_out": len(late), "compressed": negotiated, "cpu_s": cpu, "wall_s": wall,
    })


async def get_child(url: str, concurrency: int) -> None:
    """`concurrency` GETs of a page at once; each one's wall time to the whole body, and its size."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async with http.get(url.rsplit("/s/", 1)[0] + "/healthz") as warm:  # the connection pool, not the page
            await warm.read()
        _say("ready")
        await _until_go()

        async def one() -> tuple[float, int, int]:
            started = time.perf_counter()
            async with http.get(url) as response:
                body = await response.read()
            return time.perf_counter() - started, len(body), response.status

        results = await asyncio.gather(*[one() for _ in range(concurrency)])
    _say("result", {"seconds": [r[0] for r in results], "bytes": [r[1] for r in results],
                    "status": [r[2] for r in results]})


async def browser_child(url: str, loads: int) -> None:
    """Chromium: from `page.goto` to `#conn` saying "live", `loads` times (a new page each)."""
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        warm = await browser.new_page()  # the browser's own first-page costs, on another page
        await warm.goto(url.rsplit("/s/", 1)[0] + "/healthz")
        await warm.close()
        _say("ready")
        await _until_go()
        results = []
        for _ in range(loads):
            page = await browser.new_page()
            started = time.perf_counter()
            await page.goto(url, wait_until="commit")
            committed = time.perf_counter() - started
            await expect(page.locator("#conn")).to_have_text("live", timeout=120_000)  # CSP: no page-side eval
            live = time.perf_counter() - started
            await page.close()
            results.append({"commit_s": committed, "live_s": live})
        await browser.close()
    _say("result", results)


# -- the service side -----------------------------------------------------------------------


class LoopWatch:
    """The event loop's lag (how late a 10 ms sleep wakes) and the process's RSS, over a window."""

    TICK = 0.01

    def __init__(self) -> None:
        self.max_lag = 0.0
        self.lags: list[float] = []
        self.max_rss = 0.0

    def reset(self) -> None:
        self.max_lag, self.lags, self.max_rss = 0.0, [], memory()["VmRSS"]

    def window(self) -> dict[str, float]:
        ordered = sorted(self.lags)
        return {"max_ms": self.max_lag * 1000, "p99_ms": pct(ordered, 99) * 1000, "ticks": len(ordered)}

    async def run(self) -> None:
        ticks = 0
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.TICK)
            lag = max(0.0, time.perf_counter() - started - self.TICK)
            self.lags.append(lag)
            self.max_lag = max(self.max_lag, lag)
            ticks += 1
            if ticks % 10 == 0:
                self.max_rss = max(self.max_rss, memory()["VmRSS"])


class Child:
    """A client process speaking a line protocol: it says `ready`, waits for a line, then says `result {...}`."""

    def __init__(self, *args: str):
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 120) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.web_fanout", "--child", *self.args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        if await asyncio.wait_for(self._line(), timeout) != "ready":
            raise RuntimeError(f"client {self.args[0]} did not start")

    def go(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def result(self, timeout: float) -> Any:
        assert self.proc is not None
        line = await asyncio.wait_for(self._line(), timeout)
        await self.proc.wait()
        if not line.startswith("result "):
            raise RuntimeError(f"client {self.args[0]} failed (exit {self.proc.returncode})")
        return json.loads(line.removeprefix("result "))

    def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def _line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        return (await self.proc.stdout.readline()).decode().strip()


async def measured(watch: LoopWatch, child: Child, timeout: float) -> tuple[Any, dict[str, float]]:
    """Run a started client with the loop watch's window around it."""
    watch.reset()
    child.go()
    result = await child.result(timeout)
    return result, watch.window()


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def produce(sessions: SessionService, session_id: str, turn: int, events: int, rate: float) -> float:
    """`events` text deltas at a steady `rate` (each one emitted when it is due); returns the seconds taken."""
    started = time.perf_counter()
    sent = 0
    while sent < events:
        due = min(events, int((time.perf_counter() - started) * rate) + 1)
        while sent < due:
            sessions.emit(session_id, TextDelta(text=f"w{sent:05d} "), turn=turn)
            sent += 1
        await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter()))
    return time.perf_counter() - started


def seed_turns(sessions: SessionService, session_id: str, author: Author, turns: int, per_turn: int) -> None:
    """A finished history: `turns` turns of `per_turn` events each (prompt, text deltas, answer, end)."""
    slog = sessions.log_of(session_id)
    for t in range(turns):
        prompt, _ = slog.enqueue(f"question {t}", author, time.time())
        slog.set_prompt_status(prompt.id, Outcome.DONE.value)
        sessions.emit(session_id, TurnStarted(prompt_id=prompt.id, text=f"question {t}", author=author), turn=prompt.id)
        words = [f"t{t}w{i}" for i in range(per_turn - 4)]
        for word in words:
            sessions.emit(session_id, TextDelta(text=word + " "), turn=prompt.id)
        sessions.emit(session_id, AssistantMessage(content=" ".join(words) + " "), turn=prompt.id)
        sessions.emit(session_id, TurnEnded(prompt_id=prompt.id, outcome=Outcome.DONE), turn=prompt.id)
    sessions.emit(session_id, Status(state="idle"))


async def run(viewers: int, events: int, rate: float, compress: bool, browser: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(_env_file=None, data_dir=Path(tmp) / "data", web_host="127.0.0.1", web_port=0,
                                 public_url="", slack_bot_token="", slack_app_token="", sandbox_backend="none",
                                 repos_config=None, log_level="WARNING")
        service = Service(settings)
        await service.start()
        children: list[Child] = []
        watcher = asyncio.create_task(asyncio.sleep(0))
        try:
            assert service._web is not None
            ctx = service._web.app[CONTEXT]
            base = f"http://127.0.0.1:{service.web_port}"
            sessions = service.sessions
            author = Author(id=USER, name="Bench", origin=Origin.WEB)

            info = await sessions.open(Origin.WEB, author, None, title="fan-out")
            prompt, _ = sessions.log_of(info.id).enqueue("stream a long answer", author, time.time())
            turn = prompt.id
            sessions.emit(info.id, TurnStarted(prompt_id=turn, text="stream a long answer", author=author), turn=turn)
            after = sessions.log_of(info.id).last_seq()

            watch = LoopWatch()
            watcher = asyncio.create_task(watch.run())
            gc.collect()
            await asyncio.sleep(0.2)
            rss_before = memory()["VmRSS"]

            # -- fan-out --------------------------------------------------------------------
            budget = events / rate + 120
            clients = Child("viewers", base, info.share_token, str(viewers), str(after), "1" if compress else "0", str(budget))
            children.append(clients)
            await clients.start()
            await until(lambda: ctx.presence.count() >= viewers, 60, f"{viewers} viewers to join")
            await asyncio.sleep(0.5)  # their presence announcements have gone out
            rss_connected = memory()["VmRSS"]
            watch.reset()
            clients.go()
            cpu0, machine0 = time.process_time(), machine_cpu()
            took = await produce(sessions, info.id, turn, events, rate)
            sessions.emit(info.id, TurnEnded(prompt_id=turn, outcome=Outcome.DONE, duration_ms=took * 1000), turn=turn)
            sessions.emit(info.id, Status(state="idle"))
            final = sessions.log_of(info.id).last_seq()
            fan = await clients.result(budget)
            cpu, machine = time.process_time() - cpu0, machine_cpu() - machine0
            lag = watch.window()
            rss_peak, hwm = watch.max_rss, memory()["VmHWM"]
            await until(lambda: ctx.presence.count() == 0, 30, "the viewers to leave")
            gc.collect()
            await asyncio.sleep(0.5)
            rss_after = memory()["VmRSS"]

            expected = final - after
            per_viewer = fan["viewers"]
            delivered = sum(v["events"] for v in per_viewer)
            gaps = sum(v["gaps"] for v in per_viewer)
            duplicates = sum(v["duplicates"] for v in per_viewer)
            incomplete = sum(1 for v in per_viewer if v["last"] != final or v["events"] != expected)
            frames = sum(v["frames"] for v in per_viewer)
            ok = not gaps and not duplicates and not incomplete and len(per_viewer) == viewers
            ms = fan["latency_ms"]
            wall = max(fan["wall_s"], 1e-9)
            print(f"web fan-out: 1 session -> {viewers} WebSocket viewers in another process "
                  f"(permessage-deflate {'on' if compress else 'off'}: {fan['compressed']}/{viewers} negotiated), "
                  f"serve in this process (uvloop, SQLite)")
            print(f"  produced {events:,} text deltas + turn_ended + status in {took:.2f} s "
                  f"({events / took:.0f} events/s, asked {rate:.0f})")
            print(f"  delivery latency (receive wall time - event ts), {delivered:,} deliveries: p50 {ms['p50']:.1f} ms   "
                  f"p95 {ms['p95']:.1f} ms   p99 {ms['p99']:.1f} ms   max {ms['max']:.1f} ms   "
                  f"(target p99 < {TARGET_P99_MS:.0f} ms: {'met' if ms['p99'] < TARGET_P99_MS else 'MISSED'})")
            print(f"  worst one-second p99 {fan['worst_second_p99_ms']:.1f} ms; frames {frames:,} "
                  f"({delivered / max(1, frames):.1f} events per frame)")
            print(f"  delivered {delivered:,} of {expected * viewers:,} expected ({expected:,} x {viewers}); gaps {gaps}, "
                  f"duplicates {duplicates}, viewers incomplete {incomplete}, timed out {fan['timed_out']}")
            print(f"  service RSS: {rss_before:.0f} MiB before viewers, {rss_connected:.0f} MiB with {viewers} connected, "
                  f"{rss_peak:.0f} MiB peak during the stream (VmHWM {hwm:.0f} MiB), {rss_after:.0f} MiB after")
            print(f"  service loop: max lag {lag['max_ms']:.1f} ms, p99 lag {lag['p99_ms']:.1f} ms; service CPU "
                  f"{cpu:.1f} s over {fan['wall_s']:.1f} s ({cpu / wall * 100:.0f}% of a core); "
                  f"clients' CPU {fan['cpu_s']:.1f} s ({fan['cpu_s'] / wall * 100:.0f}% of a core); "
                  f"other processes and the kernel {max(0.0, machine - cpu - fan['cpu_s']):.1f} s", flush=True)

            # -- page loads -------------------------------------------------------------------
            print(f"time to first content, session page of {final:,} events (GET to the whole HTML, client in another process):")
            page = f"{base}/s/{info.share_token}"
            loads: list[tuple[str, Any, dict[str, float]]] = []

            async def load(label: str, url: str, concurrency: int) -> None:
                child = Child("get", url, str(concurrency))
                children.append(child)
                await child.start()
                result, window = await measured(watch, child, 300)
                loads.append((label, result, window))
                times = ", ".join(f"{s * 1000:.0f}" for s in result["seconds"])
                print(f"  {label:44} {times} ms   {result['bytes'][0] / 1024:.0f} KiB   status {set(result['status'])}   "
                      f"loop max lag {window['max_ms']:.1f} ms", flush=True)

            await load("first load", page, 1)
            await load("second load (cached projection)", page, 1)
            await load("5 at once", page, 5)
            history = await sessions.open(Origin.WEB, author, None, title="a long history")
            seed_turns(sessions, history.id, author, 100, events // 100)
            history_events = sessions.log_of(history.id).last_seq()
            await load(f"5 at once, never loaded ({history_events:,} ev, 100 turns)", f"{base}/s/{history.share_token}", 5)

            chromium: list[dict[str, float]] | None = None
            if browser and CHROMIUM.exists():
                child = Child("browser", page, "2")
                children.append(child)
                try:
                    await child.start()
                    chromium, window = await measured(watch, child, 300)
                except (RuntimeError, TimeoutError) as exc:
                    print(f"  Chromium: failed ({exc})")
                else:
                    live = ", ".join(f"{r['live_s'] * 1000:.0f}" for r in chromium)
                    committed = ", ".join(f"{r['commit_s'] * 1000:.0f}" for r in chromium)
                    print(f"  Chromium, goto -> #conn 'live': {live} ms (response committed {committed} ms); "
                          f"loop max lag {window['max_ms']:.1f} ms")
            elif browser:
                print(f"  Chromium: skipped ({CHROMIUM} not found)")
        finally:
            watcher.cancel()
            for child in children:
                child.stop()
            await service.stop()

    first, second, five, cold = (loads[i][1] for i in range(4))
    print()
    print(f"summary ({viewers} viewers, {events:,} events at {rate:.0f}/s; {os.cpu_count()} cores):")
    print(f"  delivery latency  p50 {ms['p50']:.1f} ms · p95 {ms['p95']:.1f} ms · p99 {ms['p99']:.1f} ms · "
          f"max {ms['max']:.1f} ms (target p99 < {TARGET_P99_MS:.0f} ms)")
    print(f"  delivered         {delivered:,}/{expected * viewers:,}, gaps {gaps}, duplicates {duplicates}")
    print(f"  service           RSS {rss_before:.0f} → {rss_peak:.0f} peak → {rss_after:.0f} MiB after; "
          f"loop max lag {lag['max_ms']:.1f} ms; {cpu / wall * 100:.0f}% of a core")
    print(f"  page ({final:,} ev) first {first['seconds'][0] * 1000:.0f} ms · second {second['seconds'][0] * 1000:.0f} ms · "
          f"{first['bytes'][0] / 1024:.0f} KiB")
    print(f"  5 loads at once   {max(five['seconds']) * 1000:.0f} ms, loop max lag {loads[2][2]['max_ms']:.1f} ms · "
          f"never-loaded 100 turns {max(cold['seconds']) * 1000:.0f} ms, loop max lag {loads[3][2]['max_ms']:.1f} ms")
    if chromium is not None:
        live = ", ".join(f"{r['live_s'] * 1000:.0f}" for r in chromium)
        print(f"  Chromium live     {live} ms (goto → #conn 'live')")
    if not ok:
        print("FAILED: events were missing, skipped or doubled", file=sys.stderr)
        return 1
    return 0


def child_main(args: list[str]) -> None:
    kind, rest = args[0], args[1:]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    if kind == "viewers":
        base, token, count, after, compress, timeout = rest
        uvloop.run(viewers_child(base, token, int(count), int(after), compress == "1", float(timeout)))
    elif kind == "get":
        url, concurrency = rest
        uvloop.run(get_child(url, int(concurrency)))
    elif kind == "browser":
        url, loads = rest
        asyncio.run(browser_child(url, int(loads)))
    else:
        raise SystemExit(f"unknown client {kind}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0, help="text deltas per second")
    parser.add_argument("--no-compress", action="store_true", help="viewers do not ask for permessage-deflate")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium page load")
    args = parser.parse_args()
    sys.exit(uvloop.run(run(args.viewers, args.events, args.rate, not args.no_compress, not args.no_browser)))
