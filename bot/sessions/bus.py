"""In-process event bus: follow a session from any sequence number, replay then live.

Publishing never waits: each follower has a bounded buffer, and a follower that falls behind
is not fed further but marked as lagging; it then catches up by reading the session's log,
which holds every event. So a slow follower costs memory for one buffer, never the session's
progress, and never loses an event.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

from bot.sessions.events import Event

ReadLog = Callable[[str, int], list[Event]]


class _Follower:
    __slots__ = ("queue", "lagging")

    def __init__(self, size: int):
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=size)
        self.lagging = False


class EventBus:
    def __init__(self, read_log: ReadLog, buffer_size: int = 1000):
        self._read_log = read_log
        self._buffer_size = buffer_size
        self._followers: dict[str, set[_Follower]] = defaultdict(set)

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
        self._followers[session_id].add(follower)  # before reading the log: nothing falls between
        last = after_seq
        try:
            while True:
                for event in self._read_log(session_id, last):
                    last = event.seq
                    yield event
                while not follower.lagging:
                    event = await follower.queue.get()
                    if follower.lagging:
                        break
                    if event.seq <= last:
                        continue
                    if event.seq != last + 1:
                        break  # a gap: the log has it
                    last = event.seq
                    yield event
                if follower.lagging:
                    follower.lagging = False
                    _drain(follower.queue)
        finally:
            followers = self._followers.get(session_id)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._followers[session_id]


def _drain(queue: asyncio.Queue[Event]) -> None:
    while not queue.empty():
        queue.get_nowait()
