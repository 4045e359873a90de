"""A session's own SQLite file: its append-only event log, its prompt queue, and small refs.

One file per session so no session's load touches another's. Writes are a few tens of
microseconds in WAL mode, so they run inline on the event loop: no thread hop on the hot path.
WAL with synchronous=NORMAL survives a killed process (not a power cut), which is what restart
recovery needs. Payloads are typed (`bot.events`); what cannot be read back is skipped.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bot.events import Author, Event, EventData, Origin, PromptQueued, dump, load

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    turn INTEGER,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS prompts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_key REAL NOT NULL,
    text TEXT NOT NULL,
    author_id TEXT NOT NULL,
    author_name TEXT,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS prompts_pending ON prompts(status, order_key, id);
CREATE TABLE IF NOT EXISTS refs (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

log = logging.getLogger(__name__)

QUEUED, RUNNING = "queued", "running"
PAGE = 1000
"""Events per read when replaying a log."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """A queued request of one person; its turn's events carry its id as `turn`."""

    id: int
    text: str
    author: Author
    status: str
    order_key: float


@dataclass(frozen=True, slots=True)
class Page:
    events: list[Event]
    last_seq: int
    """The highest seq this page looked at, skipped (unreadable) events included: where the next page starts."""
    full: bool
    """True when the page was full, so more may follow."""


