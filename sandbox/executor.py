"""Host side of the in-container executor (see executor_agent.py for the other side).

One connection per container, many requests in flight, matched by id. The backend hands over a
`Transport`: the executor's output as plain bytes (Docker's stream framing is the backend's
business) and a way to write requests. Every request has a host-side deadline; a reply that
never comes, or output that breaks the framing, drops the connection and the next request
starts a fresh executor. If the container itself is gone, `WorkspaceLost` says so.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from pydantic import BaseModel, ValidationError

from sandbox.framing import FrameBuffer, ProtocolError
from sandbox.protocol import WORKSPACE, Absent, Cancel, Reply, Request
from sandbox.workspace import WorkspaceError, WorkspaceLost

log = logging.getLogger(__name__)

SCRIPT = (Path(__file__).parent / "executor_agent.py").read_text()
R = TypeVar("R", bound=BaseModel)



class ExecutorError(WorkspaceError):
    """The executor refused a request (bad path, missing file, ...) or could not answer it."""


class ExecutorGone(Exception):
    """The connection to the executor closed."""


class NoPython(Exception):
    """The image has no usable python3: the shell executor is the way in."""


_ABSENT = json.dumps({"absent": "python3"})
START = ["sh", "-c", f'if command -v python3 >/dev/null 2>&1; then exec python3 -u -c "$1" {WORKSPACE}; '
         f"else printf '%s\\n%s' {len(_ABSENT)} '{_ABSENT}'; fi", "sh", SCRIPT]
"""Starts the executor with python3, or says (in a frame) that there is none; sh is all it assumes."""


class Transport(Protocol):
    """A connection to one executor process, given by the backend."""

    async def read(self) -> bytes:
        """The executor's next output bytes; b"" when the connection has ended."""
        ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


Connect = Callable[[], Awaitable[Transport]]


class Connection:
    """One executor process: its transport, the requests waiting on it, its receive buffer."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.frames = FrameBuffer()
        self.size: int | None = None
        self.partial: Any = None
        """A decoder's state between reads (the shell executor's reply header)."""
        self.absent = False
        self.reader: asyncio.Task[None] | None = None

    def drop(self) -> None:
        """Close it and fail what waited on it."""
        self.transport.close()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ExecutorGone())


class Executor:
    """Requests to one container's executor. `connect` starts a fresh executor process."""

    margin = 10.0
    """Seconds the host waits past a request's own timeout before it gives the executor up."""

    def __init__(self, connect: Connect, alive: Callable[[], Awaitable[bool]], name: str):
        self._connect = connect
        self._alive = alive
        self.name = name
        self._ids = itertools.count(1)
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()

    async def call(self, request: Request[R]) -> R:
        """Send one request and wait for its typed result; raises ExecutorError for a refusal."""
        reply: Reply = await self._roundtrip(request, lambda rid: self._encode(rid, request))
        if not reply.ok:
            raise ExecutorError(reply.error or "the executor refused the request")
        try:
            return cast(R, request.result.model_validate(reply.result or {}))
        except ValidationError as exc:
            raise ExecutorError(f"the executor's reply did not make sense ({exc.errors()[0]['msg']})") from None

    async def _connection(self) -> Connection:
        if self._conn is not None:
            return self._conn
        async with self._lock:
            if self._conn is not None:
                return self._conn
            try:
                transport = await self._connect()
            except Exception as exc:
                if not await self._alive():
                    raise WorkspaceLost(str(exc) or "container not running") from exc
                raise ExecutorError(f"the sandbox's executor could not be started ({exc})") from exc
            conn = self._conn = Connection(transport)
            conn.reader = asyncio.create_task(self._read(conn), name=f"executor-{self.name}")
            return conn

    async def _roundtrip(self, request: Request[Any], encode: Callable[[int], bytes]) -> Any:
        """Send, wait within the host deadline, retry a safe request once on a fresh executor."""
        for attempt in (1, 2):
            conn = await self._connection()
            rid = next(self._ids)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            conn.pending[rid] = future
            limit = request.host_timeout(self.margin)
            try:
                conn.transport.write(encode(rid))
                async with asyncio.timeout(limit):
                    return await future
            except TimeoutError:
                log.warning("executor %s: no reply to %s within %g s; restarting it", self.name, type(request).__name__, limit)
                self._drop(conn)
                raise ExecutorError(f"the sandbox's executor did not answer within {limit:g} s; "
                                    "it was restarted, run the call again") from None
            except ExecutorGone:
                if conn.absent:
                    raise NoPython() from None
                if not await self._container_survived():
                    raise WorkspaceLost("the container stopped") from None
                if attempt == 2 or not request.retry_safe:
                    raise ExecutorError("the sandbox's executor restarted during this call; run it again") from None
            except asyncio.CancelledError:
                if request.cancellable and self._conn is conn:
                    self._cancel(conn, rid)  # kill its process group
                raise
            finally:
                conn.pending.pop(rid, None)
        raise AssertionError("unreachable")

    def _encode(self, rid: int, request: Request[Any]) -> bytes:
        data = json.dumps({**request.model_dump(), "id": rid}).encode()
        return b"%d\n%s" % (len(data), data)

    def _cancel(self, conn: Connection, rid: int) -> None:
        conn.transport.write(self._encode(next(self._ids), Cancel(target=rid)))

    async def _container_survived(self) -> bool:
        """After the executor's connection dropped: is the container still up? The engine may
        report a container that was just killed as running for a moment, so look a few times."""
        for _ in range(10):
            if not await self._alive():
                return False
            await asyncio.sleep(0.05)
        return True

    async def _read(self, conn: Connection) -> None:
        try:
            while data := await conn.transport.read():
                conn.frames.feed(data)
                self._received(conn)
                conn.frames.compact()
        except ProtocolError as exc:
            log.warning("executor %s broke the protocol (%s); it is restarted on the next call", self.name, exc)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._drop(conn)

    def _received(self, conn: Connection) -> None:
        """Take the complete frames (`length\\n` + JSON) off the buffer."""
        frames = conn.frames
        while True:
            if conn.size is None:
                header = frames.line()
                if header is None:
                    return
                conn.size = frames.size(header)
            body = frames.take(conn.size)
            if body is None:
                return
            conn.size = None
            self._message(conn, body)

    def _message(self, conn: Connection, body: bytes) -> None:
        try:
            message = json.loads(body)
            if isinstance(message, dict) and "absent" in message:
                Absent.model_validate(message)
                conn.absent = True
                return
            reply = Reply.model_validate(message)
        except (ValueError, ValidationError) as exc:
            raise ProtocolError(f"an unreadable message ({str(exc)[:100]})") from None
        self._resolve(conn, reply.id, reply)

    @staticmethod
    def _resolve(conn: Connection, rid: int, payload: Any) -> None:
        future = conn.pending.get(rid)
        if future is not None and not future.done():
            future.set_result(payload)

    def _drop(self, conn: Connection) -> None:
        """Give this executor process up; the next call starts a new one."""
        if self._conn is conn:
            self._conn = None
        conn.drop()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.drop()
            if conn.reader is not None:
                conn.reader.cancel()
                await asyncio.gather(conn.reader, return_exceptions=True)
