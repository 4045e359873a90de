"""The egress proxy's added latency, against a direct connection in the same run.

Three paths to one HTTP server on 127.0.0.1, with the same client:
- direct: client → server;
- proxy: client → the proxy's Unix socket (as the forwarder connects) → server;
- forwarder + proxy: client → the in-container forwarder's code on a TCP port → Unix socket →
  proxy → server, the whole path a sandbox's request takes (host-side: the container's own
  loopback costs the same as the host's).
Server, proxy (under uvloop, as `serve` runs) and forwarder each run in their own process; the
client runs here. Figures: a 10 MB download (absolute-URI GET, and through a CONNECT tunnel as
https would be) and 100 small requests one after another, each on a new connection as clients
behind a proxy mostly make them.

Run: `make bench` or `.venv/bin/python -m bench.egress_proxy [--rounds 7]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

BIG = 10 * 1024 * 1024
Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def serve_upstream() -> None:
    """Child process: /big (10 MB) and /small over aiohttp; prints its port."""
    from aiohttp import web

    payload = os.urandom(BIG)

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=payload)

    async def small(_: web.Request) -> web.Response:
        return web.Response(body=b"ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/big", big)
        app.router.add_get("/small", small)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_proxy(root: str, port: int) -> None:
    """Child process: the egress proxy allowing 127.0.0.1:PORT, on socket `bench`; prints its directory."""
    import uvloop

    from sandbox.egress import EgressPolicy, EgressProxy

    async def main() -> None:
        proxy = EgressProxy(Path(root), EgressPolicy([f"127.0.0.1:{port}"]))
        print(await proxy.open("bench"), flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def serve_forwarder(path: str) -> None:
    """Child process: the forwarder's own connection code, on a free port (no fork); prints the port."""
    from sandbox import egress_forwarder

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=egress_forwarder.serve, args=(conn, path), daemon=True).start()


def child(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.egress_proxy", *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


async def fetch(open_: Opener, request: bytes, connect: bytes | None = None) -> int:
    """One request on a new connection; returns the bytes of the answer."""
    reader, writer = await open_()
    try:
        if connect is not None:
            writer.write(connect)
            if not (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200"):
                raise RuntimeError("the tunnel was refused")
        writer.write(request)
        total = 0
        while chunk := await reader.read(1 << 18):
            total += len(chunk)
        return total
    finally:
        writer.close()


async def measure(open_: Opener, request: bytes, connect: bytes | None, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await fetch(open_, request, connect)
        times.append(time.perf_counter() - started)
    return times


async def run(rounds: int) -> None:
    procs: list[subprocess.Popen[str]] = []
    try:
        upstream, port_text = child("--upstream")
        procs.append(upstream)
        port = int(port_text)
        with tempfile.TemporaryDirectory() as tmp:
            proxy, directory = child("--proxy", tmp, str(port))
            procs.append(proxy)
            sock = str(Path(directory) / "proxy.sock")
            forwarder, fwd_port = child("--forwarder", sock)
            procs.append(forwarder)

            paths: dict[str, tuple[Opener, bool]] = {
                "direct": (lambda: asyncio.open_connection("127.0.0.1", port), False),
                "proxy": (lambda: asyncio.open_unix_connection(sock), True),
                "forwarder + proxy": (lambda: asyncio.open_connection("127.0.0.1", int(fwd_port)), True),
            }

            def request(path: str, absolute: bool) -> bytes:
                target = f"http://127.0.0.1:{port}{path}" if absolute else path
                return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()

            connect = f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
            # Warm up every path (first connections, page cache, the server's payload).
            for open_, absolute in paths.values():
                await measure(open_, request("/big", absolute), None, 2)
            big: dict[str, list[float]] = {}
            tunnel: dict[str, list[float]] = {}
            small: dict[str, list[float]] = {}
            for label, (open_, absolute) in paths.items():
                big[label] = await measure(open_, request("/big", absolute), None, rounds)
                if absolute:
                    tunnel[label] = await measure(open_, request("/big", False), connect, rounds)
                small[label] = [sum(await measure(open_, request("/small", absolute), None, 100)) for _ in range(rounds)]

        base_big = statistics.median(big["direct"])
        base_small = statistics.median(small["direct"])
        print(f"egress proxy: added latency against a direct connection (median of {rounds} rounds, same run)")
        print("10 MB download:")
        for label, times in big.items():
            median = statistics.median(times)
            print(f"  {label:28} GET      {median * 1000:8.1f} ms  ({median / base_big:.2f}x direct, "
                  f"{BIG / median / 1e6:.0f} MB/s)")
            if label in tunnel:
                median = statistics.median(tunnel[label])
                print(f"  {label:28} CONNECT  {median * 1000:8.1f} ms  ({median / base_big:.2f}x direct, "
                      f"{BIG / median / 1e6:.0f} MB/s)")
        print("100 small requests, one connection each, one after another:")
        for label, totals in small.items():
            median = statistics.median(totals)
            added = (median - base_small) / 100 * 1000
            extra = "" if label == "direct" else f", +{added:.2f} ms per request"
            print(f"  {label:28} {median * 1000:8.1f} ms  ({median / base_small:.2f}x direct{extra})")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--proxy", nargs=2, metavar=("ROOT", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--forwarder", metavar="SOCKET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_upstream()
    elif args.proxy:
        serve_proxy(args.proxy[0], int(args.proxy[1]))
    elif args.forwarder:
        serve_forwarder(args.forwarder)
    else:
        asyncio.run(run(args.rounds))
