"""The event log, the prompt queue and the bus, on real SQLite files."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3

import pytest

from bot.events import Author, Note, TextDelta
from bot.sessions.bus import EventBus
from bot.sessions.log import SessionLog, SessionLogs


def numbered(log: SessionLog, i: int):  # type: ignore[no-untyped-def]
    return log.append(Note(text=str(i)))


def test_prompts_run_in_order_key_order_not_arrival_order(tmp_path):
    log = SessionLog(tmp_path / "s.sqlite3")
    log.enqueue("second", Author(id="U2"), order_key=2.0)
    log.enqueue("first", Author(id="U1"), order_key=1.0)
    log.enqueue("third", Author(id="U3"), order_key=3.0)
    assert log.next_prompt().text == "first"  # type: ignore[union-attr]
    assert log.clear_queue() == 3
    assert log.next_prompt() is None
    assert [e.kind for e in log.read()] == ["prompt_queued"] * 3


def test_a_log_reopens_after_eviction_and_keeps_everything(tmp_path):
    logs = SessionLogs(tmp_path, keep_open=1)
    a = logs.get("aaaa")
    a.append(Note(text="one"))
    logs.get("bbbb")  # evicts and closes a
    a.append(Note(text="two"))  # a holder keeps working
    assert [e.data.text for e in logs.get("aaaa").read()] == ["one", "two"]  # type: ignore[union-attr]


def test_old_and_unknown_and_malformed_events_are_read_or_skipped_never_a_crash(tmp_path, caplog):
    path = tmp_path / "s.sqlite3"
    log = SessionLog(path)
    log.append(Note(text="before"))
    raw = sqlite3.connect(path)
    rows = [
        ("turn_started", 1, {"prompt_id": 1, "text": "v1", "author": {"id": "U1", "name": None, "source": "slack"}}),
        ("queue_cleared", None, {"count": 2, "by": "U1"}),  # a version-1 kind, renamed since
        ("session_idle", None, {}),
        ("from_the_future", None, {"x": 1}),
        ("text_delta", 1, {"no_text": True}),
        ("note", None, "not an object"),
        ("prompt_queued", 1, {"prompt_id": 1, "text": "x", "author": "U1"}),  # an author that is not an object
        ("turn_started", 1, {"v": "two", "prompt_id": 1, "text": "x", "author": {"id": "U1"}}),
    ]
    for kind, turn, data in rows:
        raw.execute("INSERT INTO events (ts, kind, turn, data) VALUES (0, ?, ?, ?)", (kind, turn, json.dumps(data)))
    raw.execute("INSERT INTO events (ts, kind, turn, data) VALUES (0, 'note', NULL, '{broken')")
    raw.commit()
    log.append(Note(text="after"))
    with caplog.at_level(logging.WARNING):
        events = list(log.read())
    assert [e.kind for e in events] == ["note", "turn_started", "queue_changed", "status", "note"]
    assert events[1].data.author.origin == "slack_thread"  # type: ignore[union-attr]
    assert events[2].data.cleared == 2  # type: ignore[union-attr]
    assert "from_the_future" in caplog.text and "malformed text_delta" in caplog.text


def test_an_event_is_validated_when_appended(tmp_path):
    with pytest.raises(ValueError):
        SessionLog(tmp_path / "s.sqlite3").append(TextDelta(text=None))  # type: ignore[arg-type]


async def test_follow_replays_then_goes_live_without_gaps(tmp_path):
    log = SessionLog(tmp_path / "s.sqlite3")
    bus = EventBus(lambda sid, after: log.page(after, limit=3))  # small pages: replay crosses several

    def emit(i: int) -> None:
        bus.publish("s", numbered(log, i))

    for i in range(10):
        emit(i)
    seen: list[int] = []

    async def follow() -> None:
        async for event in bus.follow("s", after_seq=4):
            seen.append(int(event.data.text))  # type: ignore[union-attr]
            if event.data.text == "19":  # type: ignore[union-attr]
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.01)
    for i in range(10, 20):
        emit(i)
    await asyncio.wait_for(task, 2)
    assert seen == list(range(4, 20))
    assert bus.follower_count("s") == 0


@pytest.mark.parametrize("start", [0, 2500, 5000])
async def test_a_follower_joining_anywhere_in_5000_events_sees_each_exactly_once_in_order(tmp_path, start):
    """Replay crosses five pages and the seam to the live tail; nothing new has to arrive for it to finish."""
    log = SessionLog(tmp_path / "s.sqlite3")
    bus = EventBus(lambda sid, after: log.page(after))
    for i in range(5000):
        bus.publish("s", numbered(log, i))
    seen: list[int] = []

    async def follow(until: int) -> None:
        async for event in bus.follow("s", after_seq=start):
            seen.append(event.seq)
            if event.seq == until:
                return

    if start < 5000:
        await asyncio.wait_for(follow(5000), 5)  # the whole replay, with no live event to wake it
        assert seen == list(range(start + 1, 5001))
    seen.clear()
    task = asyncio.create_task(follow(5100))
    for i in range(100):  # live events, published while the follower replays
        bus.publish("s", numbered(log, 5000 + i))
        if i % 10 == 0:
            await asyncio.sleep(0)
    await asyncio.wait_for(task, 5)
    assert seen == list(range(start + 1, 5101))


async def test_a_slow_follower_never_blocks_publishing_and_still_gets_every_event(tmp_path):
    log = SessionLog(tmp_path / "s.sqlite3")
    bus = EventBus(lambda sid, after: log.page(after), buffer_size=5)
    slow_seen: list[int] = []
    gate = asyncio.Event()

    async def slow() -> None:
        async for event in bus.follow("s"):
            await gate.wait()
            slow_seen.append(int(event.data.text))  # type: ignore[union-attr]
            if event.data.text == "999":  # type: ignore[union-attr]
                return

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    for i in range(1000):  # publish never awaits: this loop cannot be stalled by the follower
        bus.publish("s", numbered(log, i))
    gate.set()
    await asyncio.wait_for(task, 5)
    assert slow_seen == list(range(1000))
