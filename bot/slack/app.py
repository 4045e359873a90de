"""The Slack client: Socket Mode in, Web API out. Listeners are a few lines each and call the
sessions layer; the renderer turns session events back into messages."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.sessions.events import Author
from bot.sessions.service import SessionService
from bot.slack.format import CLEAR_QUEUE_ACTION, STOP_ACTION, VIEW_ACTION
from bot.slack.messages import IncomingMessage, parse_message, prompt_text
from bot.slack.renderer import SlackRenderer
from bot.slack.repo_picker import PICK_ACTION, ask_blocks, expired_blocks, picked_blocks
from bot.store.pending import PendingRequests
from bot.store.processed_events import ProcessedEvents
from bot.util.keyed_locks import KeyedLocks
from classifier.classify import Classification, Classifier, RequestContext

log = logging.getLogger(__name__)

HELP = (
    "Hi! Tell me what you need in the same message, for example "
    "`@hosted-agents why is the login page slow?`. Replies in the thread are queued for me."
)
_HEX_ID = re.compile(r"^[0-9a-f]{16}$")
"""The shape of session and held-request ids (secrets.token_hex(8))."""


def web_client(settings: Settings) -> AsyncWebClient:
    assert settings.slack_bot_token is not None
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=5),  # waits Retry-After
            AsyncServerErrorRetryHandler(max_retry_count=2),
        ],
    )


def _bolt_logger() -> logging.Logger:
    """Bolt reads SLACK_BOT_TOKEN from the environment itself and then warns that our client's
    (identical) token wins; that line would only confuse operators."""
    logger = logging.getLogger("slack_bolt")
    if not any(isinstance(f, _TokenSkippedFilter) for f in logger.filters):
        logger.addFilter(_TokenSkippedFilter())
    return logger


class _TokenSkippedFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


class SlackClient:
    def __init__(self, settings: Settings, sessions: SessionService, processed: ProcessedEvents,
                 classifier: Classifier | None = None, pending: PendingRequests | None = None):
        self.settings = settings
        self.sessions = sessions
        self.processed = processed
        self.classifier = classifier
        self.pending = pending
        self._channel_info: dict[str, tuple[str | None, str | None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.web = web_client(settings)
        self.app = AsyncApp(client=self.web, process_before_response=False, logger=_bolt_logger())
        self.renderer = SlackRenderer(self.web, sessions, settings)
        sessions.add_observer(self.renderer.on_working)
        self._register()
        self._socket: AsyncSocketModeHandler | None = None
        self._thread_locks = KeyedLocks()

    async def start(self) -> None:
        assert self.settings.slack_app_token is not None
        self._socket = AsyncSocketModeHandler(self.app, self.settings.slack_app_token.get_secret_value(), web_client=self.web)
        await self._socket.connect_async()
        if self.pending is not None:
            self._sweeper = asyncio.create_task(self._expire_loop(), name="slack-pending-expiry")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._socket is not None:
            await self._socket.close_async()
        await self.renderer.close()

    # -- listeners ----------------------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        app.event("app_mention")(self.on_message)
        app.event("message")(self.on_message)
        app.action(STOP_ACTION)(self.on_stop)
        app.action(CLEAR_QUEUE_ACTION)(self.on_clear_queue)
        app.action(VIEW_ACTION)(self.on_view)
        app.action(PICK_ACTION)(self.on_pick)
        app.event(re.compile(".*"))(self.on_other_event)

    async def on_message(self, event: dict[str, Any], context: Any) -> None:
        bot = context.get("bot_user_id")
        msg = parse_message(event, bot)
        if msg is None:
            return
        # Envelopes are handled concurrently; the lock is taken before any I/O, so one thread's
        # messages are queued in the order Slack sent them.
        async with self._thread_locks.hold((msg.channel, msg.root)):
            await self._handle_message(msg, bot)

    async def _handle_message(self, msg: IncomingMessage, bot: str | None) -> None:
        session = await self.sessions.find_by_thread(msg.channel, msg.thread_ts) if msg.thread_ts else None
        if session is None and not (msg.mentioned or msg.direct):
            return  # chatter in a thread that is not ours
        if not await self.processed.first_time(msg.dedupe_key):
            return
        text = prompt_text(msg, bot)
        if not text:
            await self._reply(msg, HELP)
            return
        if len(text) > self.settings.max_prompt_chars:
            await self._reply(
                msg,
                f"That message is {len(text):,} characters long; I take up to {self.settings.max_prompt_chars:,}. "
                "Please shorten it (a link to a file or a gist works well) and send it again.",
            )
            return
        if session is None:
            repo = None
            if self.classifier is not None:
                decision = await self._classify(msg, text)
                if decision.repo is None:
                    await self._ask_for_repo(msg, text, decision.alternatives)
                    return
                repo = decision.repo
            session = await self.sessions.open_slack_session(msg.channel, msg.root, msg.user, repo)
        await self.sessions.submit(session.id, text, Author(msg.user), order_key=float(msg.ts))

    async def on_stop(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        session_id, user, channel = await self._action_target(body, action)
        if session_id and not self.sessions.stop(session_id, by=user):
            await self._ephemeral(channel, user, "Nothing is running in this session right now.")

    async def on_clear_queue(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        session_id, user, channel = await self._action_target(body, action)
        if session_id and not self.sessions.clear_queue(session_id, by=user):
            await self._ephemeral(channel, user, "The queue is already empty.")

    async def on_pick(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        """Someone picked the repository of a held request: start its session with the original text."""
        await ack()
        user = str((body.get("user") or {}).get("id", ""))
        channel = str((body.get("channel") or {}).get("id", ""))
        pending_id = str(action.get("block_id", "")).removeprefix("pick:")
        repo = str((action.get("selected_option") or {}).get("value", ""))
        if self.pending is None or self.classifier is None or self.classifier.catalog.get(repo) is None:
            await self._ephemeral(channel, user, "I don't know that repository.")
            return
        row = await self.pending.pick(pending_id, repo, user) if _HEX_ID.match(pending_id) else None
        if row is None:
            current = await self.pending.get(pending_id) if _HEX_ID.match(pending_id) else None
            if current is None:
                await self._ephemeral(channel, user, "I can't find that request any more.")
            elif current.status == "started":
                await self._ephemeral(channel, user, f"Someone already picked {current.repo} for this request.")
            else:
                await self._show_expired([current] if current.status == "expired" else await self.pending.expire_due())
                await self._ephemeral(channel, user, "That request expired before anyone picked a repository; mention me again.")
            return
        await self._update(row.channel, row.prompt_ts, f"Working on {repo}", picked_blocks(repo, user))
        session = await self.sessions.open_slack_session(row.channel, row.thread_ts, row.user, repo)
        await self.sessions.submit(session.id, row.text, Author(row.user), order_key=float(row.message_ts))

    async def on_view(self, ack: Any) -> None:
        await ack()  # a link button: Slack opens the URL, we only acknowledge

    async def on_other_event(self) -> None:
        """Events we do not use are acknowledged and ignored."""

    # -- classification -----------------------------------------------------------------

    async def _classify(self, msg: IncomingMessage, text: str) -> Classification:
        assert self.classifier is not None
        if len(self.classifier.catalog) == 1:  # nothing to decide: skip gathering context
            return await self.classifier.classify(RequestContext(text))
        name, topic = (None, None) if msg.direct else await self._channel(msg.channel)
        thread = await self._thread_before(msg) if msg.thread_ts else []
        decided = self.classifier.decide_by_rules(RequestContext(text, thread, name, topic))
        if decided is not None:
            return decided  # the session acquires its own sandbox: nothing extra to warm
        ctx = RequestContext(text, thread, name, topic, await self.sessions.recent_repos(msg.user))
        self.sessions.warm(self.classifier.likeliest(ctx))  # warm while the model thinks
        return await self.classifier.classify(ctx)

    async def _channel(self, channel: str) -> tuple[str | None, str | None]:
        if channel not in self._channel_info:
            try:
                info = (await self.web.conversations_info(channel=channel))["channel"]
                self._channel_info[channel] = (info.get("name"), (info.get("topic") or {}).get("value") or None)
            except Exception as exc:
                log.info("no channel info for %s: %r", channel, exc)
                return None, None
        return self._channel_info[channel]

    async def _thread_before(self, msg: IncomingMessage) -> list[str]:
        """The thread's earlier human messages, oldest first (context for the classifier)."""
        try:
            replies = (await self.web.conversations_replies(channel=msg.channel, ts=msg.root, limit=50))["messages"]
        except Exception as exc:
            log.info("no thread history for %s/%s: %r", msg.channel, msg.root, exc)
            return []
        return [str(m.get("text", "")) for m in replies
                if not m.get("bot_id") and float(m.get("ts", "0")) < float(msg.ts)][-20:]

    async def _ask_for_repo(self, msg: IncomingMessage, text: str, likely: tuple[str, ...]) -> None:
        assert self.pending is not None and self.classifier is not None
        held = await self.pending.hold(msg.channel, msg.root, msg.ts, msg.user, text)
        minutes = max(1, round(self.pending.ttl / 60))
        blocks = ask_blocks(held.id, msg.user, list(likely), [r.name for r in self.classifier.catalog.repos], minutes)
        try:
            resp = await self.web.chat_postMessage(channel=msg.channel, thread_ts=msg.root,
                                                   text="Which repository is this about?", blocks=blocks)
            await self.pending.set_prompt(held.id, resp["ts"])
        except Exception as exc:
            log.warning("asking for a repository in %s failed: %r", msg.channel, exc)

    async def _expire_loop(self) -> None:
        assert self.pending is not None
        every = max(0.2, min(60.0, self.pending.ttl / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self._show_expired(await self.pending.expire_due())
            except Exception as exc:
                log.warning("expiring held requests failed: %r", exc)

    async def _show_expired(self, rows: list[Any]) -> None:
        assert self.pending is not None
        minutes = max(1, round(self.pending.ttl / 60))
        for row in rows:
            await self._update(row.channel, row.prompt_ts, "This request expired.", expired_blocks(minutes))

    async def _update(self, channel: str, ts: str | None, text: str, blocks: list[dict[str, Any]]) -> None:
        if not ts:
            return
        try:
            await self.web.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
        except Exception as exc:
            log.warning("updating %s/%s failed: %r", channel, ts, exc)

    # -- helpers ------------------------------------------------------------------------

    async def _action_target(self, body: dict[str, Any], action: dict[str, Any]) -> tuple[str | None, str, str]:
        user = str((body.get("user") or {}).get("id", ""))
        channel = str((body.get("channel") or {}).get("id", ""))
        value = action.get("value")
        info = await self.sessions.get(value) if isinstance(value, str) and _HEX_ID.match(value) else None
        if info is None or info.slack_channel != channel:
            await self._ephemeral(channel, user, "I can't find that session any more.")
            return None, user, channel
        return info.id, user, channel

    async def _reply(self, msg: IncomingMessage, text: str) -> None:
        try:
            await self.web.chat_postMessage(channel=msg.channel, thread_ts=msg.root, text=text)
        except Exception as exc:
            log.warning("replying in %s failed: %r", msg.channel, exc)

    async def _ephemeral(self, channel: str, user: str, text: str) -> None:
        if not channel or not user:
            return
        try:
            await self.web.chat_postEphemeral(channel=channel, user=user, text=text)
        except Exception as exc:
            log.warning("ephemeral reply in %s failed: %r", channel, exc)
