"""Runs a session's queued prompts one turn at a time, in queue order, during a working period.

A working period starts when a prompt arrives at an idle session and ends, with a
`Status(idle)` event, when the queue is empty. Stop cancels the running turn only: the model
stream is closed by the cancellation and the queued prompts stay queued. Whatever fails inside
a turn, or while ending it, the turn ends with a `TurnEnded` event: nobody is left looking at
"Working…" forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from bot.agent.conversation import HISTORY_KINDS, messages_from_events
from bot.agent.loop import Agent, TurnStats
from bot.agent.model import describe_error, is_expected
from bot.agent.tools import ToolContext
from bot.events import Event, EventData, Outcome, TurnEnded, TurnStarted
from bot.sessions.log import RUNNING, Prompt, SessionLog
from sandbox.workspace import Workspace, WorkspaceLost

log = logging.getLogger(__name__)


class TurnHost(Protocol):
    """What a runner needs from the sessions layer (the service implements it)."""

    agent: Agent
    model_timeout: float
    closing: bool

    def log_of(self, session_id: str) -> SessionLog: ...
    def emit(self, session_id: str, data: EventData, turn: int | None = None) -> Event: ...
    async def prepare_turn(self, session_id: str) -> tuple[str, Workspace | None]:
        """The system prompt and the workspace (or None) for a starting turn; acquisition runs on in parallel."""
    async def end_turn(self, session_id: str, prompt: Prompt, lost_workspace: bool) -> None:
        """Per-turn cleanup after the agent stopped (snapshot, plugins); may raise."""
    def record_turn(self, session_id: str, prompt: Prompt, started: float, stats: TurnStats, ended: TurnEnded) -> None: ...
    def admit(self, session_id: str) -> AbstractAsyncContextManager[None]:
        """Held for the working period: waits while the person or the service is at its limit."""
    def runner_finished(self, runner: Runner) -> None: ...
    async def persist_status(self, session_id: str) -> None: ...


class Runner:
    def __init__(self, host: TurnHost, session_id: str):
        self.host = host
        self.session_id = session_id
        self.task: asyncio.Task[None] | None = None
        self._turn: asyncio.Task[None] | None = None
        self._stopped_by: str | None = None
        self.admitted = False
        """Past admission (a runner still waiting for its slot has nothing to finish at shutdown)."""
        self.prompt: Prompt | None = None
        """The prompt of the turn running now (or last run)."""

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"runner-{self.session_id}")

    @property
    def turn_running(self) -> bool:
        return self._turn is not None and not self._turn.done()

    def stop_turn(self, by: str) -> bool:
        if not self.turn_running:
            return False
        self._stopped_by = by
        assert self._turn is not None
        self._turn.cancel()
        return True

    async def _run(self) -> None:
        slog = self.host.log_of(self.session_id)
        try:
            async with self.host.admit(self.session_id):
                self.admitted = True
                while not self.host.closing and (prompt := slog.next_prompt()) is not None:
                    await self._run_turn(slog, prompt)
        except Exception:
            log.exception("runner of session %s failed; its queue waits for the next prompt", self.session_id)
        finally:
            # No await between the empty queue and leaving: a prompt submitted after this
            # starts a new working period instead of waiting on a runner that is gone.
            self.host.runner_finished(self)
        await self.host.persist_status(self.session_id)

    async def _run_turn(self, slog: SessionLog, prompt: Prompt) -> None:
        host = self.host
        self.prompt = prompt
        slog.set_prompt_status(prompt.id, RUNNING)
        host.emit(self.session_id, TurnStarted(prompt_id=prompt.id, text=prompt.text, author=prompt.author), turn=prompt.id)
        stats, wall_start = TurnStats(), time.time()
        outcome, error, lost = Outcome.DONE, None, False
        self._stopped_by = None
        try:
            system, workspace = await host.prepare_turn(self.session_id)
            messages = messages_from_events(slog.read_kinds(HISTORY_KINDS), system)

            def emit(data: EventData) -> Event:
                return host.emit(self.session_id, data, turn=prompt.id)

            def history() -> list[Event]:
                return slog.read_kinds(HISTORY_KINDS)

            self._turn = asyncio.create_task(
                host.agent.run_turn(messages, ToolContext(self.session_id, emit, workspace), stats, history))
            await self._turn
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._stopped_by is None or (current is not None and current.cancelling()):
                raise  # the service is shutting down: the turn stays `running`, recovery reports it
            outcome = Outcome.STOPPED
        except Exception as exc:  # every failure ends the turn with a message, never the session
            outcome, error = Outcome.ERROR, describe_error(exc, host.model_timeout)
            lost = isinstance(exc, WorkspaceLost)
            log.warning("turn %s/%s failed: %r", self.session_id, prompt.id, exc, exc_info=not is_expected(exc))
        finally:
            self._turn = None
        try:
            await host.end_turn(self.session_id, prompt, lost)
        except Exception as exc:
            log.exception("ending turn %s/%s failed", self.session_id, prompt.id)
            if outcome is Outcome.DONE:
                reason = describe_error(exc, host.model_timeout)
                outcome, error = Outcome.ERROR, f"The turn could not be finished cleanly: {reason}"
        self._end(slog, prompt, stats, wall_start, outcome, error)

    def _end(self, slog: SessionLog, prompt: Prompt, stats: TurnStats, wall_start: float,
             outcome: Outcome, error: str | None) -> None:
        ended = TurnEnded(
            prompt_id=prompt.id, outcome=outcome, error=error,
            by=self._stopped_by if outcome is Outcome.STOPPED else None,
            first_token_ms=stats.first_token_ms, duration_ms=(time.monotonic() - stats.started) * 1000,
        )
        slog.set_prompt_status(prompt.id, outcome.value)
        self.host.emit(self.session_id, ended, turn=prompt.id)
        self.host.record_turn(self.session_id, prompt, wall_start, stats, ended)
