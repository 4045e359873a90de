"""A parent session's sub-sessions in its Slack thread: one message, a line per child (title linking
to its page, repository, status, pull request), posted with the first child and edited as they
change, whether the parent is working or idle.

The client's session listener hands every `child_session` event of a session here; the lines are
the sessions layer's projection of them (`merge_child`). After a restart the first event loads
the parent's projection, and the message's `ts` is kept with the session (`slack.children`), so
the same message goes on being edited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from cachetools import LRUCache

from bot.config import Settings
from bot.events import ChildSession, Event
from bot.sessions.projection import ChildView, SessionView, merge_child
from bot.sessions.service import SessionInfo
from bot.slack.delivery import Content, Outbox, Priority, Slot
from bot.slack.format import SECTION_LIMIT, Block, escape
from bot.slack.messages import thread_of

log = logging.getLogger(__name__)

REF = "slack.children"
"""Where the message's ts is kept with the parent session."""
BOARDS_KEPT = 1024
MAX_LINES = 45
"""Lines shown (a section each, under Slack's 50 blocks); the rest are counted."""
STATUS = {"working": ":hourglass_flowing_sand: working", "done": ":white_check_mark: done",
          "stopped": ":black_square_for_stop: stopped", "failed": ":warning: failed",
          "interrupted": ":warning: interrupted", "idle": "idle"}


class BoardSessions(Protocol):
    async def get(self, session_id: str) -> SessionInfo | None: ...
    async def view(self, session_id: str, upto_seq: int | None = None) -> SessionView: ...
    def get_ref(self, session_id: str, key: str) -> str | None: ...
    def set_ref(self, session_id: str, key: str, value: str) -> None: ...


async def nearest_thread(sessions: BoardSessions, info: SessionInfo | None) -> tuple[str, str] | None:
    """The session's Slack thread, or for a sub-session (which has none) its nearest ancestor's."""
    seen: set[str] = set()
    while info is not None and info.id not in seen:
        if (thread := thread_of(info)) is not None:
            return thread
        seen.add(info.id)
        info = await sessions.get(info.parent_id) if info.parent_id else None
    return None


class ChildrenBoard:
    """Keeps each parent's sub-sessions message current; `changed` is called from a session listener."""

    def __init__(self, outbox: Outbox, sessions: BoardSessions, settings: Settings):
        self.outbox = outbox
        self.sessions = sessions
        self.settings = settings
        self._boards: LRUCache[str, _Board] = LRUCache(BOARDS_KEPT)
        self._tasks: set[asyncio.Task[None]] = set()

    def changed(self, parent_id: str, event: Event) -> None:
        if not isinstance(event.data, ChildSession):
            return
        board = self._boards.get(parent_id)
        if board is None:
            board = self._boards[parent_id] = _Board(self, parent_id)
            task = asyncio.create_task(board.load(), name=f"slack-children-{parent_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        board.apply(event)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _Board:
    def __init__(self, owner: ChildrenBoard, parent_id: str):
        self.owner, self.parent_id = owner, parent_id
        self.children: dict[str, ChildView] = {}
        self.last_seq = 0
        self.loaded = False
        self.gone = False
        """The parent has no Slack thread (or could not be read): nothing to show."""
        self.pending: list[Event] = []
        self.slot: Slot | None = None

    async def load(self) -> None:
        sessions = self.owner.sessions
        try:
            info = await sessions.get(self.parent_id)
            thread = thread_of(info) if info is not None else None
            if thread is None:
                self.gone = True
                return
            view = await sessions.view(self.parent_id)
        except Exception:
            log.exception("cannot show the sub-sessions of %s in Slack", self.parent_id)
            self.gone = True
            return
        self.children, self.last_seq, self.loaded = view.children, view.last_seq, True
        for event in self.pending:
            self.apply(event)
        self.pending.clear()

        def posted(ts: str) -> None:
            try:
                sessions.set_ref(self.parent_id, REF, ts)
            except Exception:
                log.exception("keeping the sub-sessions message of %s failed", self.parent_id)

        url = self.owner.settings.session_url
        self.slot = self.owner.outbox.slot(thread[0], thread[1], lambda degraded: render_children(self.children, url),
                                           ts=sessions.get_ref(self.parent_id, REF), on_posted=posted)
        self.slot.changed(Priority.STATUS, final=True)

    def apply(self, event: Event) -> None:
        if self.gone:
            return
        if not self.loaded:
            self.pending.append(event)
            return
        if event.seq <= self.last_seq or not isinstance(event.data, ChildSession):
            return
        self.last_seq = event.seq
        merge_child(self.children, event.data)
        if self.slot is not None:
            self.slot.changed(Priority.STATUS, final=True)  # every state lands: it is the only line a child has


def render_children(children: dict[str, ChildView], session_url: Callable[[str], str]) -> Content:
    """The message: a heading and a line per sub-session, everything escaped."""
    items = list(children.values())
    working = sum(1 for c in items if c.status == "working")
    text = f"Sub-sessions: {len(items)}" + (f" ({working} working)" if working else "")
    blocks: list[Block] = [{"type": "context", "elements": [{"type": "mrkdwn", "text": f"*{escape(text)}*"}]}]
    for child in items[:MAX_LINES]:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": child_line(child, session_url)}})
    if len(items) > MAX_LINES:
        more = f"…and {len(items) - MAX_LINES} more (on the session's page)"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": more}]})
    return Content(text, blocks)


def child_line(child: ChildView, session_url: Callable[[str], str]) -> str:
    title = " ".join((child.title or f"Session {child.id}").split())
    title = escape(title if len(title) <= 80 else title[:79] + "…")
    name = f"<{session_url(child.share_token)}|{title}>" if child.share_token else title
    parts = [f"• {name}", f"`{escape(child.repo)}`" if child.repo else "no repository", STATUS.get(child.status, child.status)]
    if child.status == "failed" and child.error:
        reason = " ".join(child.error.split())
        parts[-1] += ": " + escape(reason if len(reason) <= 120 else reason[:119] + "…")
    if child.pr_url and child.pr_number is not None:
        state = f" ({escape(child.pr_state)})" if child.pr_state and child.pr_state != "open" else ""
        parts.append(f"<{escape(child.pr_url)}|PR #{child.pr_number}>{state}")
    return " · ".join(parts)[:SECTION_LIMIT]
