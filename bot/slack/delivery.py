"""The outbox: every Slack write of the renderer goes through here, so none is lost to a rate limit.

Slack limits writes per method and workspace and answers HTTP 429 with `Retry-After`. slack-sdk's
retry handler sleeps and retries a few times, then gives up, and each waiting call still holds a
place while the others keep hammering. Here instead:

- A message is a `Slot` holding the *latest wanted state* (a render callback), not a queue of
  calls: edits coalesce, the latest state wins, and rendering happens once per send.
- Priorities: first posts and final states go before interim answer edits, which go before
  interim status edits. Within a priority, oldest first. For a while after a 429, interim
  edits wait as long as any first post or final state does (Slack's budgets are per method,
  but a workspace that limits one write usually limits the others).
- A 429 pauses that method for `Retry-After` seconds and drops its concurrency to one, growing
  again with each success; nothing is sent to a paused method.
- A first post or a final state is retried until it lands (network errors and 5xx with
  backoff); only `close()` bounds it. An interim state is only ever superseded.
- Messages of one thread are first posted in the order they were created (a later message
  waits for the earlier one's `ts`), so a thread reads in order whatever was retried.
- Writes to one message are paced (Slack asks for about one a second per message): an interim
  edit waits `interval` after the message's last write; a final state waits only if the message
  already had `burst` writes (default 2) within the last `interval`. So a final edit right after
  the first post or after one interim edit goes at once (a quick answer is never held a second),
  and no message ever gets more than `burst` writes in any `interval`.
- A slot can hold its final state back until others' final states landed (a turn's message
  says Done only once its answer is whole).
- Stream slots use `chat.startStream` / `appendStream` / `stopStream`: the render gives the
  part's whole text so far and the slot sends what Slack does not have yet. If Slack refuses
  the stream, or the text stops extending what was sent, the slot turns into an ordinary
  message edited with `chat.update` (what slack-sdk documents for an expired stream).
  slack-sdk's `chat_stream` helper is not used: it buffers by size and calls Slack directly,
  past everything above.

Without rate limiting nothing waits: a send starts as soon as a slot changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.format import Block
from bot.util.metrics import Metrics

log = logging.getLogger(__name__)


class Priority(IntEnum):
    URGENT = 0
    """A first post or a final state: must land."""
    ANSWER = 1
    """An interim state of an answer's text."""
    STATUS = 2
    """An interim status (a tool running, the queue length)."""


STREAM_REFUSED = frozenset({
    "unknown_method", "method_not_supported", "method_deprecated", "not_allowed", "not_allowed_token_type",
    "missing_scope", "feature_not_enabled", "invalid_arguments", "channel_type_not_supported",
    "missing_recipient_team_id", "missing_recipient_user_id", "user_not_found", "team_not_found",
    "messages_tab_disabled", "restricted_action", "not_in_channel", "cannot_reply_to_message",
})
"""`chat.startStream` errors that mean streaming does not apply here: deliver by edits instead."""
STREAM_BROKEN = frozenset({
    "message_not_in_streaming_state", "stopped_by_user", "streaming_mode_mismatch", "message_not_owned_by_app",
    "msg_too_long", "invalid_chunks", "markdown_text_or_chunks_required",
})
"""`appendStream`/`stopStream` errors after which the message is kept current with `chat.update`."""
GONE = frozenset({
    "message_not_found", "channel_not_found", "is_archived", "not_in_channel", "cant_update_message",
    "edit_window_closed", "invalid_auth", "account_inactive", "token_revoked", "no_permission",
    "restricted_action", "thread_locked", "restricted_action_thread_locked", "not_authed",
})
"""Errors that no retry can fix: the slot is given up (and logged)."""
RATE_LIMITED = frozenset({"ratelimited", "rate_limited", "message_limit_exceeded"})
WRITES = ("chat.postMessage", "chat.update", "chat.startStream", "chat.appendStream", "chat.stopStream")


@dataclass
class Content:
    """One state of a message: the `text` fallback, its blocks, and (for streams) the part's Markdown."""

    text: str
    blocks: list[Block]
    markdown: str = ""


Render = Callable[[bool], Content]
"""Called at send time; the argument is True for a degraded render after Slack rejected the content."""