class Mirror(Protocol):
    """Told every change of a log as it is made, in order (with PostgreSQL: copied to the shared log)."""

    def event(self, session_id: str, seq: int, ts: float, kind: str, turn: int | None, data: str) -> None: ...
    def prompt_status(self, session_id: str, prompt_id: int, status: str) -> None: ...
    def cleared(self, session_id: str) -> None: ...
    def ref(self, session_id: str, key: str, value: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A whole log, as a new owner rebuilds it: event rows, prompt rows and refs."""

    events: list[tuple[int, float, str, int | None, str]]
    prompts: list[tuple[int, float, str, str, str | None, str, str, float]]
    """(id, order_key, text, author_id, author_name, source, status, created_at)"""
    refs: list[tuple[str, str]]


class SessionLog:
    """Event log and prompt queue of one session. Reopens itself if its connection was closed."""

    def __init__(self, path: Path, mirror: Mirror | None = None, session_id: str | None = None):
        self.path = path
        self.mirror = mirror
        self.session_id = session_id or path.stem
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn or self.open()

    def open(self) -> sqlite3.Connection:
        """Open (creating the file if new); safe to call from a thread, as a new session does."""
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- events ---------------------------------------------------------------------------

    def append(self, data: EventData, turn: int | None = None) -> Event:
        ts = time.time()
        text = json.dumps(dump(data), ensure_ascii=False)
        cur = self.conn.execute("INSERT INTO events (ts, kind, turn, data) VALUES (?, ?, ?, ?)", (ts, data.kind, turn, text))
        assert cur.lastrowid is not None
        if self.mirror is not None:
            self.mirror.event(self.session_id, cur.lastrowid, ts, data.kind, turn, text)
        return Event(cur.lastrowid, ts, turn, data)

    def page(self, after_seq: int = 0, limit: int = PAGE, upto_seq: int | None = None) -> Page:
        """Events with seq > after_seq (and ≤ upto_seq), oldest first; unreadable ones are skipped."""
        rows = self.conn.execute(
            "SELECT seq, ts, kind, turn, data FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (after_seq, upto_seq if upto_seq is not None else 2**62, limit),
        ).fetchall()
        return Page(events_of(rows), rows[-1][0] if rows else after_seq, len(rows) == limit)

    def read(self, after_seq: int = 0, upto_seq: int | None = None) -> Iterator[Event]:
        """Every event after a seq, page by page."""
        while True:
            page = self.page(after_seq, upto_seq=upto_seq)
            yield from page.events
            if not page.full:
                return
            after_seq = page.last_seq

    def read_kinds(self, kinds: tuple[str, ...]) -> list[Event]:
        """All events of these kinds: what rebuilding a conversation needs, without the deltas."""
        marks = ",".join("?" * len(kinds))
        rows = self.conn.execute(
            f"SELECT seq, ts, kind, turn, data FROM events WHERE kind IN ({marks}) ORDER BY seq", kinds
        ).fetchall()
        return events_of(rows)

    def unfinished_step_text(self, turn: int) -> str:
        """Text streamed in a turn's last model step that never got its assistant_message."""
        rows = self.conn.execute(
            "SELECT data FROM events WHERE turn = ? AND kind = 'text_delta' AND seq > ("
            " SELECT COALESCE(MAX(seq), 0) FROM events WHERE turn = ? AND kind IN ('assistant_message', 'tool_result'))"
            " ORDER BY seq",
            (turn, turn),
        ).fetchall()
        return "".join(str(json.loads(r[0]).get("text", "")) for r in rows)

    def last_seq(self) -> int:
        row = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        return int(row[0])

    # -- prompt queue ---------------------------------------------------------------------

    def enqueue(self, text: str, author: Author, order_key: float, prompt_id: int | None = None) -> tuple[Prompt, Event]:
        """Queue a prompt and log it in one transaction, so neither exists without the other.

        `prompt_id` is the id the shared queue gave it (PostgreSQL); else the log numbers it."""
        with self._transaction():
            cur = self.conn.execute(
                "INSERT INTO prompts (id, order_key, text, author_id, author_name, source, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (prompt_id, order_key, text, author.id, author.name, author.origin.value, QUEUED, time.time()),
            )
            assert cur.lastrowid is not None
            prompt = Prompt(cur.lastrowid, text, author, QUEUED, order_key)
            ahead = self.conn.execute(
                "SELECT COUNT(*) FROM prompts WHERE status IN (?, ?) AND id != ?", (QUEUED, RUNNING, prompt.id)
            ).fetchone()[0]
            event = self.append(PromptQueued(prompt_id=prompt.id, text=text, author=author, queued_ahead=ahead),
                                turn=prompt.id)
        return prompt, event

    def next_prompt(self) -> Prompt | None:
        row = self.conn.execute(
            "SELECT id, text, author_id, author_name, source, status, order_key FROM prompts"
            " WHERE status = ? ORDER BY order_key, id LIMIT 1",
            (QUEUED,),
        ).fetchone()
        if row is None:
            return None
        pid, text, author_id, author_name, source, status, order_key = row
        return Prompt(pid, text, Author(id=author_id, name=author_name, origin=Origin.parse(source)), status, order_key)

    def set_prompt_status(self, prompt_id: int, status: str) -> None:
        self.conn.execute("UPDATE prompts SET status = ? WHERE id = ?", (status, prompt_id))
        if self.mirror is not None:
            self.mirror.prompt_status(self.session_id, prompt_id, status)

    def prompts_with_status(self, status: str) -> list[int]:
        rows = self.conn.execute("SELECT id FROM prompts WHERE status = ? ORDER BY id", (status,)).fetchall()
        return [int(r[0]) for r in rows]

    def queued_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM prompts WHERE status = ?", (QUEUED,)).fetchone()[0])

    def clear_queue(self) -> int:
        cur = self.conn.execute("UPDATE prompts SET status = 'cleared' WHERE status = ?", (QUEUED,))
        if cur.rowcount and self.mirror is not None:
            self.mirror.cleared(self.session_id)
        return cur.rowcount

    # -- refs: small values surfaces keep with the session (e.g. a Slack message ts) ------

    def set_ref(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO refs (key, value) VALUES (?, ?)", (key, value))
        if self.mirror is not None:
            self.mirror.ref(self.session_id, key, value)

    def get_ref(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM refs WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    # -- a new owner's copy --------------------------------------------------------------

    def replace_with(self, snapshot: Snapshot) -> None:
        """Make this file a copy of the shared log (a session taken over from another instance).

        Not mirrored: it is what the shared log already holds."""
        with self._transaction():
            for table in ("events", "prompts", "refs"):
                self.conn.execute(f"DELETE FROM {table}")
            self.conn.execute("DELETE FROM sqlite_sequence")
            self.conn.executemany("INSERT INTO events (seq, ts, kind, turn, data) VALUES (?, ?, ?, ?, ?)", snapshot.events)
            self.conn.executemany(
                "INSERT INTO prompts (id, order_key, text, author_id, author_name, source, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", snapshot.prompts)
            self.conn.executemany("INSERT INTO refs (key, value) VALUES (?, ?)", snapshot.refs)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")


def events_of(rows: list[tuple[int, float, str, int | None, str]]) -> list[Event]:
    events = []
    for seq, ts, kind, turn, text in rows:
        try:
            raw = json.loads(text)
        except ValueError:
            raw = None
        if not isinstance(raw, dict):
            log.warning("skipping event %d (%s): its data is not a JSON object", seq, kind)
            continue
        data = load(kind, raw)
        if data is not None:
            events.append(Event(seq, ts, turn, data))
    return events


class SessionLogs:
    """Opens session logs on demand and keeps the most recently used ones open."""

    def __init__(self, directory: Path, keep_open: int = 256, mirror: Mirror | None = None):
        self.directory = directory
        self.keep_open = keep_open
        self.mirror = mirror
        self._open: OrderedDict[str, SessionLog] = OrderedDict()

    def get(self, session_id: str) -> SessionLog:
        slog = self._open.get(session_id)
        if slog is None:
            slog = SessionLog(self.directory / f"{session_id}.sqlite3", self.mirror, session_id)
            self._open[session_id] = slog
            while len(self._open) > self.keep_open:
                _, evicted = self._open.popitem(last=False)
                evicted.close()  # holders may keep it: it reopens itself on next use
        else:
            self._open.move_to_end(session_id)
        return slog

    def close_all(self) -> None:
        for slog in self._open.values():
            slog.close()
        self._open.clear()
