"""Sub-sessions: a session's agent starts other sessions (its children), asks how they are, sends
them follow-ups and stops them (the agent's tools in bot/agent/subsession_tools.py call this).

A child is a session like any other (its own sandbox, event log and branch) with `parent_id`
set and no surface of its own. It is started through intake, so the access rules apply, in the
name of the person whose prompt runs in the parent (re-badged as `parent_session`): their
repositories, their rate limit, their slots, and their pull requests. Limits (settings): how deep
children nest, how many one session starts, how many sessions one tree holds; a call past one is
refused with a message the model reads.

A child's turn ending wakes nothing; the parent asks (`status`, which may wait). What happens to
a child (working, idle, a turn's outcome, its pull request) is relayed to its parent's log as a
`child_session` event, so the parent's Slack thread and web page show each child's line current.
Stopping a session stops everything below it (`SessionService.stop_descendants`).
"""

from __future__ import annotations

import asyncio
import logging
import re

from bot.agent.tools import ToolError
from bot.config import Settings
from bot.events import Author, ChildSession, Event, EventData, Origin, PullRequest, Status, TurnEnded
from bot.sessions.intake import Held, Hints, Intake, Refused, Request, Started
from bot.sessions.projection import SessionView, TurnView
from bot.sessions.service import SessionInfo, SessionService
from bot.util.keyed_locks import KeyedLocks

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[0-9a-f]{16}$")
ANSWER_TAIL = 1500
"""Characters of a child's latest answer its status shows (the end, where the summary is)."""
PR_STATES = {"opened": "open", "pushed": "open", "reopened": "open", "merged": "merged", "closed": "closed"}


