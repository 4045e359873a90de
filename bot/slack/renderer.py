"""Follows sessions' events and keeps their Slack threads current.

Message layout, per turn:

- The turn's own message ("head"): `<@author> asked: …`, the status line (Working… / Running
  tool… / Done in 1.2 s / Stopped by <@U> / what went wrong), *View session*, *Stop* and
  *Clear queue (n)*. Posted when there is something worth showing: when the turn ends, or
  FIRST_POST_AFTER (0.5 s) after it started, whichever comes first (a note from the agent
  posts it at once, above the note). So a person sees a reply within a second, and a quick
  turn is a single `chat.postMessage` holding the answer, the final status and the buttons.
  From its first post on, the head is edited as the status changes.
- The answer, when the model writes for a while, is streamed with Slack's streaming methods
  (`chat.startStream` / `appendStream` / `stopStream`) into its own message right below the
  head. A streamed message is append-only: it cannot carry a status line that changes or a Stop
  button that goes away when the turn ends, so those stay in the head above it.
- A short answer (complete within SLACK_UPDATE_INTERVAL of its first word), and every answer
  where streaming is refused or does not apply (no Slack user to stream to, `chat.startStream`
  rate limited, a workspace or channel that refuses it), lives in the head itself, edited in
  place at most once per interval (the final edit is not held back; see the outbox). A turn
  that outlives the first post but not its first second of text is one message and two
  writes; fewer writes are also what keeps threads whole when Slack rate-limits a burst.
- Past one message's Markdown limit an answer continues in further messages, split at line
  ends, nothing cut off.

All writes go through the outbox (`bot.slack.delivery`): coalesced, prioritised, and retried
past rate limits. The renderer reads sessions only through `SlackSessions` (the projection of
the event log, and small per-session refs where it keeps Slack message timestamps).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.events import Event, Note, Origin, ParticipantsAdded, PromptQueued, QueueChanged, Status, TextDelta, TurnEnded
from bot.sessions.projection import SessionView, TurnView
from bot.sessions.service import SessionInfo
from bot.slack.delivery import Content, Outbox, Priority, Slot
from bot.slack.format import (
    PART_LIMIT,
    Head,
    close_fence,
    fence_at,
    is_user_id,
    markdown_block,
    render_head,
    render_note,
    render_part,
    reopen_fence,
    sanitize_markdown,
    split_markdown,
    usage_text,
)
from bot.slack.messages import thread_of

log = logging.getLogger(__name__)

SOFT_LIMIT = PART_LIMIT - 2_000
"""Past this much of a streamed part, only whole lines are streamed, so a cut can fall at a line end."""
FIRST_POST_AFTER = 0.5
"""Seconds after a turn starts that its message is posted if the turn has not ended by then."""
CLOSE_RESERVE = 20
"""Room kept in a streamed part for the fence that closes it."""
STREAM_GLOBAL_REFUSALS = frozenset({"unknown_method", "method_not_supported", "method_deprecated", "not_allowed",
                                    "not_allowed_token_type", "missing_scope", "feature_not_enabled"})


class SlackSessions(Protocol):
    """What the renderer needs from the sessions layer: the log's projection, never its storage."""

    def add_observer(self, observer: Callable[[SessionInfo, int], None]) -> None:
        """Call `observer(info, after_seq)` when a session starts working (the client registers `on_working`)."""

    def follow(self, session_id: str, after_seq: int = 0) -> AsyncIterator[Event]:
        """Every event after `after_seq`, replayed then live, no gap or duplicate."""
        ...

    async def view(self, session_id: str, upto_seq: int | None = None) -> SessionView:
        """The projection of the log up to `upto_seq` (all of it when None)."""
        ...

    def get_ref(self, session_id: str, key: str) -> str | None:
        """A small value a surface keeps with the session (here: Slack message timestamps)."""

    def set_ref(self, session_id: str, key: str, value: str) -> None: ...


