"""Follows a session's events and keeps its Slack thread current.

One status message per turn, edited in place with `chat.update`. Updates are coalesced: a
message is edited at most once per SLACK_UPDATE_INTERVAL however fast the model streams, and
the last state always lands. 429s are retried after Retry-After by slack-sdk's retry handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.sessions.events import Event, Kind
from bot.sessions.service import SessionInfo, SessionService
from bot.slack.format import TurnState, markdown_to_mrkdwn, render_turn

log = logging.getLogger(__name__)


class MessageView:
    """One Slack message whose content is re-rendered from a TurnState, coalesced."""

    def __init__(self, client: AsyncWebClient, channel: str, thread_ts: str, state: TurnState, interval: float,
                 ts: str | None = None, on_posted: Any = None):
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts
        self.state = state
        self.interval = interval
        self.ts = ts
        self._on_posted = on_posted
        self._dirty = asyncio.Event()
        self._final = False
        self._last = 0.0
        self._task = asyncio.create_task(self._flusher())

    def changed(self) -> None:
        self._dirty.set()

    async def finish(self) -> None:
        """Render the final state and wait until it is in Slack."""
        self._final = True
        self._dirty.set()
        await self._task

    async def _flusher(self) -> None:
        while True:
            await self._dirty.wait()
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty.clear()
            final = self._final
            await self._send()
            self._last = time.monotonic()
            if final and not self._dirty.is_set():
                return

    async def _send(self) -> None:
        text, blocks = render_turn(self.state)
        try:
            if self.ts is None:
                resp = await self.client.chat_postMessage(
                    channel=self.channel, thread_ts=self.thread_ts, text=text, blocks=blocks, unfurl_links=False
                )
                self.ts = resp["ts"]
                if self._on_posted:
                    self._on_posted(self.ts)
            else:
                await self.client.chat_update(channel=self.channel, ts=self.ts, text=text, blocks=blocks)
        except SlackApiError as exc:
            log.warning("Slack refused an update of %s/%s: %s", self.channel, self.ts, exc.response.get("error"))
        except Exception as exc:  # network trouble after retries: the next change tries again
            log.warning("Slack update of %s/%s failed: %r", self.channel, self.ts, exc)


class SlackRenderer:
    def __init__(self, client: AsyncWebClient, sessions: SessionService, settings: Settings):
        self.client = client
        self.sessions = sessions
        self.settings = settings
        self._tasks: set[asyncio.Task[None]] = set()

    def on_working(self, info: SessionInfo, after_seq: int) -> None:
        """Observer: a session started working; follow it until it is idle again."""
        if info.origin != "slack" or not info.slack_channel or not info.slack_thread_ts:
            return
        task = asyncio.create_task(self._follow(info, after_seq), name=f"slack-render-{info.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self, info: SessionInfo, after_seq: int) -> None:
        thread = _ThreadRenderer(self, info)
        async for event in self.sessions.follow(info.id, after_seq):
            if event.kind is Kind.SESSION_IDLE:
                break
            try:
                thread.apply(event)
            except Exception:
                log.exception("rendering %s event of session %s failed", event.kind, info.id)
        await thread.finish()

    async def post_note(self, info: SessionInfo, text: str) -> None:
        try:
            await self.client.chat_postMessage(
                channel=info.slack_channel,  # type: ignore[arg-type]
                thread_ts=info.slack_thread_ts,
                text=text[:3000],
                blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": ":memo: " + markdown_to_mrkdwn(text)[:2900]}}],
                unfurl_links=False,
            )
        except Exception as exc:
            log.warning("posting a note to %s failed: %r", info.slack_channel, exc)


class _ThreadRenderer:
    """The Slack side of one working period of one session."""

    def __init__(self, renderer: SlackRenderer, info: SessionInfo):
        self.r = renderer
        self.info = info
        self.views: dict[int, MessageView] = {}
        self.current: int | None = None
        self.pending: list[asyncio.Task[Any]] = []

    def apply(self, event: Event) -> None:
        data, view = event.data, self.views.get(self.current) if self.current is not None else None
        if event.kind is Kind.TURN_STARTED and event.turn is not None:
            self.current = event.turn
            self.views[event.turn] = self._view(event.turn, data["author"]["id"], data["text"])
            self.views[event.turn].changed()
        elif event.kind in (Kind.PROMPT_QUEUED, Kind.QUEUE_CLEARED):
            if view is not None:
                view.state.queued = self.r.sessions.queued_count(self.info.id)
                view.changed()
        elif event.kind is Kind.NOTE:
            self.pending.append(asyncio.create_task(self.r.post_note(self.info, data["text"])))
        elif event.kind is Kind.TURN_ENDED and event.turn is not None:
            self._end(event)
        elif view is not None and event.turn == self.current:
            if event.kind is Kind.TEXT_DELTA:
                view.state.text += data["text"]
            elif event.kind is Kind.TOOL_CALL:
                view.state.activity = f"Running {data.get('name') or 'a tool'}…"
            elif event.kind is Kind.TOOL_RESULT:
                view.state.activity = None
            view.changed()

    def _end(self, event: Event) -> None:
        turn, data = event.turn, event.data
        assert turn is not None
        view = self.views.get(turn)
        if view is None:  # it started before a restart: pick up its message and text from the log
            started = self.r.sessions.turn_started(self.info.id, turn)
            author = started.data["author"]["id"] if started else "unknown"
            view = self._view(turn, author, started.data["text"] if started else "")
            view.state.text = self.r.sessions.turn_text(self.info.id, turn)
            self.views[turn] = view
        view.state.outcome = data["outcome"]
        view.state.detail = data.get("by") or data.get("error")
        view.state.duration_ms = data.get("duration_ms")
        view.state.queued = 0
        self.pending.append(asyncio.create_task(view.finish()))
        if turn == self.current:
            self.current = None

    def _view(self, turn: int, author: str, prompt: str) -> MessageView:
        info, ref = self.info, f"slack.turn.{turn}"
        slog = self.r.sessions.logs.get(info.id)
        state = TurnState(
            author=author,
            prompt=prompt,
            session_id=info.id,
            session_url=self.r.settings.session_url(info.share_token),
            queued=slog.queued_count(),
        )
        return MessageView(
            self.r.client, info.slack_channel, info.slack_thread_ts, state,  # type: ignore[arg-type]
            self.r.settings.slack_update_interval,
            ts=slog.get_ref(ref),
            on_posted=lambda ts: slog.set_ref(ref, ts),
        )

    async def finish(self) -> None:
        unfinished = [v.finish() for v in self.views.values() if v.state.running]
        await asyncio.gather(*unfinished, *self.pending, return_exceptions=True)