class SubSessions:
    def __init__(self, settings: Settings, sessions: SessionService, intake: Intake):
        self.settings = settings
        self.sessions = sessions
        self.intake = intake
        self._trees = KeyedLocks()
        sessions.add_listener(self._on_event)

    # -- the agent's tools --------------------------------------------------------------------

    async def spawn(self, session_id: str, repo: str, prompt: str, title: str) -> str:
        """Start a child of `session_id` on `repo`; returns at once with its id."""
        by = self._prompter(session_id)
        parent = await self.sessions.get(session_id)
        if parent is None:
            raise ToolError("This session is gone.")
        s = self.settings
        ancestors = await self._ancestors(parent)
        if s.max_spawn_depth == 0:
            raise ToolError("Sub-sessions are turned off here (MAX_SPAWN_DEPTH=0); do the work in this session.")
        if len(ancestors) + 1 > s.max_spawn_depth:
            raise ToolError(f"Not started: sub-sessions nest at most {s.max_spawn_depth} level(s) deep "
                            f"(MAX_SPAWN_DEPTH), and this session is already a sub-session {len(ancestors)} level(s) "
                            "down. Do this work in this session instead.")
        root = ancestors[-1] if ancestors else parent
        async with self._trees.hold(root.id):  # two spawns in one tree do not both pass the limits
            children = await self.sessions.child_ids(session_id)
            if len(children) >= s.max_children_per_session:
                raise ToolError(f"Not started: this session already started {len(children)} sub-sessions, the most one "
                                f"session may (MAX_CHILDREN_PER_SESSION={s.max_children_per_session}). Give one of them "
                                "a follow-up with send_to_session, or do the work here.")
            size = await self._tree_size(root.id)
            if size >= s.max_sessions_per_tree:
                raise ToolError(f"Not started: this tree of sessions already holds {size} sessions, the most one tree "
                                f"may (MAX_SESSIONS_PER_TREE={s.max_sessions_per_tree}). Reuse a sub-session with "
                                "send_to_session, or do the work here.")
            author = by.model_copy(update={"origin": Origin.PARENT_SESSION})
            starting = asyncio.ensure_future(self.intake.submit(Request(prompt, author, hints=Hints(repo=repo.strip()),
                                                                        parent_id=session_id)))
            try:
                result = await asyncio.shield(starting)
            except asyncio.CancelledError:  # the parent's turn was stopped meanwhile: the child must not outlive it
                self.sessions.background(self._cancel_once_started(starting, by.id))
                raise
        if isinstance(result, Refused):
            raise ToolError(f"The sub-session was not started: {result.message}")
        if isinstance(result, Held):  # a named repository is never held; kept for the type's sake
            raise ToolError(f"The sub-session was not started: name one of these repositories: {', '.join(result.repos)}.")
        child = await self.sessions.retitle(result.session.id, title) or result.session
        self._announce(child)
        return (f"Started sub-session {child.id} on {child.repo} (\"{child.title}\"). It works on its own and does not "
                f"report back by itself: check on it with session_status(\"{child.id}\").")

    async def status(self, session_id: str, child_id: str, wait: float) -> str:
        """The child's state, its latest turn (outcome, the end of its answer, files) and its PR."""
        child = await self._own_child(session_id, child_id)
        if wait > 0:
            await self.sessions.wait_idle(child.id, wait)
        view = await self.sessions.view(child.id)
        return self._describe(child, view)

    async def send(self, session_id: str, child_id: str, prompt: str) -> str:
        child = await self._own_child(session_id, child_id)
        author = self._prompter(session_id).model_copy(update={"origin": Origin.PARENT_SESSION})
        busy = self.sessions.working(child.id)
        result = await self.intake.submit(Request(prompt, author, session_id=child.id))
        if isinstance(result, Refused):
            raise ToolError(f"Not sent: {result.message}")
        if isinstance(result, Held):
            raise ToolError("Not sent.")
        after = " It runs after what the sub-session is doing now." if busy else ""
        return f"Queued on sub-session {child.id}.{after} Check on it with session_status(\"{child.id}\")."

    async def cancel(self, session_id: str, child_id: str) -> str:
        child = await self._own_child(session_id, child_id)
        by = self.sessions.running_author(session_id) or child.creator or "agent"
        turn, cleared = await self.sessions.cancel(child.id, by)
        below = await self.sessions.stop_descendants(child.id, by)
        if turn:
            await self.sessions.wait_idle(child.id, 10)  # its turn has ended when the model reads on
        if not (turn or cleared or below):
            return f"Sub-session {child.id} was idle; there was nothing to stop."
        parts = (["its running turn"] if turn else []) + ([f"{cleared} queued prompt(s)"] if cleared else []) + (
            [f"{below} sub-session(s) of its own"] if below else [])
        return f"Stopped sub-session {child.id}: {', '.join(parts)}."

    def context(self, session_id: str) -> str | None:
        """The system prompt's paragraph on sub-sessions (no database read: the turn's session is cached)."""
        s = self.settings
        info = self.sessions.cached(session_id)
        depth = self._cached_depth(info)
        child = ("You are a sub-session: another session's agent started you and reads your answers with "
                 "session_status, so end each turn with a short summary that stands alone (what you found or "
                 "changed, and the pull request if you opened one). ") if info is not None and info.parent_id else ""
        if s.max_spawn_depth == 0 or (depth is not None and depth >= s.max_spawn_depth):
            return (child + "You cannot start sub-sessions of your own.") if child else None
        return child + (
            "You can start sub-sessions (spawn_session): other agents that work in parallel with you, each in a "
            "sandbox and on a branch of its own, in the name of the person you work for. Use them to research "
            "across several repositories at once, to split a large change into small pull requests (one "
            "sub-session each), or to try different approaches in parallel and keep the best; not for small "
            "tasks you can do yourself. They do not report back by themselves: go on with your own work, then "
            "ask with session_status (wait_seconds waits for one to finish). send_to_session queues a follow-up; "
            "cancel_session stops one. Finish by telling the person what each sub-session found or did. Limits: "
            f"{s.max_children_per_session} sub-sessions per session, {s.max_sessions_per_tree} sessions in one "
            f"tree, nested {s.max_spawn_depth} deep."
        )

    async def _cancel_once_started(self, starting: asyncio.Future[Started | Held | Refused], by: str) -> None:
        try:
            result = await starting
        except Exception:
            return
        if not isinstance(result, Started):
            return
        for _ in range(100):  # its runner may be between taking the prompt and starting the turn: retry a moment
            turn, cleared = await self.sessions.cancel(result.session.id, by)
            if turn or cleared or not self.sessions.working(result.session.id):
                return
            await asyncio.sleep(0.05)

    # -- relaying a child's changes to its parent ----------------------------------------------

    def _on_event(self, session_id: str, event: Event) -> None:
        """Listener for every session's events: a child's status, outcome and PR go to its parent's log."""
        data = event.data
        if not isinstance(data, Status | TurnEnded | PullRequest):
            return
        info = self.sessions.cached(session_id)
        if info is None:  # not in memory (a restart, a long-idle child): look it up, then relay
            self.sessions.background(self._relay_later(session_id, data))
        elif info.parent_id is not None:
            self._relay(info, data)

    async def _relay_later(self, session_id: str, data: EventData) -> None:
        info = await self.sessions.get(session_id)
        if info is not None and info.parent_id is not None:
            self._relay(info, data)

    def _announce(self, info: SessionInfo) -> None:
        """Who the child is (its title changed after it started), on its parent's line."""
        assert info.parent_id is not None
        self.sessions.emit(info.parent_id, ChildSession(child_id=info.id, share_token=info.share_token,
                                                        title=info.title, repo=info.repo))

    def _relay(self, info: SessionInfo, data: EventData) -> None:
        assert info.parent_id is not None
        who = ChildSession(child_id=info.id, share_token=info.share_token, title=info.title, repo=info.repo)
        if isinstance(data, Status):
            change = who.model_copy(update={"state": data.state})
        elif isinstance(data, TurnEnded):
            change = who.model_copy(update={"outcome": data.outcome, "error": data.error})
        elif isinstance(data, PullRequest):
            change = who.model_copy(update={"pr_number": data.number, "pr_url": data.url,
                                            "pr_state": PR_STATES.get(data.action)})
        else:
            return
        try:
            self.sessions.emit(info.parent_id, change)
        except Exception:
            log.exception("telling session %s about its sub-session %s failed", info.parent_id, info.id)

    # -- helpers ------------------------------------------------------------------------------

    def _prompter(self, session_id: str) -> Author:
        by = self.sessions.running_prompter(session_id)
        if by is None:
            raise ToolError("No prompt is running in this session.")
        return by

    async def _own_child(self, session_id: str, child_id: str) -> SessionInfo:
        info = await self.sessions.get(child_id) if SESSION_ID.match(child_id) else None
        if info is None or info.parent_id != session_id:
            mine = await self.sessions.child_ids(session_id)
            yours = f" Yours: {', '.join(mine)}." if mine else " This session has started none."
            raise ToolError(f"{child_id!r} is not a sub-session of this session.{yours}")
        return info

    async def _ancestors(self, info: SessionInfo) -> list[SessionInfo]:
        """Its parent, its parent's parent, ... up to the tree's first session."""
        found: list[SessionInfo] = []
        seen = {info.id}
        while info.parent_id is not None and info.parent_id not in seen:
            parent = await self.sessions.get(info.parent_id)
            if parent is None:
                break
            found.append(parent)
            seen.add(parent.id)
            info = parent
        return found

    def _cached_depth(self, info: SessionInfo | None) -> int | None:
        """How many ancestors the session has, from memory alone (None when one is not in memory)."""
        depth = 0
        while info is not None and info.parent_id is not None:
            info = self.sessions.cached(info.parent_id)
            if info is None:
                return None
            depth += 1
            if depth > self.settings.max_spawn_depth + 10:
                return None
        return depth if info is not None else None

    async def _tree_size(self, root_id: str) -> int:
        size, level = 1, [root_id]
        while level and size < self.settings.max_sessions_per_tree + 1:
            below = [c for parent in level for c in await self.sessions.child_ids(parent)]
            size += len(below)
            level = below
        return size

    def _describe(self, child: SessionInfo, view: SessionView) -> str:
        if self.sessions.waiting(child.id):
            state = ("waiting for a free slot (the person already has as many sessions working as they may, or every "
                     "sandbox is busy); it starts when one is free")
        elif self.sessions.working(child.id):
            current = view.current
            state = "working" + (f" ({current.activity})" if current is not None and current.activity else "")
        else:
            state = "idle"
        lines = [f"Sub-session {child.id} \"{child.title or ''}\" on {child.repo or 'no repository'}: {state}."]
        turn = next(reversed(view.turns.values()), None)
        if turn is None:
            lines.append("It has not started a turn yet.")
        else:
            lines.extend(_describe_turn(turn, len(view.turns)))
        if view.queue:
            lines.append(f"Queued after it: {len(view.queue)} prompt(s).")
        if view.branch:
            lines.append(f"Branch: {view.branch}")
        if view.pull_request is not None:
            pr = view.pull_request
            lines.append(f"Pull request: #{pr.number} {pr.url} ({pr.state})")
        if view.errors:
            lines.append(f"Problem: {view.errors[-1]}")
        return "\n".join(lines)