class SlackRenderer:
    """Register `on_working` as a sessions observer; `close()` delivers what must land, then stops."""

    def __init__(self, client: AsyncWebClient, sessions: SlackSessions, settings: Settings, *,
                 outbox: Outbox | None = None, streaming: bool = True, stream_after: float | None = None,
                 first_post_after: float = FIRST_POST_AFTER, close_timeout: float = 5.0):
        self.client = client
        self.sessions = sessions
        self.settings = settings
        self.outbox = outbox or Outbox(client, interval=settings.slack_update_interval)
        self.streaming = streaming
        self.stream_after = settings.slack_update_interval if stream_after is None else stream_after
        self.first_post_after = first_post_after
        self.close_timeout = close_timeout
        self.team_id: str | None = None
        self.pull_requests = settings.github_app_enabled
        """Whether finished turns offer *Create PR*."""
        self._team_lookup: asyncio.Task[None] | None = None
        self._refused_channels: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def on_working(self, info: SessionInfo, after_seq: int) -> None:
        """Observer: a session started working; follow it until it is idle again."""
        thread = thread_of(info)
        if thread is None:
            return
        if self.streaming and self.team_id is None and (self._team_lookup is None or self._team_lookup.done()):
            self._team_lookup = asyncio.create_task(self._lookup_team(), name="slack-team-id")
        task = asyncio.create_task(self._follow(info, *thread, after_seq), name=f"slack-render-{info.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in [*self._tasks, *([self._team_lookup] if self._team_lookup else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.outbox.close(self.close_timeout)

    # -- internals ----------------------------------------------------------------------------

    async def _follow(self, info: SessionInfo, channel: str, thread_ts: str, after_seq: int) -> None:
        try:
            view = await self.sessions.view(info.id, upto_seq=after_seq)
            thread = _ThreadRender(self, info, channel, thread_ts, view)
        except Exception:
            log.exception("cannot render session %s in Slack", info.id)
            return
        try:
            async for event in self.sessions.follow(info.id, after_seq):
                try:
                    thread.apply(event)
                except Exception:
                    log.exception("rendering a %s event of session %s failed", event.kind, info.id)
                if isinstance(event.data, Status) and event.data.state == "idle":
                    break
        except Exception:
            log.exception("following session %s for Slack failed", info.id)
        finally:
            thread.close()

    async def _lookup_team(self) -> None:
        """Streaming in a channel names its recipient's team; ours is the bot's."""
        try:
            self.team_id = (await self.client.auth_test()).get("team_id")
        except Exception as exc:
            log.info("no team id for streaming (%r); answers are edited in place", exc)

    def may_stream(self, channel: str, user: str) -> bool:
        """Whether a turn asked by `user` may stream in `channel` right now."""
        if not self.streaming or channel in self._refused_channels or "*" in self._refused_channels:
            return False
        if self.outbox.paused("chat.startStream"):
            return False
        return channel.startswith("D") or (is_user_id(user) and self.team_id is not None)

    def stream_refused(self, channel: str, error: str) -> None:
        self._refused_channels.add("*" if error in STREAM_GLOBAL_REFUSALS else channel)


class _ThreadRender:
    """The Slack side of one working period of one session."""

    def __init__(self, r: SlackRenderer, info: SessionInfo, channel: str, thread_ts: str, view: SessionView):
        self.r, self.info, self.channel, self.thread_ts, self.view = r, info, channel, thread_ts, view
        self.session_url = r.settings.session_url(info.share_token)
        self.turns: dict[int, _TurnRender] = {}

    def apply(self, event: Event) -> None:
        data = event.data
        turn = self.view.apply(event)
        if isinstance(data, Note):
            self.post_note(data.text)
        elif isinstance(data, ParticipantsAdded):
            self.post_note(f"{', '.join(f'<@{p}>' for p in data.people)} can now prompt this session.")
        elif isinstance(data, PromptQueued | QueueChanged):
            current = self.view.current
            if current is not None and current.prompt_id in self.turns:
                self.turns[current.prompt_id].status_changed()
        if turn is None or isinstance(data, Note):
            return
        render = self.turns.get(turn.prompt_id)
        if render is None:
            render = self.turns[turn.prompt_id] = _TurnRender(self, turn, since=event.ts)
        if isinstance(data, TextDelta):
            render.text_changed()
        elif isinstance(data, TurnEnded):
            render.ended()
        else:
            render.status_changed()

    def allowed(self) -> frozenset[str]:
        """Whose mentions may pass: the people who prompted this session, stopped a turn, created it,
        or were added to it by its starter."""
        people = {t.author.id for t in self.view.turns.values()} | {q.author.id for q in self.view.queue}
        people |= self.view.participants
        people |= {t.stopped_by for t in self.view.turns.values() if t.stopped_by}
        people.add(getattr(self.info, "creator", None) or "")
        return frozenset(p for p in people if is_user_id(p))

    def post_note(self, text: str) -> None:
        for turn in self.turns.values():
            turn.show()  # a milestone is worth showing, and it goes below its turn's message
        for fallback, blocks in render_note(text, self.allowed()):
            self.r.outbox.post(self.channel, self.thread_ts, Content(fallback, blocks))

    def ref(self, key: str) -> str | None:
        return self.r.sessions.get_ref(self.info.id, key)

    def set_ref(self, key: str, value: str) -> None:
        try:
            self.r.sessions.set_ref(self.info.id, key, value)
        except Exception:
            log.exception("keeping Slack ref %s of session %s failed", key, self.info.id)

    def close(self) -> None:
        for turn in self.turns.values():
            turn.cancel_timer()
            turn.show()  # stopped following (shutdown) mid-turn: the turn's message must still land


class _TurnRender:
    """One turn's messages: its head, and the answer in the head or in messages below it."""

    def __init__(self, thread: _ThreadRender, turn: TurnView, since: float):
        self.t, self.turn = thread, turn
        self.key = f"slack.turn.{turn.prompt_id}"
        outbox = thread.r.outbox
        head_ts, layout = thread.ref(self.key), thread.ref(self.key + ".layout")
        self.mode = layout if layout in ("inline", "separate") else "inline" if head_ts else "pending"
        if self.mode == "pending" and not thread.r.streaming:
            self.mode = "inline"
        self.streamed = False
        """The answer's messages are streams cut as the text grew (else split whole, and edited)."""
        self.head = outbox.slot(thread.channel, thread.thread_ts, self._render_head, ts=head_ts,
                                on_posted=lambda ts: thread.set_ref(self.key, ts))
        self.parts: list[Slot] = []
        while ts := thread.ref(f"{self.key}.msg.{len(self.parts) + 1}"):
            self.parts.append(self._part_slot(ts=ts))
        self.cuts: list[int] = []
        self.shown: list[int] = []
        self.reopens: list[str] = []
        self.closes: list[tuple[str, str] | None] = []
        self._extra = 0
        """How much longer the sanitized answer was than the raw one, last time."""
        self._text_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._show_timer: asyncio.TimerHandle | None = None
        self.held = head_ts is None
        """The head is not posted yet: it waits for the turn's end or `first_post_after` (see `show`)."""
        self._cache: dict[tuple[int, bool, frozenset[str]], str] = {}
        self._split: tuple[int, list[str]] = (-1, [])
        if self.held:
            delay = thread.r.first_post_after - max(0.0, time.time() - since)
            if not turn.running or delay <= 0:
                self.show()
            else:
                self._show_timer = asyncio.get_running_loop().call_later(delay, self.show)

    # -- events -------------------------------------------------------------------------------

    def show(self) -> None:
        """Post the turn's message now (its current state) if it is still held."""
        if self._show_timer is not None:
            self._show_timer.cancel()
            self._show_timer = None
        if self.held:
            self.held = False
            self.head.changed(Priority.URGENT, final=not self.turn.running)

    def _head_changed(self, priority: Priority, final: bool = False) -> None:
        """The head's state changed; while it is held this waits for `show()`, which sends the latest."""
        if not self.held:
            self.head.changed(priority, final=final)

    def status_changed(self) -> None:
        self._head_changed(Priority.STATUS, final=not self.turn.running)

    def text_changed(self) -> None:
        """O(1) per delta: the text is rendered when a message is sent, at most once per interval."""
        if self.mode == "pending":
            if self._text_since is None and self.turn.text.strip():
                self._text_since = time.monotonic()
                self._timer = asyncio.get_running_loop().call_later(self.t.r.stream_after, self._decide)
            return
        if self.mode == "inline":
            self._head_changed(Priority.ANSWER)
        elif self.streamed and len(self.turn.text) + self._extra + 200 > self._cap_end():
            self._advance_stream(final=False)  # near the end of a part: it may need cutting now
        if self.parts:
            self.parts[-1].changed(Priority.ANSWER)

    def ended(self) -> None:
        self.cancel_timer()
        if self.mode == "pending":
            self.mode = "inline"
        if self.streamed and len(self.parts) == 1 and self.parts[0].cancel():
            self._to_inline()  # the stream never started: the whole answer goes in the head
        if self.streamed:
            self._advance_stream(final=True)
        else:
            self._sync_parts(final=True)
        for part in self.parts:
            part.changed(Priority.URGENT, final=True)
        self.head.final_after = list(self.parts)
        self.held = False  # a quick turn: its one message is posted in its final state
        self.head.changed(Priority.URGENT, final=True)

    def cancel_timer(self) -> None:
        for timer in (self._timer, self._show_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._show_timer = None

    # -- streaming ----------------------------------------------------------------------------

    def _decide(self) -> None:
        """The model has been writing for a while: stream the answer below the head, if we may."""
        self._timer = None
        if self.mode != "pending" or not self.turn.running:
            return
        r = self.t.r
        if self.head.ts is not None and r.may_stream(self.t.channel, self.turn.author.id):
            self.mode, self.streamed = "separate", True
            self.t.set_ref(self.key + ".layout", "separate")
            self.cuts, self.shown, self.reopens, self.closes = [0], [0], [""], []
            self.parts.append(self._part_slot(stream=True))
            self.parts[-1].changed(Priority.URGENT)
        else:
            self.mode = "inline"
            self._head_changed(Priority.ANSWER)

    def _cap_end(self) -> int:
        return self.cuts[-1] + PART_LIMIT - len(self.reopens[-1]) - CLOSE_RESERVE

    def _advance_stream(self, final: bool) -> None:
        """Extend the open streamed part; when the text outgrows it, close it at a line end and open the next."""
        text = self._sanitized(final)
        while True:
            j = len(self.cuts) - 1
            start, reopen, cap_end = self.cuts[j], self.reopens[j], self._cap_end()
            if len(text) <= cap_end:
                end = len(text)
                if not final and end - start + len(reopen) > SOFT_LIMIT:
                    end = max(start + SOFT_LIMIT - len(reopen), text.rfind("\n", start, end) + 1)
                self.shown[j] = min(len(text), max(self.shown[j], end))
                break
            newline = text.rfind("\n", max(start, self.shown[j] - 1), cap_end)
            cut = newline + 1 if newline >= start else cap_end
            cut = max(cut, min(self.shown[j], cap_end))
            fence = fence_at(text, cut)
            self.cuts.append(cut)
            self.shown[j] = cut
            self.shown.append(cut)
            self.closes.append(fence)
            self.reopens.append(reopen_fence(fence))
            self.parts[j].changed(Priority.URGENT, final=True)  # complete: stop it
            self.parts.append(self._part_slot(stream=True))
            self.parts[-1].changed(Priority.URGENT)

    def _stream_part(self, i: int) -> str:
        if i == len(self.cuts) - 1:
            self._advance_stream(not self.turn.running)  # at send time: the latest text, cut if it must be
        text = self._sanitized(not self.turn.running)
        if i + 1 < len(self.cuts):
            return self.reopens[i] + close_fence(text[self.cuts[i]:self.cuts[i + 1]], self.closes[i])
        return self.reopens[i] + text[self.cuts[i]:self.shown[i]]

    def _stream_refused(self, slot: Slot, error: str) -> None:
        self.t.r.stream_refused(self.t.channel, error)
        if self.parts and slot is self.parts[0] and slot.cancel():
            self._to_inline()  # nothing was shown yet: the answer moves into the head
            self._head_changed(Priority.ANSWER, final=not self.turn.running)

    def _to_inline(self) -> None:
        self.mode, self.streamed, self.parts = "inline", False, []
        self.t.set_ref(self.key + ".layout", "inline")

    # -- edited answers -----------------------------------------------------------------------

    def _sync_parts(self, final: bool) -> None:
        """Messages for the parts of the answer that do not fit in the one before (new ones only:
        this runs inside renders, and must not mark the message being sent as changed)."""
        parts = self._edit_parts()
        wanted = max(0, len(parts) - 1) if self.mode == "inline" else len(parts)
        while len(self.parts) < wanted:
            self.parts.append(self._part_slot())
            self.parts[-1].changed(Priority.URGENT, final=final)

    def _edit_parts(self) -> list[str]:
        text = self._sanitized(True)
        if self._split[0] != len(text):
            self._split = (len(text), split_markdown(text))
        return self._split[1]

    # -- rendering ----------------------------------------------------------------------------

    def _sanitized(self, whole: bool) -> str:
        """The answer as safe Markdown; while streaming, only up to its last whitespace, so a
        half-written `<!…` or link is decided when it is whole."""
        raw, allowed = self.turn.text, self.t.allowed()
        if not whole:
            raw = raw[: max(raw.rfind(" "), raw.rfind("\n"), raw.rfind("\t")) + 1]
        key = (len(raw), whole, allowed)
        if key not in self._cache:
            self._cache = {key: sanitize_markdown(raw, allowed)}
            self._extra = len(self._cache[key]) - len(raw)
        return self._cache[key]

    def _render_head(self, degraded: bool) -> Content:
        turn, view = self.turn, self.t.view
        answer: str | None = None
        if self.mode == "inline":
            self._sync_parts(final=not turn.running)  # at send time: continuation messages as the answer grows
            parts = self._edit_parts()
            answer = parts[0] if parts else ""
            if degraded and answer:
                answer = "_This answer could not be shown here; it is in the session view._"
        stopped = turn.outcome is not None and turn.outcome.value == "stopped"
        head = Head(
            author=turn.author.id, prompt=turn.prompt, session_id=self.t.info.id, session_url=self.t.session_url,
            via="the web" if turn.author.origin is Origin.WEB else None,
            can_open_pr=self.t.r.pull_requests and self.t.info.repo is not None,
            footer=(usage_text(turn.usage.tokens, turn.usage.estimated, turn.usage.cost_usd if turn.usage.priced else None)
                    if self.t.r.settings.usage_footer and turn.usage.calls else None),
            allowed=self.t.allowed(), answer=answer, answer_preview=turn.text if answer else "",
            activity=turn.activity, queued=len(view.queue) if turn.running else 0,
            outcome=turn.outcome.value if turn.outcome is not None else None,
            detail=turn.stopped_by if stopped else turn.error, duration_ms=turn.duration_ms,
            trace_url=f"{self.t.session_url}#e{turn.trace_seq}" if turn.trace_seq is not None else None,
        )
        text, blocks = render_head(head)
        return Content(text, blocks)

    def _part_slot(self, ts: str | None = None, stream: bool = False) -> Slot:
        index = len(self.parts)
        t = self.t
        recipient = (t.r.team_id, self.turn.author.id) if stream and not t.channel.startswith("D") else (None, None)
        slot: Slot | None = None

        def refused(error: str) -> None:
            assert slot is not None
            self._stream_refused(slot, error)

        slot = t.r.outbox.slot(
            t.channel, t.thread_ts, lambda degraded: self._render_part(index, degraded), ts=ts,
            stream=recipient if stream else None, on_stream_refused=refused,
            on_posted=lambda posted: t.set_ref(f"{self.key}.msg.{index + 1}", posted),
        )
        return slot

    def _render_part(self, i: int, degraded: bool) -> Content:
        if self.streamed and i < len(self.cuts):
            markdown = self._stream_part(i)
        else:
            parts = self._edit_parts()
            at = i + 1 if self.mode == "inline" else i
            markdown = parts[at] if at < len(parts) else "_(continued above)_"
        if degraded:
            markdown = "_This part of the answer could not be shown here; it is in the session view._"
        text, blocks = render_part(markdown or "…", markdown, self.t.allowed())
        return Content(text, blocks if markdown else [markdown_block("…")], markdown)


# -- temporary: the sessions layer on this branch before its rewrite lands ------------------------
