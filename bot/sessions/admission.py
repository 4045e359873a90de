"""Admission of working sessions: at most N per person and M sandboxes in all; the rest wait in line.

A session holds a slot for a whole working period (from its first queued prompt until its queue
is empty), so a person's fourth session waits for one of their three to finish rather than being
refused, and a full machine queues new sessions instead of starting sandboxes it cannot hold.
The line is first come, first served, except that a session whose person is at their own limit
lets later sessions of other people go ahead (it could not start anyway).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Waiting:
    """Why a session waits, to tell its people."""

    person_limit: bool
    """The person has as many sessions running as they may."""
    position: int
    """1-based place in the line for a sandbox (0 when only the person's own limit holds it)."""


@dataclass(eq=False)
class _Ticket:
    person: str | None
    sandbox: bool
    admitted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


Notify = Callable[[Waiting], Awaitable[None]]


class Admission:
    def __init__(self, per_person: int, sandboxes: int):
        self.per_person = per_person
        self.sandboxes = sandboxes
        self._running: Counter[str] = Counter()
        self._sandboxes_running = 0
        self._line: list[_Ticket] = []

    @asynccontextmanager
    async def slot(self, person: str | None, sandbox: bool, notify: Notify) -> AsyncIterator[None]:
        """Wait for a slot (telling `notify` why, when waiting), hold it for the block."""
        ticket = _Ticket(person, sandbox)
        self._line.append(ticket)
        self._admit()
        if not ticket.admitted.done():
            await notify(self._why(ticket))
        try:
            await ticket.admitted
        except BaseException:
            if ticket in self._line:
                self._line.remove(ticket)
            elif ticket.admitted.done() and not ticket.admitted.cancelled():
                self._release(ticket)  # admitted as it was cancelled: give the slot back
            self._admit()
            raise
        try:
            yield
        finally:
            self._release(ticket)
            self._admit()

    @property
    def waiting(self) -> int:
        return len(self._line)

    def _fits(self, ticket: _Ticket) -> tuple[bool, bool]:
        person_ok = ticket.person is None or self._running[ticket.person] < self.per_person
        sandbox_ok = not ticket.sandbox or self._sandboxes_running < self.sandboxes
        return person_ok, sandbox_ok

    def _admit(self) -> None:
        sandbox_line_held = False
        for ticket in list(self._line):
            person_ok, sandbox_ok = self._fits(ticket)
            if person_ok and sandbox_ok and not (ticket.sandbox and sandbox_line_held):
                self._line.remove(ticket)
                if ticket.person is not None:
                    self._running[ticket.person] += 1
                self._sandboxes_running += ticket.sandbox
                ticket.admitted.set_result(None)
            elif person_ok and ticket.sandbox:
                sandbox_line_held = True  # first in line for a sandbox: nobody behind it takes one first

    def _release(self, ticket: _Ticket) -> None:
        if ticket.person is not None:
            self._running[ticket.person] -= 1
            if self._running[ticket.person] <= 0:
                del self._running[ticket.person]
        self._sandboxes_running -= ticket.sandbox

    def _why(self, ticket: _Ticket) -> Waiting:
        person_ok, _ = self._fits(ticket)
        ahead = [t for t in self._line[: self._line.index(ticket)] if t.sandbox and self._fits(t)[0]]
        return Waiting(person_limit=not person_ok, position=len(ahead) + 1 if person_ok else 0)