@dataclass(eq=False)
class Slot:
    """One Slack message the outbox keeps at its latest wanted state."""

    outbox: Outbox
    channel: str
    thread_ts: str
    render: Render
    ts: str | None = None
    stream: tuple[str | None, str | None] | None = None
    """(recipient_team_id, recipient_user_id) when this message is streamed."""
    on_posted: Callable[[str], None] | None = None
    on_stream_refused: Callable[[str], None] | None = None
    after: Slot | None = None
    """The message created before it in the thread: this one is first posted after it."""
    final_after: list[Slot] = field(default_factory=list)
    """Messages whose final state lands before this one's (a turn says Done once its answer is whole)."""
    dirty: bool = False
    priority: Priority = Priority.STATUS
    dirty_since: float = 0.0
    final: bool = False
    settled: bool = False
    """Nothing more will be sent: the final state landed, or the slot was cancelled or given up."""
    in_flight: bool = False
    writes: list[float] = field(default_factory=list)
    """When the latest few writes to this message were sent (monotonic), oldest first."""
    shown: tuple[str, list[Block]] | None = None
    """The text and blocks Slack has from the last post or edit: an edit to the same is skipped."""
    retry_at: float = 0.0
    failures: int = 0
    degraded: bool = False
    streaming: bool = False
    """A stream was started and not stopped."""
    sent_markdown: str = ""
    stream_failed: bool = False
    refusal: str | None = None
    dead: bool = False
    """Cancelled, or given up after an error no retry can fix."""
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    # -- what the renderer calls ---------------------------------------------------------

    def changed(self, priority: Priority = Priority.STATUS, final: bool = False) -> None:
        """The message's wanted state changed; the latest state will be sent."""
        if self.dead:
            return
        if self.settled:  # it changed after its final state landed: send this one too
            self.settled, self.final, self._done = False, False, asyncio.Event()
            self.outbox._slots.add(self)
            self.outbox._ensure_running()
        if final and not self.final:
            self.final = True
        elif self.dirty and priority >= self.priority:
            return  # already waiting to be sent, as urgently: the send will render the latest state
        if not self.dirty:
            self.dirty, self.dirty_since, self.priority = True, time.monotonic(), priority
        else:
            self.priority = min(self.priority, priority)
        self.outbox._wake.set()

    def cancel(self) -> bool:
        """Forget a message Slack has never seen; False once it is posted or on its way."""
        if self.ts is not None or self.in_flight:
            return False
        self.dead = True
        self._settle()
        return True

    @property
    def is_stream(self) -> bool:
        return self.stream is not None and not self.stream_failed

    async def wait(self) -> None:
        """Until the final state landed or the slot was given up."""
        await self._done.wait()

    # -- inside the outbox -------------------------------------------------------------

    @property
    def effective_priority(self) -> Priority:
        return Priority.URGENT if self.ts is None or self.final else self.priority

    def next_method(self) -> str:
        if self.is_stream and not (self.final and self.ts is None):
            if self.ts is None:
                return "chat.startStream"
            return "chat.stopStream" if self.final else "chat.appendStream"
        if self.streaming:
            return "chat.stopStream"  # end a stream before editing the message
        return "chat.postMessage" if self.ts is None else "chat.update"

    def _wrote(self) -> None:
        self.writes.append(time.monotonic())
        del self.writes[:-self.outbox.burst]

    def _settle(self) -> None:
        self.settled, self.dirty = True, False
        self._done.set()
        self.outbox._wake.set()  # whoever waited for this one to post goes now


