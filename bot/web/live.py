"""The live half of a session page: its events over a WebSocket, and who is watching.

A page subscribes with the last sequence number it has (`?after=N`) and gets every later event
exactly once, in order: the sessions layer's `follow` replays the log then tails it, so a
reconnect after a drop, a sleep or a reload resumes with no gap and no duplicate. Frames are
JSON arrays: whatever piled up while the last frame was being sent goes out together, so a
fast stream to many viewers costs a frame per viewer per moment, not per token.

Each event is encoded once however many people watch (a small cache by session and seq), and
the model's finished Markdown is rendered here, once, to safe HTML (bot/web/markdown.py).
Presence: the names of signed-in viewers and a count of anonymous ones, sent to every viewer
of the session when someone comes or goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web
from cachetools import LRUCache

from bot.events import AssistantMessage, Event, dump
from bot.web.identity import Viewer
from bot.web.markdown import render

log = logging.getLogger(__name__)

FRAME_EVENTS = 500
"""Most events in one frame (a replay of a long log goes out in several)."""
BACKLOG = 2000
"""Encoded events waiting for one viewer's socket; past it the viewer reads on from the log."""
INLINE_MARKDOWN = 2000
"""Characters of Markdown rendered on the event loop; a longer answer is rendered in a thread."""
TYPING_EVERY = 20.0
"""Seconds between two warm-ups asked by one viewer's typing."""


class LiveSessions(Protocol):
    def follow(self, session_id: str, after_seq: int = 0) -> AsyncIterator[Event]: ...


Warm = Callable[[Viewer], Awaitable[None]]


class Presence:
    """Who watches which session, on this instance."""

    def __init__(self) -> None:
        self._viewers: dict[str, dict[web.WebSocketResponse, Viewer | None]] = {}

    def join(self, session_id: str, ws: web.WebSocketResponse, viewer: Viewer | None) -> None:
        self._viewers.setdefault(session_id, {})[ws] = viewer

    def leave(self, session_id: str, ws: web.WebSocketResponse) -> None:
        viewers = self._viewers.get(session_id)
        if viewers is not None:
            viewers.pop(ws, None)
            if not viewers:
                del self._viewers[session_id]

    def snapshot(self, session_id: str) -> dict[str, Any]:
        viewers = self._viewers.get(session_id, {})
        names = sorted({v.display for v in viewers.values() if v is not None})
        return {"type": "presence", "names": names, "anonymous": sum(1 for v in viewers.values() if v is None)}

    def sockets(self, session_id: str) -> list[web.WebSocketResponse]:
        return list(self._viewers.get(session_id, {}))

    def count(self) -> int:
        return sum(len(v) for v in self._viewers.values())

    async def close_all(self) -> None:
        """At shutdown: pages reconnect (to this instance once it is back, or to another)."""
        for viewers in list(self._viewers.values()):
            for ws in list(viewers):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    async def announce(self, session_id: str) -> None:
        frame = json.dumps([self.snapshot(session_id)])
        for ws in self.sockets(session_id):
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(frame)


class EventEncoder:
    """Events as the page reads them; each encoded once for all its viewers. A long answer's
    Markdown is rendered in a thread (tens of milliseconds for a long one), once, while the
    viewers that need it wait for that one rendering."""

    def __init__(self, size: int = 4096):
        self._cache: LRUCache[tuple[str, int], str] = LRUCache(size)
        self._rendering: dict[tuple[str, int], asyncio.Future[str]] = {}

    async def encode(self, session_id: str, event: Event) -> str:
        key = (session_id, event.seq)
        if (cached := self._cache.get(key)) is not None:
            return cached
        if (pending := self._rendering.get(key)) is not None:
            return await asyncio.shield(pending)
        data = event.data
        if not (isinstance(data, AssistantMessage) and len(data.content) > INLINE_MARKDOWN):
            encoded = self._cache[key] = _encode(event)
            return encoded
        future = self._rendering[key] = asyncio.get_running_loop().create_future()
        try:
            encoded = await asyncio.to_thread(_encode, event)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._rendering[key]
        self._cache[key] = encoded
        future.set_result(encoded)
        return encoded


def _encode(event: Event) -> str:
    return json.dumps(as_json(event), ensure_ascii=False)


def as_json(event: Event) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "event", "seq": event.seq, "ts": event.ts, "turn": event.turn,
                            "kind": event.kind, "data": dump(event.data)}
    data = event.data
    if isinstance(data, AssistantMessage) and data.content:
        item["html"] = render(data.content)
    return item


async def serve_socket(request: web.Request, sessions: LiveSessions, session_id: str, viewer: Viewer | None,
                       presence: Presence, encoder: EventEncoder, warm: Warm | None) -> web.WebSocketResponse:
    """Stream a session's events from `?after=` to one page, until it goes away."""
    try:
        after = max(0, int(request.query.get("after", "0")))
    except ValueError:
        raise web.HTTPBadRequest(text="after must be a sequence number") from None
    # No per-message compression: frames are small, and each viewer would compress the same
    # frame again with a compressor of its own (a tenth of a core and ~14 MiB at 100 viewers).
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=4096, compress=False)
    await ws.prepare(request)
    queue: asyncio.Queue[str] = asyncio.Queue(BACKLOG)

    async def feed() -> None:
        async for event in sessions.follow(session_id, after):
            await queue.put(await encoder.encode(session_id, event))

    async def send() -> None:
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < FRAME_EVENTS:
                batch.append(queue.get_nowait())
            await ws.send_str("[" + ",".join(batch) + "]")

    presence.join(session_id, ws, viewer)
    tasks = [asyncio.create_task(feed(), name=f"web-feed-{session_id}"),
             asyncio.create_task(send(), name=f"web-send-{session_id}")]
    try:
        await presence.announce(session_id)
        await _receive(ws, viewer, warm, tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        presence.leave(session_id, ws)
        await presence.announce(session_id)
        await ws.close()
    return ws


async def _receive(ws: web.WebSocketResponse, viewer: Viewer | None, warm: Warm | None,
                   tasks: list[asyncio.Task[None]]) -> None:
    """What the page sends: `{"type": "typing"}` while someone types a prompt. Ends when the socket
    closes, or when streaming to it failed."""
    last_warm = 0.0
    reading = asyncio.ensure_future(ws.receive())
    try:
        while True:
            done, _ = await asyncio.wait([reading, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if reading not in done:
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        log.info("a session page's stream ended: %r", task.exception())
                return
            msg = reading.result()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if msg.type is WSMsgType.TEXT and viewer is not None and warm is not None and _is_typing(msg.data):
                now = time.monotonic()
                if now - last_warm >= TYPING_EVERY:
                    last_warm = now
                    try:
                        await warm(viewer)
                    except Exception:
                        log.exception("warming a sandbox for a typing viewer failed")
            reading = asyncio.ensure_future(ws.receive())
    finally:
        reading.cancel()


def _is_typing(text: str) -> bool:
    try:
        message = json.loads(text)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("type") == "typing"
