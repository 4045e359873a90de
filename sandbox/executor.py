"""Host side of the in-container executor (see executor_agent.py for the other side).

One connection per container, many requests in flight, matched by id. If the executor dies the
next request starts a new one; if the container itself is gone, `SandboxLost` says so.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCRIPT = (Path(__file__).parent / "executor_agent.py").read_text()


class SandboxLost(Exception):
    """The container stopped or vanished; the session needs a new one."""

    def __str__(self) -> str:
        return f"The sandbox stopped unexpectedly ({self.args[0] if self.args else 'container gone'}); the next prompt gets a fresh one."


class ExecutorError(Exception):
    """The executor refused a request (bad path, missing file, ...): the model can fix it."""


class ExecutorGone(Exception):
    """The connection to the executor closed."""


class NoPython(Exception):
    """The image has no python3: the shell executor is the way in."""


NO_PYTHON = b"no-python3"
START = ["sh", "-c", f'if command -v python3 >/dev/null 2>&1; then exec python3 -u -c "$1" /workspace; '
         f'else echo {NO_PYTHON.decode()}; fi', "sh", SCRIPT]
"""Starts the executor with python3, or says there is none (sh is the only thing assumed)."""


Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class Executor:
    """Requests to one container's executor. `connect` opens a fresh executor stream."""

    def __init__(self, connect: Connect, alive: Callable[[], Awaitable[bool]], name: str):
        self._connect = connect
        self._alive = alive
        self.name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._chunks: dict[int, Callable[[str], None]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._buffer = b""

    async def start(self) -> None:
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                return
            try:
                reader, self._writer = await self._connect()
            except Exception as exc:
                if not await self._alive():
                    raise SandboxLost(str(exc) or "container not running") from exc
                raise
            self._reader_task = asyncio.create_task(self._read(reader), name=f"executor-{self.name}")

    async def request(self, op: str, on_chunk: Callable[[str], None] | None = None, **args: Any) -> dict[str, Any]:
        """Send one request and wait for its reply; raises ExecutorError for a refusal."""
        for attempt in (1, 2):
            await self.start()
            rid = next(self._ids)
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._pending[rid] = future
            if on_chunk:
                self._chunks[rid] = on_chunk
            try:
                self._send({"id": rid, "op": op, **args})
                reply = await future
            except ExecutorGone:
                if self._buffer.startswith(NO_PYTHON):
                    raise NoPython() from None
                if not await self._container_survived():
                    raise SandboxLost("the container stopped") from None
                if attempt == 2 or op not in ("ping", "read", "list", "search"):
                    raise ExecutorError("the sandbox's executor restarted during this call; run it again") from None
                continue  # a read is safe to repeat on a fresh executor
            except asyncio.CancelledError:
                if op in ("exec", "search", "sh") and self._writer is not None and not self._writer.is_closing():
                    self._send({"id": next(self._ids), "op": "cancel", "target": rid})  # kill its process group
                raise
            finally:
                self._pending.pop(rid, None)
                self._chunks.pop(rid, None)
            if not reply.get("ok"):
                raise ExecutorError(reply.get("error") or "the executor refused the request")
            return reply["result"]
        raise AssertionError("unreachable")

    async def _container_survived(self) -> bool:
        """After the executor's connection dropped: is the container still up? The engine may
        report a container that was just killed as running for a moment, so look a few times."""
        for _ in range(10):
            if not await self._alive():
                return False
            await asyncio.sleep(0.05)
        return True

    def _send(self, message: dict[str, Any]) -> None:
        assert self._writer is not None
        data = json.dumps(message).encode()
        self._writer.write(str(len(data)).encode() + b"\n" + data)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Demultiplex Docker's stream frames; stdout goes to the protocol's parser."""
        self._buffer = b""
        try:
            while True:
                header = await reader.readexactly(8)
                stream, size = header[0], struct.unpack(">I", header[4:])[0]
                payload = await reader.readexactly(size)
                if stream == 2:
                    log.warning("executor %s: %s", self.name, payload.decode("utf-8", "replace").rstrip()[:2000])
                    continue
                self._buffer += payload
                self._parse()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, OSError):
            pass
        finally:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ExecutorGone())

    def _parse(self) -> None:
        """Take the complete frames (`length\n` + JSON) off the buffer."""
        if self._buffer.startswith(NO_PYTHON):
            return
        while b"\n" in self._buffer:
            length_text, rest = self._buffer.split(b"\n", 1)
            length = int(length_text)
            if len(rest) < length:
                return
            self._dispatch(json.loads(rest[:length]))
            self._buffer = rest[length:]

    def _dispatch(self, message: dict[str, Any]) -> None:
        rid = message.get("id")
        if "chunk" in message:
            callback = self._chunks.get(rid)  # type: ignore[arg-type]
            if callback:
                callback(message["chunk"])
            return
        future = self._pending.get(rid)  # type: ignore[arg-type]
        if future is not None and not future.done():
            future.set_result(message)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