class Outbox:
    """Delivers slots' latest states within Slack's limits; see the module docstring."""

    def __init__(self, client: AsyncWebClient, *, interval: float = 1.0, burst: int = 2, max_in_flight: int = 32,
                 max_backoff: float = 30.0, default_retry_after: float = 1.0):
        self._template = client
        self.interval = interval
        self.burst = max(1, burst)
        """Most writes one message gets within `interval` (the first post and a final edit, say)."""
        self.max_in_flight = max_in_flight
        self.max_backoff = max_backoff
        self.default_retry_after = default_retry_after
        self._client: AsyncWebClient | None = None
        self._session: aiohttp.ClientSession | None = None
        self._slots: set[Slot] = set()
        self._tails: dict[tuple[str, str], Slot] = {}
        self._paused_until: dict[str, float] = {}
        self._strained_until = 0.0
        """Until then (a while after a 429) interim edits wait while a first post or final state does."""
        self._window: dict[str, int] = {}
        self._method_in_flight: dict[str, int] = {}
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._order = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self.stats: dict[str, int] = {"sent": 0, "rate_limited": 0, "retried": 0, "given_up": 0}
        self.metrics: Metrics | None = None
        """Where Slack calls, retries and 429s are counted (set by the Slack client's wiring)."""

    # -- API --------------------------------------------------------------------------------

    def slot(self, channel: str, thread_ts: str, render: Render, *, ts: str | None = None,
             stream: tuple[str | None, str | None] | None = None, on_posted: Callable[[str], None] | None = None,
             on_stream_refused: Callable[[str], None] | None = None) -> Slot:
        """A message to keep current. Without `ts` it is first posted, after the thread's earlier ones."""
        slot = Slot(self, channel, thread_ts, render, ts=ts, stream=stream, on_posted=on_posted,
                    on_stream_refused=on_stream_refused)
        if ts is None:
            key = (channel, thread_ts)
            tail = self._tails.get(key)
            slot.after = tail if tail is not None and not tail.settled and tail.ts is None else None
            self._tails[key] = slot
        self._slots.add(slot)
        self._ensure_running()
        return slot

    def post(self, channel: str, thread_ts: str, content: Content) -> Slot:
        """A one-off message (a note): posted once, in thread order, retried until it lands."""
        slot = self.slot(channel, thread_ts, lambda degraded: content)
        slot.changed(Priority.URGENT, final=True)
        return slot

    def paused(self, method: str) -> bool:
        return self._paused_until.get(method, 0.0) > time.monotonic()

    def _must_land(self) -> list[Slot]:
        return [s for s in self._slots if not s.settled and (s.dirty or s.in_flight) and (s.final or s.ts is None)]

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every first post and final state has landed; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._must_land():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what must land (first posts, final states) for up to `timeout`, then stop."""
        if not await self.drain(timeout):
            log.warning("Slack outbox closing with %d message(s) not delivered", len(self._must_land()))
        tasks = [t for t in [self._task, *self._sends] if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        self._task = None
        if self._session is not None:  # its own; a shared one is closed by its owner
            await self._session.close()
        self._session, self._client = None, None

    # -- scheduling ---------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="slack-outbox")

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                next_at = self._dispatch()
            except Exception:  # a bug here must not stop every later message
                log.exception("Slack outbox dispatch failed")
                next_at = time.monotonic() + 1.0
            timeout = None if next_at is None else max(0.0, next_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _dispatch(self) -> float | None:
        """Start every send that may go now; return when the next waiting one may."""
        now = time.monotonic()
        next_at: float | None = None
        ready: list[tuple[int, float, int, Slot]] = []
        strained = now < self._strained_until
        urgent_waiting = False
        for slot in list(self._slots):
            if slot.settled:
                self._forget(slot)
                continue
            if not (slot.dirty or slot.in_flight):
                continue
            urgent = slot.effective_priority is Priority.URGENT
            urgent_waiting = urgent_waiting or urgent
            if slot.in_flight:
                continue
            at = self._ready_at(slot, now)
            if at is None:
                continue  # waits for its predecessor; woken when that one posts
            if at > now:
                next_at = at if next_at is None else min(next_at, at)
                continue
            heapq.heappush(ready, (slot.effective_priority, slot.dirty_since, next(self._order), slot))
        if strained:
            next_at = self._strained_until if next_at is None else min(next_at, self._strained_until)
        while ready and self._in_flight < self.max_in_flight:
            priority, *_, slot = heapq.heappop(ready)
            if strained and urgent_waiting and priority is not Priority.URGENT:
                break  # Slack is limiting us: first posts and final states go first
            method = slot.next_method()
            if self._method_in_flight.get(method, 0) >= self._window.get(method, self.max_in_flight):
                continue  # this method is probing after a 429; a finishing send wakes us
            self._start(slot, method)
        return next_at

    def _ready_at(self, slot: Slot, now: float) -> float | None:
        after = slot.after
        if after is not None:
            if slot.ts is None and not after.settled and after.ts is None:
                return None
            slot.after = None  # satisfied: let go of it (a chain would keep a thread's history alive)
        if slot.final_after:
            if slot.final and slot.ts is not None and any(not s.settled for s in slot.final_after):
                return None  # woken when they settle
            if all(s.settled for s in slot.final_after):
                slot.final_after = []
        at = max(slot.retry_at, self._paused_until.get(slot.next_method(), 0.0))
        if slot.ts is not None and slot.writes:
            # An interim edit waits `interval` after the last write; a final state only when the message
            # already had `burst` writes within `interval`: a quick answer is not held back.
            if not slot.final:
                at = max(at, slot.writes[-1] + self.interval)
            elif len(slot.writes) >= self.burst:
                at = max(at, slot.writes[-self.burst] + self.interval)
        return at

    def _forget(self, slot: Slot) -> None:
        self._slots.discard(slot)
        key = (slot.channel, slot.thread_ts)
        if self._tails.get(key) is slot:
            del self._tails[key]

    def _start(self, slot: Slot, method: str) -> None:
        slot.in_flight, slot.dirty = True, False
        self._in_flight += 1
        self._method_in_flight[method] = self._method_in_flight.get(method, 0) + 1
        task = asyncio.create_task(self._send(slot, method, slot.final, slot.priority, slot.dirty_since))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    # -- sending ------------------------------------------------------------------------------

    async def _send(self, slot: Slot, method: str, final: bool, priority: Priority, since: float) -> None:
        try:
            outcome = await self._call(slot, method, final)
        except asyncio.CancelledError:
            raise
        except SlackApiError as exc:
            try:
                outcome = self._refused(slot, method, exc)
            except Exception:
                log.exception("handling Slack's answer to %s failed", method)
                outcome = "retry"
        except Exception as exc:  # network trouble after slack-sdk's own retries
            log.info("Slack %s for %s failed: %r", method, slot.channel, exc)
            outcome = "retry"
        finally:
            slot.in_flight = False
            self._in_flight -= 1
            self._method_in_flight[method] -= 1
            self._wake.set()
        self._count(method, outcome)
        if outcome == "ok":
            slot.failures = 0
            self._window[method] = min(self.max_in_flight, self._window.get(method, self.max_in_flight) + 1)
            self.stats["sent"] += 1
            if final and not slot.dirty:
                slot._settle()
        elif outcome == "again":  # one step of a longer exchange (a stream stopped before an edit)
            self._requeue(slot, priority, since, final)
        elif outcome == "stream_refused":
            if slot.on_stream_refused is not None:
                slot.on_stream_refused(slot.refusal or "")  # the renderer may cancel the slot here
            if not slot.settled:
                self._requeue(slot, priority, since, final)
        elif outcome == "retry":
            slot.failures += 1
            self.stats["retried"] += 1
            slot.retry_at = time.monotonic() + min(self.max_backoff, 0.5 * 2 ** min(slot.failures, 8))
            self._requeue(slot, priority, since, final)
        elif outcome == "rate_limited":
            self._requeue(slot, priority, since, final)
        else:
            self.stats["given_up"] += 1
            slot.dead = True
            slot._settle()

    def _count(self, method: str, outcome: str) -> None:
        if self.metrics is None:
            return
        self.metrics.slack_calls.labels(method, outcome).inc()
        if outcome == "retry":
            self.metrics.slack_retries.labels(method).inc()
        elif outcome == "rate_limited":
            self.metrics.slack_rate_limited.labels(method).inc()

    def _requeue(self, slot: Slot, priority: Priority, since: float, final: bool) -> None:
        """Put back a state that did not land; a newer one, if any, keeps its place."""
        if not slot.dirty:
            slot.dirty, slot.dirty_since, slot.priority = True, since, priority
        else:
            slot.priority, slot.dirty_since = min(slot.priority, priority), min(slot.dirty_since, since)
        slot.final = slot.final or final
        self._wake.set()

    async def _call(self, slot: Slot, method: str, final: bool) -> str:
        """One Web API call for the slot's latest state; returns what to do next."""
        client = self._api()
        content = slot.render(slot.degraded)
        if method == "chat.postMessage":
            slot._wrote()
            resp = await client.chat_postMessage(channel=slot.channel, thread_ts=slot.thread_ts, text=content.text,
                                                 blocks=content.blocks, unfurl_links=False, unfurl_media=False)
            slot.shown = (content.text, content.blocks)
            self._posted(slot, str(resp["ts"]))
            return "ok"
        if method == "chat.update":
            if slot.shown == (content.text, content.blocks):
                return "ok"  # changes that render the same (an event after the final state, say)
            slot._wrote()
            await client.chat_update(channel=slot.channel, ts=slot.ts or "", text=content.text, blocks=content.blocks)
            slot.shown = (content.text, content.blocks)
            return "ok"
        if method == "chat.startStream":
            if not content.markdown:
                return "ok"  # nothing to stream yet; the next change comes back here
            team, user = slot.stream or (None, None)
            slot._wrote()
            slot.shown = None
            resp = await client.chat_startStream(channel=slot.channel, thread_ts=slot.thread_ts,
                                                 markdown_text=content.markdown, recipient_team_id=team,
                                                 recipient_user_id=user)
            slot.streaming, slot.sent_markdown = True, content.markdown
            self._posted(slot, str(resp["ts"]))
            return "again" if final else "ok"
        # appendStream / stopStream: send what Slack does not have yet
        rest = ""
        if slot.is_stream:
            if content.markdown.startswith(slot.sent_markdown):
                rest = content.markdown[len(slot.sent_markdown):]
            else:
                slot.stream_failed = True  # the text changed under what was sent: edit it instead
        if method == "chat.appendStream" and slot.is_stream:
            if rest:
                slot._wrote()
                await client.chat_appendStream(channel=slot.channel, ts=slot.ts or "", markdown_text=rest)
                slot.sent_markdown = content.markdown
            return "ok"
        slot._wrote()
        await client.chat_stopStream(channel=slot.channel, ts=slot.ts or "", markdown_text=rest or None)
        slot.streaming = False
        if slot.stream_failed:
            return "again"  # now edit it into its full state
        slot.sent_markdown = content.markdown
        slot.stream = None  # stopped: any later change is an edit
        return "ok" if final else "again"

    def _posted(self, slot: Slot, ts: str) -> None:
        slot.ts = ts
        if slot.on_posted is not None:
            try:
                slot.on_posted(ts)
            except Exception:
                log.exception("recording a Slack message ts failed")

    def _refused(self, slot: Slot, method: str, exc: SlackApiError) -> str:
        response = exc.response
        error = str(response.get("error") or "")
        if response.status_code == 429 or error in RATE_LIMITED:
            try:
                wait = float(response.headers.get("Retry-After") or response.headers.get("retry-after") or 0)
            except (TypeError, ValueError):
                wait = 0.0
            wait = wait if wait > 0 else self.default_retry_after
            self._paused_until[method] = max(self._paused_until.get(method, 0.0), time.monotonic() + wait)
            self._strained_until = max(self._strained_until, time.monotonic() + max(5.0, 2 * wait))
            self._window[method] = 1
            self.stats["rate_limited"] += 1
            return "rate_limited"
        if response.status_code >= 500:
            return "retry"
        if method == "chat.startStream" and error in STREAM_REFUSED:
            log.info("Slack refused a stream in %s (%s); editing messages instead", slot.channel, error)
            slot.stream_failed, slot.refusal = True, error
            return "stream_refused"
        if method in ("chat.appendStream", "chat.stopStream") and error in STREAM_BROKEN:
            log.info("Slack ended a stream in %s early (%s); editing it instead", slot.channel, error)
            slot.stream_failed, slot.streaming = True, False
            return "again"
        if error in GONE:
            log.warning("Slack %s for %s/%s: %s; giving this message up", method, slot.channel, slot.ts, error)
            return "give_up"
        if not slot.degraded:  # our content broke a limit (a bug): send the plain version once
            log.error("Slack rejected %s for %s/%s: %s %s", method, slot.channel, slot.ts, error,
                      response.get("errors") or "")
            slot.degraded = True
            if method == "chat.startStream":
                slot.stream_failed = True
            return "again"
        log.error("Slack rejected even the plain %s for %s/%s: %s; giving it up", method, slot.channel, slot.ts, error)
        return "give_up"

    def _api(self) -> AsyncWebClient:
        """A client like the app's, on the app client's HTTP session (one connection pool for the
        service; a session of its own only when that client has none), without slack-sdk's 429
        retries: a rate limit must come back here so the whole outbox can pause that method."""
        if self._client is None:
            base = self._template
            handlers: list[AsyncRetryHandler] = [h for h in base.retry_handlers
                                                 if not isinstance(h, AsyncRateLimitErrorRetryHandler)]
            session = base.session
            if session is None or session.closed:
                session = self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=base.timeout))
            self._client = AsyncWebClient(token=base.token, base_url=base.base_url, timeout=base.timeout,
                                          ssl=base.ssl, proxy=base.proxy, headers=dict(base.headers),
                                          session=session, retry_handlers=handlers, logger=base.logger)
        return self._client
