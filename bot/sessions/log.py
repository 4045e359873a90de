"""A session's own SQLite file: its append-only event log, its prompt queue, and small refs.

One file per session so no session's load touches another's. Writes are a few tens of
microseconds in WAL mode, so they run inline on the event loop: no thread hop on the hot path.
WAL with synchronous=NORMAL survives a killed process (not a power cut), which is what restart
recovery needs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from bot.sessions.events import Author, Event, Kind, Prompt

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

QUEUED, RUNNING = "queued", "running"


class SessionLog:
    """Event log and prompt queue of one session. Reopens itself if its connection was closed."""

    def __init__(self, path: Path):
        self.path = path
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- events ---------------------------------------------------------------------------

    def append(self, kind: Kind, data: dict[str, Any] | None = None, turn: int | None = None) -> Event:
        data = data or {}
        ts = time.time()
        cur = self.conn.execute(
            "INSERT INTO events (ts, kind, turn, data) VALUES (?, ?, ?, ?)",
            (ts, kind.value, turn, json.dumps(data, ensure_ascii=False)),
        )
        assert cur.lastrowid is not None
        return Event(cur.lastrowid, ts, kind, turn, data)

    def read(self, after_seq: int = 0, limit: int = 1000) -> list[Event]:
        rows = self.conn.execute(
            "SELECT seq, ts, kind, turn, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [Event(seq, ts, Kind(kind), turn, json.loads(data)) for seq, ts, kind, turn, data in rows]

    def read_kinds(self, kinds: tuple[Kind, ...]) -> list[Event]:
        """All events of these kinds: what rebuilding a conversation needs, without the deltas."""
        marks = ",".join("?" * len(kinds))
        rows = self.conn.execute(
            f"SELECT seq, ts, kind, turn, data FROM events WHERE kind IN ({marks}) ORDER BY seq",
            [k.value for k in kinds],
        ).fetchall()
        return [Event(seq, ts, Kind(kind), turn, json.loads(data)) for seq, ts, kind, turn, data in rows]

    def turn_events(self, turn: int, kind: Kind) -> list[Event]:
        rows = self.conn.execute(
            "SELECT seq, ts, kind, turn, data FROM events WHERE turn = ? AND kind = ? ORDER BY seq", (turn, kind.value)
        ).fetchall()
        return [Event(seq, ts, Kind(k), t, json.loads(data)) for seq, ts, k, t, data in rows]

    def unfinished_step_text(self, turn: int) -> str:
        """Text streamed in a turn's last model step that never got its assistant_message."""
        rows = self.conn.execute(
            "SELECT data FROM events WHERE turn = ? AND kind = ? AND seq > ("
            " SELECT COALESCE(MAX(seq), 0) FROM events WHERE turn = ? AND kind IN (?, ?)) ORDER BY seq",
            (turn, Kind.TEXT_DELTA.value, turn, Kind.ASSISTANT_MESSAGE.value, Kind.TOOL_RESULT.value),
        ).fetchall()
        return "".join(json.loads(r[0]).get("text", "") for r in rows)

    def last_seq(self) -> int:
        row = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        return int(row[0])

    # -- prompt queue ---------------------------------------------------------------------

    def enqueue(self, text: str, author: Author, order_key: float) -> tuple[Prompt, Event]:
        """Queue a prompt and log it in one transaction, so neither exists without the other."""
        with self._transaction():
            cur = self.conn.execute(
                "INSERT INTO prompts (order_key, text, author_id, author_name, source, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (order_key, text, author.id, author.name, author.source, QUEUED, time.time()),
            )
            assert cur.lastrowid is not None
            prompt = Prompt(cur.lastrowid, text, author, QUEUED, order_key)
            ahead = self.conn.execute(
                "SELECT COUNT(*) FROM prompts WHERE status IN (?, ?) AND id != ?", (QUEUED, RUNNING, prompt.id)
            ).fetchone()[0]
            event = self.append(
                Kind.PROMPT_QUEUED,
                {
                    "prompt_id": prompt.id,
                    "text": text,
                    "author": {"id": author.id, "name": author.name, "source": author.source},
                    "queued_ahead": ahead,
                },
                turn=prompt.id,
            )
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
        return Prompt(pid, text, Author(author_id, author_name, source), status, order_key)

    def set_prompt_status(self, prompt_id: int, status: str) -> None:
        self.conn.execute("UPDATE prompts SET status = ? WHERE id = ?", (status, prompt_id))

    def prompts_with_status(self, status: str) -> list[int]:
        rows = self.conn.execute("SELECT id FROM prompts WHERE status = ? ORDER BY id", (status,)).fetchall()
        return [r[0] for r in rows]

    def queued_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM prompts WHERE status = ?", (QUEUED,)).fetchone()[0])

    def clear_queue(self) -> int:
        cur = self.conn.execute("UPDATE prompts SET status = 'cleared' WHERE status = ?", (QUEUED,))
        return cur.rowcount

    # -- refs: small values clients keep with the session (e.g. a Slack message ts) -------

    def set_ref(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO refs (key, value) VALUES (?, ?)", (key, value))

    def get_ref(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM refs WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _transaction(self):  # type: ignore[no-untyped-def]
        return _Transaction(self.conn)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


class SessionLogs:
    """Opens session logs on demand and keeps the most recently used ones open."""

    def __init__(self, directory: Path, keep_open: int = 256):
        self.directory = directory
        self.keep_open = keep_open
        self._open: OrderedDict[str, SessionLog] = OrderedDict()

    def get(self, session_id: str) -> SessionLog:
        log = self._open.get(session_id)
        if log is None:
            log = SessionLog(self.directory / f"{session_id}.sqlite3")
            self._open[session_id] = log
            while len(self._open) > self.keep_open:
                _, evicted = self._open.popitem(last=False)
                evicted.close()  # holders may keep it: it reopens itself on next use
        else:
            self._open.move_to_end(session_id)
        return log

    def close_all(self) -> None:
        for log in self._open.values():
            log.close()
        self._open.clear()
