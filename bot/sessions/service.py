"""The sessions layer's front door: intake and clients call this, never the runner or the logs.

It owns session state: the central index row and the surfaces a session is bound to, the
per-session log and queue, the runners, and restart recovery. Clients learn about work through
observers (a working period started), follow events through the bus and render the projection.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pluggy
from cachetools import LRUCache
from sqlalchemy import func, select, update
from sqlalchemy import insert as insert_into
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.agent.conversation import SYSTEM_PROMPT
from bot.agent.loop import Agent, TurnStats
from bot.config import Settings
from bot.events import (
    AssistantMessage,
    Author,
    Egress,
    ErrorRaised,
    Event,
    EventData,
    GitSynced,
    Note,
    Origin,
    Outcome,
    QueueChanged,
    SandboxReady,
    Status,
    TurnEnded,
    WarmUp,
    dump,
    load,
)
from bot.repos import RepoCatalog
from bot.sessions.admission import Admission, Waiting
from bot.sessions.bus import EventBus
from bot.sessions.cluster import Cluster, Command
from bot.sessions.log import QUEUED, RUNNING, Prompt, SessionLog, SessionLogs
from bot.sessions.projection import SessionView, project
from bot.sessions.runner import Runner
from bot.sessions.shared_log import SharedLog
from bot.store.batch import BatchWriter
from bot.store.db import Database
from bot.store.tables import (
    ParticipantRow,
    PromptRow,
    SessionLeaseRow,
    SessionPromptRow,
    SessionRow,
    SurfaceRow,
    TurnRow,
)
from bot.store.warm_ups import WarmUps
from bot.util.keyed_locks import KeyedLocks
from sandbox.egress import EgressRecord
from sandbox.sessions import SandboxManager, SessionSandbox
from sandbox.workspace import Workspace

log = logging.getLogger(__name__)

WORKING, IDLE = "working", "idle"
CACHE_SIZE = 4096
"""Sessions remembered in memory (by id and by surface); the database has the rest."""


@dataclass(frozen=True, slots=True)
class Surface:
    """A place a session is shown and prompted from: `slack_thread` + `C123:1700000000.000100`, ..."""

    kind: str
    key: str


@dataclass(frozen=True)
class SessionInfo:
    id: str
    share_token: str
    origin: Origin
    creator: str | None
    repo: str | None
    surfaces: tuple[Surface, ...] = ()
    parent_id: str | None = None
    title: str | None = None

    def surface(self, kind: str) -> Surface | None:
        return next((s for s in self.surfaces if s.kind == kind), None)


Observer = Callable[[SessionInfo, int], None]
"""Called when a session starts working, with the seq after which its new events follow."""


class SessionService:
    def __init__(self, settings: Settings, db: Database, agent: Agent, catalog: RepoCatalog | None = None,
                 sandboxes: SandboxManager | None = None, hooks: pluggy.PluginManager | None = None,
                 writer: BatchWriter | None = None, cluster: Cluster | None = None):
        self.settings = settings
        self.db = db
        self.writer = writer or BatchWriter(db)
        self.agent = agent
        self.model_timeout = settings.model_timeout
        self.catalog = catalog or RepoCatalog([])
        self.sandboxes = sandboxes
        self.hooks = hooks
        self.cluster = cluster
        """With PostgreSQL: this instance's membership; sessions it does not own are driven elsewhere."""
        self.shared = SharedLog(db) if cluster is not None else None
        """With PostgreSQL: every session's log, shared; the logs this instance writes are copied there."""
        self._owned: set[str] = set()
        """Sessions this instance drives (their lease is ours and their local log a full copy)."""
        self._adopting = KeyedLocks()
        self._cluster_tasks: list[asyncio.Task[None]] = []
        self._logs = SessionLogs(settings.data_dir / "sessions", mirror=self.shared)
        self.bus = EventBus(lambda sid, after: self._logs.get(sid).page(after))
        self._runners: dict[str, Runner] = {}
        self._observers: list[Observer] = []
        self._listeners: list[Callable[[str, Event], None]] = []
        self._by_id: LRUCache[str, SessionInfo] = LRUCache(CACHE_SIZE)
        self._by_surface: LRUCache[Surface, SessionInfo] = LRUCache(CACHE_SIZE)
        self._status_written: LRUCache[str, str] = LRUCache(CACHE_SIZE)
        self._refs: LRUCache[tuple[str, str], str | None] = LRUCache(CACHE_SIZE * 4)
        self._reported: LRUCache[str, SessionSandbox] = LRUCache(CACHE_SIZE)
        """The sandbox whose readiness each session's log already tells (a new one is told again)."""
        self._participants: LRUCache[str, frozenset[str]] = LRUCache(CACHE_SIZE)
        self.warm_ups: WarmUps | None = None
        """Where warm-ups are settled once a session's sandbox is ready (set by the wiring)."""
        self._cold_ms: dict[str, float] = {}
        """The latest cold start (a container from the repo's image) per repo: what a warm-up saves."""
        self._status_locks = KeyedLocks()
        self._idle_waiters: dict[str, set[asyncio.Future[None]]] = {}
        """Who waits for a session to go idle (`wait_idle`)."""
        self.admission = Admission(settings.max_sessions_per_user, settings.sandbox_slots)
        self._background: set[asyncio.Task[Any]] = set()
        self.closing = False
        """Set by `close()`: runners take no new prompt (they stay queued for the next start)."""

    # -- reading ------------------------------------------------------------------------

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    def add_listener(self, listener: Callable[[str, Event], None]) -> None:
        """Called with (session id, event) for every event appended, working or not: for surfaces that
        show what happens to an idle session (a PR merged overnight). Must not block."""
        self._listeners.append(listener)

    async def get(self, session_id: str) -> SessionInfo | None:
        if (info := self._by_id.get(session_id)) is not None:
            return info
        async with self.db.session() as db:
            row = await db.get(SessionRow, session_id)
            surfaces = await self._surfaces_of(db, session_id) if row else ()
        return self._remember(row, surfaces) if row else None

    def cached(self, session_id: str) -> SessionInfo | None:
        """The session if this process has it in memory (no database read): for code that must not wait."""
        return self._by_id.get(session_id)

    async def child_ids(self, session_id: str) -> list[str]:
        """The sub-sessions this session started, oldest first."""
        async with self.db.session() as db:
            rows = await db.execute(select(SessionRow.id).where(SessionRow.parent_id == session_id)
                                    .order_by(SessionRow.created_at, SessionRow.id))
            return list(rows.scalars())

    def waiting(self, session_id: str) -> bool:
        """It has work queued but waits for a slot (MAX_SESSIONS_PER_USER, MAX_SANDBOXES)."""
        runner = self._runners.get(session_id)
        return runner is not None and not runner.admitted

    def working(self, session_id: str) -> bool:
        return session_id in self._runners

    def queue_depth(self) -> int:
        """Prompts waiting to run, across sessions (a session with queued prompts has a runner)."""
        return sum(self._logs.get(session_id).queued_count() for session_id in list(self._runners))

    async def count_by_status(self) -> dict[str, int]:
        """Sessions in the central database by status."""
        async with self.db.session() as db:
            rows = await db.execute(select(SessionRow.status, func.count()).group_by(SessionRow.status))
            return {str(status): int(count) for status, count in rows.all()}

    async def wait_idle(self, session_id: str, timeout: float) -> bool:
        """Until the session's queue is done (True) or `timeout` seconds passed (False)."""
        if session_id not in self._runners:
            return True
        idle = asyncio.get_running_loop().create_future()
        waiters = self._idle_waiters.setdefault(session_id, set())
        waiters.add(idle)
        try:
            await asyncio.wait_for(idle, timeout)
        except TimeoutError:
            return False
        finally:
            waiters.discard(idle)
            if not waiters and self._idle_waiters.get(session_id) is waiters:
                del self._idle_waiters[session_id]
        return True

    async def by_share_token(self, token: str) -> SessionInfo | None:
        async with self.db.session() as db:
            session_id = (await db.execute(select(SessionRow.id).where(SessionRow.share_token == token))).scalar_one_or_none()
        info = await self.get(session_id) if session_id else None
        return info if info is not None and secrets.compare_digest(info.share_token, token) else None

    async def summary(self, session_id: str) -> SessionSummary | None:
        """The session's row as lists show it (with its status)."""
        async with self.db.session() as db:
            row = await db.get(SessionRow, session_id)
        return _summary(row) if row is not None else None

    async def find_by_surface(self, surface: Surface) -> SessionInfo | None:
        """The session bound to this place, if any."""
        if (info := self._by_surface.get(surface)) is not None:
            return info
        async with self.db.session() as db:
            session_id = (await db.execute(
                select(SurfaceRow.session_id).where(SurfaceRow.kind == surface.kind, SurfaceRow.key == surface.key)
            )).scalar_one_or_none()
        return await self.get(session_id) if session_id else None

    def follow(self, session_id: str, after_seq: int = 0) -> AsyncIterator[Event]:
        """Every event after `after_seq`, replayed in pages, then live: no gap, no duplicate.

        With PostgreSQL, a session driven by another instance is followed through the shared log."""
        if self.shared is not None and not self.owns(session_id):
            return self.shared.follow(session_id, after_seq)
        return self.bus.follow(session_id, after_seq)

    async def view(self, session_id: str, upto_seq: int | None = None) -> SessionView:
        """The projection of the session's log (up to a seq), built off the event loop."""
        if upto_seq == 0:
            return SessionView()  # a new session's first working period: nothing to read
        if self.shared is not None and not self.owns(session_id):
            events = [e async for e in self.shared.read(session_id, 0, upto_seq)]
            return await asyncio.to_thread(project, events)
        path = self._logs.get(session_id).path

        def build() -> SessionView:
            reader = SessionLog(path)  # its own connection: the loop's keeps writing
            try:
                return project(reader.read(0, upto_seq))
            finally:
                reader.close()

        return await asyncio.to_thread(build)

    async def refresh(self, session_id: str, view: SessionView) -> SessionView:
        """Fold the events after `view.last_seq` into `view`, off the event loop: a view a client
        keeps (the web page's) is brought up to date by reading only what is new."""
        if self.shared is not None and not self.owns(session_id):
            events = [e async for e in self.shared.read(session_id, view.last_seq)]
            await asyncio.to_thread(project, events, view)
            return view
        path = self._logs.get(session_id).path

        def fold() -> None:
            reader = SessionLog(path)
            try:
                project(reader.read(view.last_seq), view)
            finally:
                reader.close()

        await asyncio.to_thread(fold)
        return view

    def get_ref(self, session_id: str, key: str) -> str | None:
        """A small value a surface keeps with the session (e.g. the Slack message of a turn).

        Surfaces ask often (every render); this process writes them, so memory answers."""
        if not self.owns(session_id):
            return None  # surfaces render a session on its owner only
        if (session_id, key) not in self._refs:
            self._refs[(session_id, key)] = self._logs.get(session_id).get_ref(key)
        return self._refs[(session_id, key)]

    def set_ref(self, session_id: str, key: str, value: str) -> None:
        if not self.owns(session_id):
            log.warning("ref %s of session %s not kept: another instance drives it", key, session_id)
            return
        self._logs.get(session_id).set_ref(key, value)
        self._refs[(session_id, key)] = value

    async def recent_repos(self, user: str, limit: int = 3) -> list[str]:
        """The repos of a person's latest sessions, most recent first (a classification hint)."""
        async with self.db.session() as db:
            rows = (await db.execute(
                select(SessionRow.repo).where(SessionRow.creator == user, SessionRow.repo.is_not(None))
                .order_by(SessionRow.created_at.desc()).limit(20)
            )).scalars().all()
        return [r for r in dict.fromkeys(rows) if r][:limit]

    async def list_sessions(self, *, creator: str | None = None, repos: Collection[str] | None = None,
                   status: str | None = None, limit: int = 100) -> list[SessionSummary]:
        """The latest sessions, newest first: of one person, on some repositories, in one status."""
        query = select(SessionRow).order_by(SessionRow.created_at.desc(), SessionRow.id).limit(limit)
        if creator is not None:
            query = query.where(SessionRow.creator == creator)
        if repos is not None:
            query = query.where(SessionRow.repo.in_(list(repos)))
        if status is not None:
            query = query.where(SessionRow.status == status)
        async with self.db.session() as db:
            rows = (await db.execute(query)).scalars().all()
        return [_summary(r) for r in rows]

    # -- writing ------------------------------------------------------------------------

    async def open(self, origin: Origin, creator: Author, repo: str | None, surface: Surface | None = None,
                   parent_id: str | None = None, title: str | None = None) -> SessionInfo:
        """A new session, bound to `surface` if given; if that place already has one, that one (once, even if raced)."""
        fields = {
            "id": secrets.token_hex(8),
            "share_token": secrets.token_urlsafe(24),
            "status": WORKING,  # a prompt follows at once; recovery sets it idle if none does
            "origin": origin.value,
            "creator": creator.id,
            "repo": repo or self._default_repo(),
            "parent_id": parent_id,
            "title": _title(title),
        }

        async def insert(db: AsyncSession) -> None:
            # Core statements, not the ORM's unit of work: a burst of sessions is written in a burst.
            await db.execute(insert_into(SessionRow).values(**fields))
            if surface is not None:
                await db.execute(insert_into(SurfaceRow).values(session_id=fields["id"], kind=surface.kind, key=surface.key))
            if self.cluster is not None:  # ours from the start: no other instance adopts it before its prompt
                await db.execute(insert_into(SessionLeaseRow).values(**self.cluster.lease_row(str(fields["id"])),
                                                                     acquired_at=_now()))

        # The session's own log file is created off the event loop meanwhile.
        opening = asyncio.create_task(asyncio.to_thread(self._logs.get(str(fields["id"])).open))
        try:
            await self.writer.write(insert)
        except IntegrityError:
            await opening
            existing = await self.find_by_surface(surface) if surface is not None else None
            if existing is None:
                raise
            return existing
        await opening
        self._owned.add(str(fields["id"]))
        self._status_written[str(fields["id"])] = WORKING
        return self._remember(SessionRow(**fields), (surface,) if surface else ())

    async def retitle(self, session_id: str, title: str) -> SessionInfo | None:
        """Give the session another title (a sub-session's, chosen by its parent's agent)."""
        short = _title(title)
        await self.writer.write(lambda db: db.execute(
            update(SessionRow).where(SessionRow.id == session_id).values(title=short)))
        info = await self.get(session_id)
        if info is None:
            return None
        info = replace(info, title=short)
        self._by_id[session_id] = info
        for surface in info.surfaces:
            self._by_surface[surface] = info
        return info

    async def bind(self, session_id: str, surface: Surface) -> SessionInfo:
        """Bind one more place to a session (a web page, a second thread); idempotent."""
        try:
            async with self.db.session() as db, db.begin():
                db.add(SurfaceRow(session_id=session_id, kind=surface.kind, key=surface.key))
        except IntegrityError:
            pass
        self._by_id.pop(session_id, None)
        info = await self.get(session_id)
        if info is None:
            raise KeyError(session_id)
        return info

    async def submit(self, session_id: str, text: str, author: Author, order_key: float | None = None) -> Prompt:
        """Queue a prompt; it runs after the ones queued before it (by order_key, e.g. Slack ts)."""
        info = await self.get(session_id)
        if info is None:
            raise KeyError(session_id)
        order_key = order_key or time.time()
        logged = insert_into(PromptRow).values(session_id=session_id, author=author.id, origin=author.origin.value,
                                               at=time.time())
        self.background(self.writer.write(lambda db: db.execute(logged)))
        if self.cluster is None:
            return await self._enqueue(info, text, author, order_key)
        # Any instance takes a prompt: into the shared inbox, claimed by the session's owner (us, if nobody else is).
        prompt_id = await self.cluster.add_prompt(session_id, text, author, order_key)
        owner = await self._ensure_owner(session_id)
        if owner is None:
            await self._claim(session_id)
        else:
            await self.cluster.wake(owner, session_id)
        return Prompt(prompt_id, text, author, QUEUED, order_key)

    async def _enqueue(self, info: SessionInfo, text: str, author: Author, order_key: float,
                       prompt_id: int | None = None) -> Prompt:
        """Into this instance's queue of the session; a working period starts if it was idle."""
        session_id = info.id
        runner = self._runners.get(session_id)
        started = runner is None
        if runner is None:
            runner = self._begin_working(info)
            try:
                await self.persist_status(session_id)  # before the prompt exists: a crash after it recovers it
            except BaseException:
                # Nothing was queued: the session is idle again, so its followers stop and the next prompt starts anew.
                self.runner_finished(runner)
                raise
        prompt, event = self._logs.get(session_id).enqueue(text, author, order_key, prompt_id)
        self.bus.publish(session_id, event)
        if started:
            runner.start()
        return prompt

    async def stop(self, session_id: str, by: str) -> bool:
        """Cancel the running turn; queued prompts stay. False when nothing was running."""
        if (owner := await self._ensure_owner(session_id)) is not None:
            assert self.cluster is not None
            working = (summary := await self.summary(session_id)) is not None and summary.status == WORKING
            await self.cluster.send(owner, Command(session_id, "stop", {"by": by}))
            return working
        runner = self._runners.get(session_id)
        return runner.stop_turn(by) if runner else False

    async def cancel(self, session_id: str, by: str) -> tuple[bool, int]:
        """Stop the running turn and drop the queued prompts: (a turn was stopped, prompts dropped)."""
        cleared = await self.clear_queue(session_id, by)  # first: the runner then finds nothing to go on with
        return await self.stop(session_id, by), cleared

    async def stop_descendants(self, session_id: str, by: str) -> int:
        """Cancel every sub-session below this one (their running turns and queues); returns how many
        had something to stop. Stopping a parent stops its children."""
        stopped = 0
        for child in await self.child_ids(session_id):
            turn, cleared = await self.cancel(child, by)
            stopped += bool(turn or cleared)
            stopped += await self.stop_descendants(child, by)
        return stopped

    async def clear_queue(self, session_id: str, by: str) -> int:
        if (owner := await self._ensure_owner(session_id)) is not None:
            assert self.cluster is not None
            count = await self.cluster.pending_count(session_id)
            await self.cluster.send(owner, Command(session_id, "clear", {"by": by}))
            return count
        if self.cluster is not None:
            await self._claim(session_id, run=False)  # what is waiting in the inbox is queued too
        return self._clear_here(session_id, by)

    def _clear_here(self, session_id: str, by: str) -> int:
        count = self._logs.get(session_id).clear_queue()
        if count:
            self.emit(session_id, QueueChanged(queued=0, cleared=count, by=by))
        return count

    def running_prompter(self, session_id: str) -> Author | None:
        """The person whose prompt is running now, if one is."""
        runner = self._runners.get(session_id)
        return runner.prompt.author if runner and runner.turn_running and runner.prompt else None

    def running_author(self, session_id: str) -> str | None:
        """Who prompted the turn running now, if one is (here: for a session this instance drives)."""
        runner = self._runners.get(session_id)
        return runner.prompt.author.id if runner and runner.turn_running and runner.prompt else None

    async def recent_prompt_times(self, author_id: str, seconds: float) -> list[float] | None:
        """When this person's prompts of the last `seconds` arrived, on any instance; None with one
        instance (its own memory counts them)."""
        if self.cluster is None:
            return None
        since = time.time() - seconds
        async with self.db.session() as db:
            rows = await db.execute(select(SessionPromptRow.created_at).where(
                SessionPromptRow.author_id == author_id, SessionPromptRow.created_at > since))
            return [float(t) for t in rows.scalars()]

    async def turn_author(self, session_id: str) -> str | None:
        """Who prompted the turn running now, wherever the session is driven (another instance's:
        read from the shared log)."""
        if self.owns(session_id):
            return self.running_author(session_id)
        current = (await self.view(session_id)).current
        return current.author.id if current is not None else None

    async def participants(self, session_id: str) -> frozenset[str]:
        """The people the session's starter added (SESSION_PROMPTERS=participants); the starter is not listed."""
        if (cached := self._participants.get(session_id)) is not None:
            return cached
        async with self.db.session() as db:
            rows = (await db.execute(select(ParticipantRow.user_id).where(ParticipantRow.session_id == session_id))).scalars()
            people = frozenset(rows)
        self._participants[session_id] = people
        return people

    async def add_participants(self, session_id: str, people: set[str], by: str) -> frozenset[str]:
        """Add people (idempotent); returns those who were not participants before."""
        new = frozenset(people - await self.participants(session_id))
        if new:
            rows = [{"session_id": session_id, "user_id": p, "added_by": by} for p in sorted(new)]

            dialect = postgresql if self.db.engine.dialect.name == "postgresql" else sqlite

            async def insert(db: AsyncSession) -> None:
                # A concurrent add of the same person is no error (and must not fail the shared batch).
                await db.execute(dialect.insert(ParticipantRow).values(rows).on_conflict_do_nothing())

            await self.writer.write(insert)
            self._participants[session_id] = await self.participants(session_id) | new
        return new

    async def egress(self, owner: str, record: EgressRecord) -> None:
        """A sandbox's connection through the egress proxy goes into its session's log."""
        if len(owner) != 16 or await self.get(owner) is None:
            return  # a warm or build container: the proxy's own log has it
        self.emit(owner, Egress(host=record.host, port=record.port, allowed=record.allowed, reason=record.reason,
                                bytes_up=record.bytes_up, bytes_down=record.bytes_down,
                                duration_ms=record.duration_s * 1000))

    def emit(self, session_id: str, data: EventData, turn: int | None = None) -> Event:
        """Append to the session's log. With PostgreSQL, for a session another instance drives, the
        event is handed to its owner (the returned event has no seq yet: seq 0)."""
        if not self.owns(session_id):
            self.background(self._emit_elsewhere(session_id, data, turn))
            return Event(0, time.time(), turn, data)
        event = self._logs.get(session_id).append(data, turn)
        self.bus.publish(session_id, event)
        for listener in self._listeners:
            try:
                listener(session_id, event)
            except Exception:
                log.exception("session event listener failed")
        return event

    # -- lifecycle ----------------------------------------------------------------------

    async def recover(self) -> int:
        """After a restart: report interrupted turns and run what was queued. Returns sessions resumed.

        With PostgreSQL: the sessions nobody alive owns are taken over (the sweep every instance runs)."""
        if self.cluster is not None:
            return await self.sweep()
        async with self.db.session() as db:
            ids = (await db.execute(select(SessionRow.id).where(SessionRow.status == WORKING))).scalars().all()
        for session_id in ids:
            info = await self.get(session_id)
            if info is not None:
                self._resume(info, "The service restarted while this was running, so it was interrupted.")
        if ids:
            log.info("recovered %d session(s) that were working when the service stopped", len(ids))
        return len(ids)

    def _resume(self, info: SessionInfo, reason: str, claimed: Collection[Prompt] = ()) -> None:
        """A working period for a session whose last one was cut off: the turn that was running ends
        as interrupted, then the queue (with `claimed` prompts added) runs."""
        self._status_written[info.id] = WORKING
        slog = self._logs.get(info.id)
        runner = self._begin_working(info)
        for prompt in claimed:
            self._queue_claimed(info.id, prompt)
        for prompt_id in slog.prompts_with_status(RUNNING):
            slog.set_prompt_status(prompt_id, Outcome.INTERRUPTED.value)
            partial = slog.unfinished_step_text(prompt_id)
            if partial:  # the model's words so far stay part of the conversation
                self.emit(info.id, AssistantMessage(content=partial, complete=False), turn=prompt_id)
            self.emit(info.id, TurnEnded(prompt_id=prompt_id, outcome=Outcome.INTERRUPTED, error=reason), turn=prompt_id)
        runner.start()

    # -- several instances (PostgreSQL) -----------------------------------------------------

    def owns(self, session_id: str) -> bool:
        """This instance drives the session (always, with one instance)."""
        return self.cluster is None or session_id in self._owned

    async def start_cluster(self) -> None:
        """Join the instances on PostgreSQL: heartbeat, notifications, the shared log's writer."""
        assert self.cluster is not None and self.shared is not None
        self.shared.on_lost = self._lost
        await self.cluster.start(self._woken, self.shared.notified)
        self.shared.start()
        self._cluster_tasks.append(asyncio.create_task(self._heartbeats(), name="cluster heartbeat"))

    async def _heartbeats(self) -> None:
        assert self.cluster is not None
        sweeping: asyncio.Task[int] | None = None
        while True:
            await asyncio.sleep(self.cluster.lease_ttl / 3)
            try:
                if not await self.cluster.heartbeat():
                    log.error("this instance's lease lapsed (was it paused?); its %d session(s) are given up",
                              len(self._owned))
                    for session_id in list(self._owned):
                        self._lost(session_id)
            except Exception as exc:
                log.warning("heartbeat to PostgreSQL failed: %s", exc)
                continue
            if sweeping is None or sweeping.done():
                sweeping = asyncio.create_task(self.sweep(), name="cluster sweep")
                sweeping.add_done_callback(_log_failure("cluster sweep"))

    async def sweep(self) -> int:
        """Take over sessions with work whose owner is gone; claim prompts and commands a notification
        did not bring. Returns how many sessions were taken over."""
        assert self.cluster is not None
        taken = 0
        for session_id in await self.cluster.orphans():
            if session_id not in self._owned and not self.closing and await self._ensure_owner(session_id) is None:
                taken += 1
        for session_id in await self.cluster.owned_with_inbox():
            if await self._ensure_owner(session_id) is None:
                await self._claim(session_id)
        await self._run_commands()
        return taken

    async def _ensure_owner(self, session_id: str) -> str | None:
        """None when this instance drives the session, taking it over if nobody alive does; else the owner."""
        if self.owns(session_id):
            return None
        assert self.cluster is not None
        async with self._adopting.hold(session_id):
            if session_id in self._owned:
                return None
            owner = await self.cluster.acquire(session_id)
            if owner is not None:
                return owner
            await self._adopt(session_id)
        return None

    async def _adopt(self, session_id: str) -> None:
        """A session just taken: its log copied from the shared one; if it had work, the turn that was
        running is reported interrupted and the queue runs here."""
        assert self.cluster is not None and self.shared is not None
        slog = self._logs.get(session_id)
        slog.replace_with(await self.shared.snapshot(session_id))
        for key in [k for k in self._refs if k[0] == session_id]:
            self._refs.pop(key, None)
        self._status_written.pop(session_id, None)
        self._owned.add(session_id)
        info = await self.get(session_id)
        if info is None:
            return
        claimed = await self.cluster.claim_prompts(session_id)
        if claimed or slog.prompts_with_status(RUNNING) or slog.queued_count():
            log.info("took over session %s", session_id)
            self._resume(info, "The instance running this session stopped while this was running, so it was "
                               "interrupted.", claimed)
        else:
            await self.persist_status(session_id)

    async def _claim(self, session_id: str, run: bool = True) -> None:
        """The session's inbox into our queue (a working period starts unless `run` is False)."""
        assert self.cluster is not None
        info = await self.get(session_id)
        if info is None:
            return
        for prompt in await self.cluster.claim_prompts(session_id):
            if run:
                await self._enqueue(info, prompt.text, prompt.author, prompt.order_key, prompt.id)
            else:
                self._queue_claimed(session_id, prompt)

    def _queue_claimed(self, session_id: str, prompt: Prompt) -> None:
        """A prompt claimed from the shared inbox, into this instance's queue with its shared id."""
        _, event = self._logs.get(session_id).enqueue(prompt.text, prompt.author, prompt.order_key, prompt.id)
        self.bus.publish(session_id, event)

    def _woken(self, session_id: str) -> None:
        """A notification on our channel: a prompt or a command for a session we own."""
        self.background(self._answer_wake(session_id))

    async def _answer_wake(self, session_id: str) -> None:
        await self._run_commands()
        if session_id and not self.closing and await self._ensure_owner(session_id) is None:
            await self._claim(session_id)

    async def _run_commands(self) -> None:
        assert self.cluster is not None
        for command in await self.cluster.take_commands():
            session_id, payload = command.session_id, command.payload
            try:
                if await self._ensure_owner(session_id) is not None:
                    continue
                if command.kind == "stop" and (runner := self._runners.get(session_id)) is not None:
                    runner.stop_turn(str(payload.get("by")))
                elif command.kind == "clear":
                    await self._claim(session_id, run=False)
                    self._clear_here(session_id, str(payload.get("by")))
                elif command.kind == "event" and isinstance(raw := payload.get("data"), dict) and (
                        data := load(str(payload.get("kind")), raw)):
                    turn = payload.get("turn")
                    self.emit(session_id, data, turn if isinstance(turn, int) else None)
                elif command.kind == "warm":
                    await self.warm_session(session_id, str(payload.get("trigger")))
            except Exception:
                log.exception("command %s for session %s failed", command.kind, session_id)

    async def _emit_elsewhere(self, session_id: str, data: EventData, turn: int | None) -> None:
        owner = await self._ensure_owner(session_id)
        if owner is None:
            self.emit(session_id, data, turn)
        else:
            assert self.cluster is not None
            await self.cluster.send(owner, Command(session_id, "event", {"kind": data.kind, "data": dump(data), "turn": turn}))

    def _lost(self, session_id: str) -> None:
        """Another instance drives this session now: stop driving it here, without writing anything."""
        self._owned.discard(session_id)
        runner = self._runners.pop(session_id, None)
        if runner is not None and runner.task is not None:
            runner.task.cancel()

    async def close(self) -> None:
        """Stop at a clean point: running turns are cancelled (recovery reports them after the
        restart); a runner between turns finishes its bookkeeping and takes no new prompt."""
        self.closing = True
        for task in self._cluster_tasks:
            task.cancel()
        runners = [r for r in self._runners.values() if r.task]
        for runner in runners:
            if (runner.turn_running or not runner.admitted) and runner.task is not None:
                runner.task.cancel()
        tasks = [r.task for r in runners if r.task]
        _, late = await asyncio.wait(tasks, timeout=5) if tasks else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runners.clear()
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        await self.writer.close()
        if self.shared is not None:
            await self.shared.close()  # interrupted turns are in the shared log, `running`: the next owner reports them
        if self.cluster is not None:
            await self.cluster.leave()
        self._logs.close_all()

    # -- what a runner needs (runner.TurnHost) ---------------------------------------------

    def log_of(self, session_id: str) -> SessionLog:
        return self._logs.get(session_id)

    async def prepare_turn(self, session_id: str) -> tuple[str, Workspace | None]:
        if self.shared is not None:  # the turn is `running` in the shared log: a new owner never runs it twice
            try:
                await asyncio.wait_for(self.shared.flush(), 5)
            except TimeoutError:
                log.warning("PostgreSQL is slow to take session %s's events; its turn goes on", session_id)
        info = await self.get(session_id)
        repo = info.repo if info else None
        # The sandbox is acquired in parallel: the first model call does not wait for it.
        sandbox = self.sandboxes.for_turn(session_id, repo) if self.sandboxes else None
        if sandbox is not None and sandbox is not self._reported.get(session_id):
            self._reported[session_id] = sandbox
            self.background(self._report_sandbox(session_id, sandbox))
        return self.system_prompt(session_id, info), sandbox

    async def _report_sandbox(self, session_id: str, sandbox: SessionSandbox) -> None:
        """Into the log, as they happen: the sandbox is ready (how, how long it took), the branch is
        synced, or it could not be prepared. Clients show them; the turn never waits for this."""
        try:
            await sandbox.executor()
            ready = sandbox.timings.get("ready", time.monotonic())
            requested = sandbox.timings["requested"]
            turn = sandbox.timings.get("turn", requested) if sandbox.warmed_by else requested
            wait = max(0.0, ready - turn)
            saved = (ready - requested - wait) * 1000 if sandbox.warmed_by else None
            self.emit(session_id, SandboxReady(
                source=sandbox.source or "unknown", wait_ms=wait * 1000, warm_up=sandbox.warmed_by, saved_ms=saved))
            repo = sandbox.repo.name
            if sandbox.source == "image":
                self._cold_ms[repo] = wait * 1000
            elif sandbox.source == "pool" and repo in self._cold_ms:
                saved = max(0.0, self._cold_ms[repo] - wait * 1000)
            if self.warm_ups is not None:
                await self.warm_ups.settle(session_id, used=sandbox.source == "pool" or sandbox.warmed_by is not None,
                                           saved_ms=saved)
            await sandbox.wait_synced()
            self.emit(session_id, GitSynced(branch=sandbox.branch, note=sandbox.sync_note))
        except Exception as exc:
            self.emit(session_id, ErrorRaised(message=f"The sandbox could not be prepared: {exc}"))

    async def end_turn(self, session_id: str, prompt: Prompt, lost_workspace: bool) -> None:
        if self.sandboxes is not None:
            await self.sandboxes.turn_ended(session_id, lost=lost_workspace)
        if self.hooks is not None:
            for result in self.hooks.hook.turn_ended(session_id=session_id, prompt_id=prompt.id):
                if asyncio.iscoroutine(result):
                    await result

    @asynccontextmanager
    async def admit(self, session_id: str) -> AsyncIterator[None]:
        """A working period's slot: MAX_SESSIONS_PER_USER per starter, MAX_SANDBOXES in all.
        While it waits the thread is told why, and where it is in line."""
        info = await self.get(session_id)
        person = info.creator if info else None
        sandbox = bool(info and info.repo and self.sandboxes is not None)

        async def tell(waiting: Waiting) -> None:
            if waiting.person_limit:
                who = Author(id=person, origin=info.origin).handle if person and info else "You"
                text = (f"{who} already has {self.admission.per_person} sessions running; this one starts "
                        "when one of them finishes.")
            else:
                place = "next" if waiting.position == 1 else f"number {waiting.position} in line"
                text = (f"All {self.admission.sandboxes} sandboxes are busy; this session is {place} "
                        "and starts as soon as one is free.")
            self.emit(session_id, Note(text=text))

        async with self.admission.slot(person, sandbox, tell):
            yield

    def runner_finished(self, runner: Runner) -> None:
        if self._runners.get(runner.session_id) is runner:
            del self._runners[runner.session_id]
            for idle in self._idle_waiters.get(runner.session_id, ()):
                if not idle.done():
                    idle.set_result(None)
            if not self.closing:  # at shutdown its queue may still hold prompts: it is not idle
                self.emit(runner.session_id, Status(state="idle"))

    async def persist_status(self, session_id: str) -> None:
        """Write the session's current status; serialised so the last write is the truth.

        Not while closing: a session left `working` is resumed by recovery after the restart."""
        if self.closing or not self.owns(session_id):
            return
        async with self._status_locks.hold(session_id):
            status = WORKING if session_id in self._runners else IDLE
            if self._status_written.get(session_id) == status:
                return
            await self.writer.write(lambda db: db.execute(
                update(SessionRow).where(SessionRow.id == session_id).values(status=status, updated_at=_now())))
            self._status_written[session_id] = status

    def record_turn(self, session_id: str, prompt: Prompt, started: float, stats: TurnStats, ended: TurnEnded) -> None:
        ended_at = time.time()

        statement = insert_into(TurnRow).values(
            session_id=session_id, prompt_id=prompt.id, author=prompt.author.id, started_at=started, ended_at=ended_at,
            first_token_ms=stats.first_token_ms, request_ms=stats.request_ms, outcome=ended.outcome.value,
            error=ended.error, tokens=stats.tokens, cost_usd=stats.cost_usd)
        self.background(self.writer.write(lambda db: db.execute(statement)))

    # -- helpers --------------------------------------------------------------------------

    async def warm_session(self, session_id: str, trigger: str) -> str | None:
        """Prepare the session's sandbox ahead of its next turn (someone is typing a prompt); a
        warm-up that did something is logged, and the turn's `sandbox_ready` says if it used it."""
        info = await self.get(session_id)
        if info is None or info.repo is None or self.sandboxes is None:
            return None
        if (owner := await self._ensure_owner(session_id)) is not None:  # its sandbox is on its owner's host
            assert self.cluster is not None
            await self.cluster.send(owner, Command(session_id, "warm", {"trigger": trigger}))
            return None
        action = self.sandboxes.prepare(session_id, info.repo, trigger)
        if action == "started":
            self.emit(session_id, WarmUp(trigger=trigger, repo=info.repo, action=action))
        return action

    def warm(self, repo: str | None) -> None:
        """Predictive warm-up: a sandbox of this repo is likely needed soon."""
        if repo and self.sandboxes is not None:
            self.sandboxes.pool.warm(repo)

    def system_prompt(self, session_id: str, info: SessionInfo | None) -> str:
        """The base prompt plus what plugins add for this session (`session_context`)."""
        if self.hooks is None:
            return SYSTEM_PROMPT
        extra = self.hooks.hook.session_context(
            session_id=session_id, repo=info.repo if info else None,
            surfaces=tuple(s.kind for s in info.surfaces) if info else (),
        )
        return "\n\n".join([SYSTEM_PROMPT, *[e for e in extra if e]])

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(_finish_background(self._background))

    def _begin_working(self, info: SessionInfo) -> Runner:
        runner = Runner(self, info.id)
        self._runners[info.id] = runner
        after = self._logs.get(info.id).last_seq()
        for observer in self._observers:
            try:
                observer(info, after)
            except Exception:
                log.exception("session observer failed")
        self.emit(info.id, Status(state="working"))
        return runner

    def _default_repo(self) -> str | None:
        """With one configured repo every session is about it (the classifier decides otherwise)."""
        return self.catalog.repos[0].name if len(self.catalog) == 1 else None

    async def _surfaces_of(self, db: Any, session_id: str) -> tuple[Surface, ...]:
        rows = (await db.execute(
            select(SurfaceRow.kind, SurfaceRow.key).where(SurfaceRow.session_id == session_id).order_by(SurfaceRow.id)
        )).all()
        return tuple(Surface(kind, key) for kind, key in rows)

    def _remember(self, row: SessionRow, surfaces: tuple[Surface, ...]) -> SessionInfo:
        info = SessionInfo(row.id, row.share_token, Origin.parse(row.origin), row.creator, row.repo, surfaces, row.parent_id,
                           row.title)
        self._by_id[info.id] = info
        for surface in surfaces:
            self._by_surface[surface] = info
        return info


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """A row of a sessions list."""

    id: str
    share_token: str
    repo: str | None
    creator: str | None
    title: str | None
    status: str
    created_at: datetime
    origin: Origin


def _summary(row: SessionRow) -> SessionSummary:
    return SessionSummary(row.id, row.share_token, row.repo, row.creator, row.title, row.status, row.created_at,
                          Origin.parse(row.origin))


def _title(text: str | None) -> str | None:
    line = " ".join((text or "").split())
    return (line if len(line) <= 200 else line[:199] + "…") or None


def _now() -> datetime:
    return datetime.now(UTC)


def _log_failure(what: str) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %r", what, task.exception())

    return done


def _finish_background(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background write failed: %r", task.exception())

    return done
