"""The event log, the prompt queue and the bus, on real SQLite files."""

from __future__ import annotations

import asyncio

from bot.sessions.bus import EventBus
from bot.sessions.events import Author, Kind
from bot.sessions.log import SessionLog, SessionLogs


def test_prompts_run_in_order_key_order_not_arrival_order(tmp_path):
    log = SessionLog(tmp_path / "s.sqlite3")
    log.enqueue("second", Author("U2"), order_key=2.0)
    log.enqueue("first", Author("U1"), order_key=1.0)
    log.enqueue("third", Author("U3"), order_key=3.0)
    assert log.next_prompt().text == "first"  # type: ignore[union-attr]
    assert log.clear_queue() == 3
    assert log.next_prompt() is None
    kinds = [e.kind for e in log.read()]
    assert kinds == [Kind.PROMPT_QUEUED] * 3


def test_a_log_reopens_after_eviction_and_keeps_everything(tmp_path):
    logs = SessionLogs(tmp_path, keep_open=1)
    a = logs.get("aaaa")
    a.append(Kind.NOTE, {"text": "one"})
    logs.get("bbbb")  # evicts and closes a
    a.append(Kind.NOTE, {"text": "two"})  # a holder keeps working
    assert [e.data["text"] for e in logs.get("aaaa").read()] == ["one", "two"]


async def test_follow_replays_then_goes_live_without_gaps(tmp_path):
    log = SessionLog(tmp_path / "s.sqlite3")
    bus = EventBus(lambda sid, after: log.read(after, limit=3))  # small pages: replay crosses several

    def emit(i: int) -> None:
        bus.publish("s", log.append(Kind.NOTE, {"i": i}))

    for i in range(10):
        emit(i)
    seen: list[int] = []

    async def follow() -> None:
        async for event in bus.follow("s", after_seq=4):
            seen.append(event.data["i"])
            if event.data["i"] == 19:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.01)
    for i in range(10, 20):
        emit(i)
    await asyncio.wait_for(task, 2)
    assert seen == list(range(4, 20))
    assert bus.follower_count("s") == 0


async def test_a_slow_follower_never_blocks_publishing_and_still_gets_every_event(tmp_path):
    log = SessionLog(tmp_path / "s.sqlite3")
    bus = EventBus(lambda sid, after: log.read(after), buffer_size=5)
    slow_seen: list[int] = []
    gate = asyncio.Event()

    async def slow() -> None:
        async for event in bus.follow("s"):
            await gate.wait()
            slow_seen.append(event.data["i"])
            if event.data["i"] == 999:
                return

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    for i in range(1000):  # publish never awaits: this loop cannot be stalled by the follower
        bus.publish("s", log.append(Kind.NOTE, {"i": i}))
    gate.set()
    await asyncio.wait_for(task, 5)
    assert slow_seen == list(range(1000))
