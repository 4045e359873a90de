"""Runs a session's queued prompts one turn at a time, in queue order, during a working period.

A working period starts when a prompt arrives at an idle session and ends, with a
`session_idle` event, when the queue is empty. Stop cancels the running turn only: the model
stream is closed by the cancellation and the queued prompts stay queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import openai

from bot.agent.conversation import HISTORY_KINDS, messages_from_events
from bot.agent.loop import StepLimitReached, TurnStats
from bot.agent.model import BadModelOutput, ModelNotConfigured, describe_error
from bot.agent.tools import ToolContext
from bot.events import Event as TypedEvent
from bot.events import EventData
from bot.sessions.events import Kind, Outcome, Prompt
from bot.sessions.log import RUNNING
from sandbox.workspace import WorkspaceLost

if TYPE_CHECKING:
    from bot.sessions.service import SessionService

log = logging.getLogger(__name__)


class Runner:
    def __init__(self, service: SessionService, session_id: str):
        self.service = service
        self.session_id = session_id
        self.task: asyncio.Task[None] | None = None
        self._turn: asyncio.Task[None] | None = None
        self._stopped_by: str | None = None

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
        slog = self.service.logs.get(self.session_id)
        try:
            while (prompt := slog.next_prompt()) is not None:
                await self._run_turn(prompt)
        except Exception:
            log.exception("runner of session %s failed; its queue waits for the next prompt", self.session_id)
        # No await between the empty queue and leaving: a prompt submitted after this
        # starts a new working period instead of waiting on a runner that is gone.
        self.service.runner_finished(self)
        await self.service.persist_status(self.session_id)

    async def _run_turn(self, prompt: Prompt) -> None:
        svc, slog = self.service, self.service.logs.get(self.session_id)
        slog.set_prompt_status(prompt.id, RUNNING)
        author = {"id": prompt.author.id, "name": prompt.author.name, "source": prompt.author.source}
        svc.emit(self.session_id, Kind.TURN_STARTED, {"prompt_id": prompt.id, "text": prompt.text, "author": author}, turn=prompt.id)
        stats = TurnStats()
        wall_start = time.time()
        info = await svc.get(self.session_id)
        repo = info.repo if info else None
        # The sandbox is acquired in parallel: the first model call does not wait for it.
        sandbox = svc.sandboxes.for_turn(self.session_id, repo) if svc.sandboxes else None
        messages = messages_from_events(slog.read_kinds(HISTORY_KINDS), svc.system_prompt(self.session_id, repo))

        def emit(data: EventData) -> TypedEvent:  # typed payloads onto the log's present API
            old = svc.emit(self.session_id, Kind(data.kind), data.model_dump(mode="json", exclude={"kind"}), turn=prompt.id)
            return TypedEvent(old.seq, old.ts, old.turn, data)

        ctx = ToolContext(self.session_id, emit, sandbox)
        self._stopped_by = None
        self._turn = asyncio.create_task(svc.agent.run_turn(messages, ctx, stats))
        outcome, error, lost = Outcome.DONE, None, False
        try:
            await self._turn
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._stopped_by is None or (current is not None and current.cancelling()):
                raise  # the service is shutting down: the turn stays `running`, recovery reports it
            outcome = Outcome.STOPPED
        except Exception as exc:  # every failure ends the turn with a message, never the session
            outcome, error = Outcome.ERROR, describe_error(exc, svc.settings.model_timeout)
            lost = isinstance(exc, WorkspaceLost)
            log.warning("turn %s/%s failed: %r", self.session_id, prompt.id, exc, exc_info=not _expected(exc))
        finally:
            self._turn = None
        if sandbox is not None and svc.sandboxes is not None:
            await svc.sandboxes.turn_ended(self.session_id, lost=lost)
        slog.set_prompt_status(prompt.id, outcome.value)
        data = {
            "prompt_id": prompt.id,
            "outcome": outcome.value,
            "first_token_ms": stats.first_token_ms,
            "duration_ms": (time.monotonic() - stats.started) * 1000,
        }
        if error:
            data["error"] = error
        if outcome is Outcome.STOPPED:
            data["by"] = self._stopped_by
        svc.emit(self.session_id, Kind.TURN_ENDED, data, turn=prompt.id)
        svc.record_turn(self.session_id, prompt, wall_start, stats.first_token_ms, outcome, error)


def _expected(exc: Exception) -> bool:
    """Failures with a known cause are logged in one line; anything else with its traceback."""
    return isinstance(exc, openai.APIError | StepLimitReached | BadModelOutput | ModelNotConfigured | WorkspaceLost)
