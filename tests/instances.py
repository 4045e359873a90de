"""Real `hosted-agents serve` processes on one PostgreSQL, for the several-instances test and bench."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.conftest import service_env
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack

SERVE = str(Path(sys.executable).with_name("hosted-agents"))


@dataclass
class Instance:
    name: str
    port: int
    process: asyncio.subprocess.Process
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (from /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """kill -9: no shutdown, no goodbye to PostgreSQL or Slack."""
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_instances(count: int, root: Path, pg_url: str, slack: FakeSlack, model: FakeOpenAI,
                          prefix: str = "i", **extra: Any) -> list[Instance]:
    """`count` instances named i1…iN, each with its own DATA_DIR and web port, all ready."""
    instances = []
    for n in range(1, count + 1):
        name, port = f"{prefix}{n}", free_port()
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
               **service_env(root / name, slack, model, database_url=pg_url, instance_id=name, web_port=port, **extra)}
        log = root / f"{name}.log"
        handle = log.open("wb")
        process = await asyncio.create_subprocess_exec(SERVE, "serve", env=env, stdout=handle, stderr=handle,
                                                       cwd=str(root))
        handle.close()
        instances.append(Instance(name, port, process, log))
    await asyncio.gather(*(ready(i) for i in instances))
    return instances


async def ready(instance: Instance, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            if instance.process.returncode is not None:
                raise AssertionError(f"{instance.name} exited: {instance.log.read_text()[-3000:]}")
            try:
                async with http.get(f"{instance.base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{instance.name} not ready: {instance.log.read_text()[-3000:]}")
            await asyncio.sleep(0.2)


async def owners(pg_url: str) -> dict[str, str]:
    """session id → the instance holding its lease."""
    conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
    try:
        return {r["session_id"]: r["owner"] for r in await conn.fetch("SELECT session_id, owner FROM session_leases")}
    finally:
        await conn.close()


async def session_by_thread(pg_url: str, thread_ts: str, channel: str = "C0000001") -> tuple[str, str]:
    """(session id, share token) of the session bound to a Slack thread."""
    conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
    try:
        row = await conn.fetchrow(
            "SELECT s.id, s.share_token FROM sessions s JOIN session_surfaces f ON f.session_id = s.id"
            " WHERE f.kind = 'slack_thread' AND f.key = $1", f"{channel}:{thread_ts}")
    finally:
        await conn.close()
    assert row is not None, f"no session for thread {thread_ts}"
    return str(row["id"]), str(row["share_token"])


async def wait_for_ref(pg_url: str, session_id: str, timeout: float = 10) -> None:
    """Until the session's owner has a Slack ref in PostgreSQL (its first message's ts reached the shared log)."""
    conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
    try:
        deadline = time.monotonic() + timeout
        while not await conn.fetchval("SELECT count(*) FROM session_refs WHERE session_id = $1", session_id):
            assert time.monotonic() < deadline, "the owner's Slack refs never reached PostgreSQL"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