def _describe_turn(turn: TurnView, count: int) -> list[str]:
    prompt = " ".join(turn.prompt.split())
    lines = [f"Latest prompt (turn {count}): {prompt[:200] + ('…' if len(prompt) > 200 else '')}"]
    if turn.outcome is None:
        lines.append("Outcome: still running.")
    elif turn.outcome.value == "done":
        took = f" in {turn.duration_ms / 1000:.1f} s" if turn.duration_ms is not None else ""
        lines.append(f"Outcome: done{took}.")
    elif turn.outcome.value == "stopped":
        lines.append("Outcome: stopped" + (f" by {turn.stopped_by}." if turn.stopped_by else "."))
    else:
        lines.append(f"Outcome: {turn.outcome.value}: {turn.error or 'it failed'}")
    if turn.files:
        lines.append("Files changed: " + ", ".join(f"{path} ({action})" for path, action in turn.files.items()))
    if turn.notes:
        lines.append("Notes: " + " | ".join(" ".join(n.split())[:300] for n in turn.notes[-3:]))
    text = turn.text.strip()
    if text:
        cut = text if len(text) <= ANSWER_TAIL else "…" + text[-ANSWER_TAIL:]
        lines.append("Its answer" + (" so far" if turn.running else "") + f":\n{cut}")
    else:
        lines.append("No answer text" + (" yet." if turn.running else "."))
    return lines
