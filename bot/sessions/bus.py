"""In-process event bus: follow a session from any sequence number, replay then live.

Publishing never waits: each follower has a bounded buffer, and a follower that falls behind
is not fed further but marked as lagging; it then catches up by reading the session's log,
which holds every event. So a slow follower costs memory for one buffer, never the session's
progress, and never loses an event. Replay reads the log page by page until a page comes back
short, so a log of any length is replayed whole before the live tail starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from bot.events import Event
from bot.sessions.log import Page

ReadPage = Callable[[str, int], Page]
"""(session id, after seq) → the next page of the session's log."""


class _Follower:
    __slots__ = ("lagging", "queue")

    def __init__(self, size: int):
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=size)
        self.lagging = False


class EventBus:
    def __init__(self, read_page: ReadPage, buffer_size: int = 1000):
        self._read_page = read_page
        self._buffer_size = buffer_size
        self._followers: dict[str, set[_Follower]] = {}

    def publish(self, session_id: str, event: Event) -> None:
        for follower in self._followers.get(session_id, ()):
            if follower.lagging:
                continue
            try:
                follower.queue.put_nowait(event)
            except asyncio.QueueFull:
                follower.lagging = True
                _drain(follower.queue)
                follower.queue.put_nowait(event)  # a wake-up; it is skipped or re-read

    def follower_count(self, session_id: str) -> int:
        return len(self._followers.get(session_id, ()))

    async def follow(self, session_id: str, after_seq: int = 0) -> AsyncIterator[Event]:
        """Yield every event with seq > after_seq, in order, then live ones, until closed."""
        follower = _Follower(self._buffer_size)
        self._followers.setdefault(session_id, set()).add(follower)  # before reading: nothing falls between
        last = after_seq
        try:
            while True:
                while True:  # replay from the log, every page
                    page = self._read_page(session_id, last)
                    for event in page.events:
                        if event.seq > last:
                            last = event.seq
                            yield event
                    last = max(last, page.last_seq)
                    if not page.full:
                        break
                if follower.lagging:
                    # What it missed is in the log; no await between here and the next read.
                    follower.lagging = False
                    _drain(follower.queue)
                    continue
                while not follower.lagging:
                    event = await follower.queue.get()
                    if follower.lagging:
                        break
                    if event.seq <= last:
                        continue
                    if event.seq != last + 1:
                        break  # a gap (e.g. an event skipped in the log): the log decides
                    last = event.seq
                    yield event
        finally:
            followers = self._followers.get(session_id)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._followers[session_id]


def _drain(queue: asyncio.Queue[Event]) -> None:
    while not queue.empty():
        queue.get_nowait()
