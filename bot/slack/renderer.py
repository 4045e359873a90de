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
from bot.events import Event, Note, PromptQueued, QueueChanged, Status
from bot.sessions.projection import SessionView, TurnView
from bot.sessions.service import SessionInfo, SessionService
from bot.slack.format import TurnState, markdown_to_mrkdwn, render_turn
from bot.slack.messages import thread_of

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
        if thread_of(info) is None:
            return
        task = asyncio.create_task(self._follow(info, after_seq), name=f"slack-render-{info.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self, info: SessionInfo, after_seq: int) -> None:
        view = await self.sessions.view(info.id, after_seq)
        thread = _ThreadRenderer(self, info, view)
        async for event in self.sessions.follow(info.id, view.last_seq):
            if isinstance(event.data, Status) and event.data.state == "idle":
                break
            try:
                thread.apply(event)
            except Exception:
                log.exception("rendering %s event of session %s failed", event.kind, info.id)
        await thread.finish()

    async def post_note(self, info: SessionInfo, text: str) -> None:
        where = thread_of(info)
        assert where is not None
        try:
            await self.client.chat_postMessage(
                channel=where[0],
                thread_ts=where[1],
                text=text[:3000],
                blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": ":memo: " + markdown_to_mrkdwn(text)[:2900]}}],
                unfurl_links=False,
            )
        except Exception as exc:
            log.warning("posting a note to %s failed: %r", where[0], exc)


class _ThreadRenderer:
    """The Slack side of one working period of one session."""

    def __init__(self, renderer: SlackRenderer, info: SessionInfo, view: SessionView):
        self.r = renderer
        self.info = info
        self.view = view
        self.messages: dict[int, MessageView] = {}
        self.pending: list[asyncio.Task[Any]] = []

    def apply(self, event: Event) -> None:
        turn = self.view.apply(event)
        if isinstance(event.data, Note):
            self.pending.append(asyncio.create_task(self.r.post_note(self.info, event.data.text)))
        current = self.view.current
        if isinstance(event.data, PromptQueued | QueueChanged) and current is not None:
            self._message(current).changed()
        if turn is None:
            return
        message = self._message(turn)
        if turn.running:
            message.changed()
        else:
            self.pending.append(asyncio.create_task(message.finish()))

    def _message(self, turn: TurnView) -> MessageView:
        message = self.messages.get(turn.prompt_id)
        if message is None:
            ref = f"slack.turn.{turn.prompt_id}"
            where = thread_of(self.info)
            assert where is not None
            state = TurnState(turn=turn, view=self.view, session_id=self.info.id,
                              session_url=self.r.settings.session_url(self.info.share_token))
            message = MessageView(
                self.r.client, where[0], where[1], state, self.r.settings.slack_update_interval,
                ts=self.r.sessions.get_ref(self.info.id, ref),
                on_posted=lambda ts: self.r.sessions.set_ref(self.info.id, ref, ts),
            )
            self.messages[turn.prompt_id] = message
        return message

    async def finish(self) -> None:
        unfinished = [m.finish() for m in self.messages.values() if m.state.turn.running]
        await asyncio.gather(*unfinished, *self.pending, return_exceptions=True)
