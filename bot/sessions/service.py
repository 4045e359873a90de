"""The sessions layer's front door: clients call this, never the runner or the logs directly.

It owns session state: the central index row, the per-session log and queue, the runners, and
restart recovery. Clients learn about work through observers (a working period started) and
follow events through the bus.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pluggy
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from bot.agent.conversation import SYSTEM_PROMPT
from bot.agent.loop import Agent
from bot.config import Settings
from bot.repos import RepoCatalog
from bot.sessions.bus import EventBus
from bot.sessions.events import Author, Event, Kind, Outcome, Prompt
from bot.sessions.log import RUNNING, SessionLogs
from bot.sessions.runner import Runner
from bot.store.db import Database
from bot.store.tables import SessionRow, TurnRow
from sandbox.sessions import SandboxManager

log = logging.getLogger(__name__)

WORKING, IDLE = "working", "idle"


@dataclass(frozen=True)
class SessionInfo:
    id: str
    share_token: str
    origin: str
    slack_channel: str | None
    slack_thread_ts: str | None
    creator: str | None
    repo: str | None

    @classmethod
    def from_row(cls, row: SessionRow) -> SessionInfo:
        return cls(row.id, row.share_token, row.origin, row.slack_channel, row.slack_thread_ts, row.creator, row.repo)


Observer = Callable[[SessionInfo, int], None]
"""Called when a session starts working, with the seq after which its new events follow."""


class SessionService:
    def __init__(self, settings: Settings, db: Database, agent: Agent, catalog: RepoCatalog | None = None,
                 sandboxes: SandboxManager | None = None, hooks: pluggy.PluginManager | None = None):
        self.settings = settings
        self.db = db
        self.agent = agent
        self.catalog = catalog or RepoCatalog([])
        self.sandboxes = sandboxes
        self.hooks = hooks
        self.logs = SessionLogs(settings.data_dir / "sessions")
        self.bus = EventBus(lambda sid, after: self.logs.get(sid).read(after))
        self._runners: dict[str, Runner] = {}
        self._observers: list[Observer] = []
        self._by_thread: dict[tuple[str, str], SessionInfo] = {}
        self._by_id: dict[str, SessionInfo] = {}
        self._status_written: dict[str, str] = {}
        self._status_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._background: set[asyncio.Task[Any]] = set()

    # -- reading ------------------------------------------------------------------------

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    async def get(self, session_id: str) -> SessionInfo | None:
        if session_id in self._by_id:
            return self._by_id[session_id]
        async with self.db.session() as db:
            row = await db.get(SessionRow, session_id)
        return self._remember(row) if row else None

    async def by_share_token(self, token: str) -> SessionInfo | None:
        async with self.db.session() as db:
            row = (await db.execute(select(SessionRow).where(SessionRow.share_token == token))).scalar_one_or_none()
        return self._remember(row) if row else None

    async def find_by_thread(self, channel: str, thread_ts: str) -> SessionInfo | None:
        if (channel, thread_ts) in self._by_thread:
            return self._by_thread[(channel, thread_ts)]
        async with self.db.session() as db:
            row = (
                await db.execute(
                    select(SessionRow).where(SessionRow.slack_channel == channel, SessionRow.slack_thread_ts == thread_ts)
                )
            ).scalar_one_or_none()
        return self._remember(row) if row else None

    def follow(self, session_id: str, after_seq: int = 0) -> AsyncIterator[Event]:
        return self.bus.follow(session_id, after_seq)

    def queued_count(self, session_id: str) -> int:
        return self.logs.get(session_id).queued_count()

    def turn_started(self, session_id: str, turn: int) -> Event | None:
        events = self.logs.get(session_id).turn_events(turn, Kind.TURN_STARTED)
        return events[0] if events else None

    def turn_text(self, session_id: str, turn: int) -> str:
        """The text the model streamed in a turn so far (all its steps)."""
        return "".join(e.data.get("text", "") for e in self.logs.get(session_id).turn_events(turn, Kind.TEXT_DELTA))

    # -- writing ------------------------------------------------------------------------

    async def open_slack_session(self, channel: str, thread_ts: str, creator: str, repo: str | None = None) -> SessionInfo:
        """The session bound to this thread, created if there is none (once, even if raced)."""
        row = SessionRow(
            id=secrets.token_hex(8),
            share_token=secrets.token_urlsafe(24),
            status=WORKING,  # a prompt follows at once; recovery sets it idle if none does
            origin="slack",
            slack_channel=channel,
            slack_thread_ts=thread_ts,
            creator=creator,
            repo=repo or self._default_repo(),
        )
        try:
            async with self.db.session() as db, db.begin():
                db.add(row)
        except IntegrityError:
            existing = await self.find_by_thread(channel, thread_ts)
            if existing is None:
                raise
            return existing
        self._status_written[row.id] = WORKING
        return self._remember(row)

    async def submit(self, session_id: str, text: str, author: Author, order_key: float | None = None) -> Prompt:
        """Queue a prompt; it runs after the ones queued before it (by order_key, e.g. Slack ts)."""
        info = await self.get(session_id)
        if info is None:
            raise KeyError(session_id)
        runner = self._runners.get(session_id)
        started = runner is None
        if runner is None:
            runner = self._begin_working(info)
            await self.persist_status(session_id)  # before the prompt exists: a crash after it recovers it
        prompt, event = self.logs.get(session_id).enqueue(text, author, order_key or time.time())
        self.bus.publish(session_id, event)
        if started:
            runner.start()
        return prompt

    def stop(self, session_id: str, by: str) -> bool:
        """Cancel the running turn; queued prompts stay. False when nothing was running."""
        runner = self._runners.get(session_id)
        return runner.stop_turn(by) if runner else False

    def clear_queue(self, session_id: str, by: str) -> int:
        count = self.logs.get(session_id).clear_queue()
        if count:
            self.emit(session_id, Kind.QUEUE_CLEARED, {"count": count, "by": by})
        return count

    def emit(self, session_id: str, kind: Kind, data: dict[str, Any], turn: int | None = None) -> Event:
        event = self.logs.get(session_id).append(kind, data, turn)
        self.bus.publish(session_id, event)
        return event

    # -- lifecycle ----------------------------------------------------------------------

    async def recover(self) -> int:
        """After a restart: report interrupted turns and run what was queued. Returns sessions resumed."""
        async with self.db.session() as db:
            rows = (await db.execute(select(SessionRow).where(SessionRow.status == WORKING))).scalars().all()
        for row in rows:
            info = self._remember(row)
            self._status_written[info.id] = WORKING
            slog = self.logs.get(info.id)
            runner = self._begin_working(info)
            for prompt_id in slog.prompts_with_status(RUNNING):
                slog.set_prompt_status(prompt_id, Outcome.INTERRUPTED.value)
                partial = slog.unfinished_step_text(prompt_id)
                if partial:  # the model's words so far stay part of the conversation
                    self.emit(info.id, Kind.ASSISTANT_MESSAGE, {"content": partial, "tool_calls": [], "complete": False},
                              turn=prompt_id)
                self.emit(
                    info.id,
                    Kind.TURN_ENDED,
                    {
                        "prompt_id": prompt_id,
                        "outcome": Outcome.INTERRUPTED.value,
                        "error": "The service restarted while this was running, so it was interrupted.",
                    },
                    turn=prompt_id,
                )
            runner.start()
        if rows:
            log.info("recovered %d session(s) that were working when the service stopped", len(rows))
        return len(rows)

    async def close(self) -> None:
        runners = [r.task for r in self._runners.values() if r.task]
        for task in runners:
            task.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        self._runners.clear()
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        self.logs.close_all()

    # -- internals ------------------------------------------------------------------------

    def _begin_working(self, info: SessionInfo) -> Runner:
        runner = Runner(self, info.id)
        self._runners[info.id] = runner
        after = self.logs.get(info.id).last_seq()
        for observer in self._observers:
            try:
                observer(info, after)
            except Exception:
                log.exception("session observer failed")
        return runner

    def runner_finished(self, runner: Runner) -> None:
        if self._runners.get(runner.session_id) is runner:
            del self._runners[runner.session_id]
            self.emit(runner.session_id, Kind.SESSION_IDLE, {})

    async def persist_status(self, session_id: str) -> None:
        """Write the session's current status; serialised so the last write is the truth."""
        async with self._status_locks[session_id]:
            status = WORKING if session_id in self._runners else IDLE
            if self._status_written.get(session_id) == status:
                return
            async with self.db.session() as db, db.begin():
                await db.execute(
                    update(SessionRow).where(SessionRow.id == session_id).values(status=status, updated_at=_now())
                )
            self._status_written[session_id] = status

    def record_turn(
        self, session_id: str, prompt: Prompt, started: float, first_token_ms: float | None, outcome: Outcome, error: str | None
    ) -> None:
        async def write() -> None:
            async with self.db.session() as db, db.begin():
                db.add(
                    TurnRow(
                        session_id=session_id,
                        prompt_id=prompt.id,
                        author=prompt.author.id,
                        started_at=started,
                        ended_at=time.time(),
                        first_token_ms=first_token_ms,
                        outcome=outcome.value,
                        error=error,
                    )
                )

        self.background(write())

    async def recent_repos(self, user: str, limit: int = 3) -> list[str]:
        """The repos of a person's latest sessions, most recent first (a classification hint)."""
        async with self.db.session() as db:
            rows = (await db.execute(
                select(SessionRow.repo).where(SessionRow.creator == user, SessionRow.repo.is_not(None))
                .order_by(SessionRow.created_at.desc()).limit(20)
            )).scalars().all()
        return list(dict.fromkeys(rows))[:limit]

    def warm(self, repo: str | None) -> None:
        """Predictive warm-up: a sandbox of this repo is likely needed soon."""
        if repo and self.sandboxes is not None:
            self.sandboxes.pool.warm(repo)

    def system_prompt(self, session_id: str, repo: str | None) -> str:
        """The base prompt plus what plugins add for this session (`session_context`)."""
        extra = self.hooks.hook.session_context(session_id=session_id, repo=repo) if self.hooks else []
        return "\n\n".join([SYSTEM_PROMPT, *[e for e in extra if e]])

    def _default_repo(self) -> str | None:
        """With one configured repo every session is about it (the classifier decides otherwise)."""
        return self.catalog.repos[0].name if len(self.catalog) == 1 else None

    def background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(_finish_background(self._background))

    def _remember(self, row: SessionRow) -> SessionInfo:
        info = SessionInfo.from_row(row)
        self._by_id[info.id] = info
        if info.slack_channel and info.slack_thread_ts:
            self._by_thread[(info.slack_channel, info.slack_thread_ts)] = info
        return info


def _now() -> datetime:
    return datetime.now(UTC)


def _finish_background(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background write failed: %r", task.exception())

    return done
