"""The Slack client: Socket Mode in, Web API out. Only Slack lives here: parsing events,
rendering, buttons. Every request goes through the sessions layer's intake; the renderer
turns the session projection back into messages.

Cross-cutting checks are bolt middleware (bots and junk are dropped, a message is handled
once however often Slack delivers it); one error handler logs a failure and tells the person.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import aiohttp
from cachetools import TTLCache
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from yarl import URL

from bot.agent.hookspecs import hookimpl
from bot.config import Settings
from bot.events import SLACK_ID_ORIGINS, Author, Event, Origin, PullRequest, Status
from bot.sessions.access import Place
from bot.sessions.intake import Held, HeldRequest, Hints, Intake, Refused, Request, Started
from bot.sessions.service import SessionService
from bot.slack.children import ChildrenBoard, nearest_thread
from bot.slack.delivery import Content
from bot.slack.directory import SlackDirectory
from bot.slack.format import (
    CLEAR_QUEUE_ACTION,
    CONNECT_GITHUB_LINK_ACTION,
    CREATE_PR_ACTION,
    CREATE_PR_AS_APP_ACTION,
    STOP_ACTION,
    VIEW_ACTION,
    github_offer_blocks,
    pull_request_text,
    render_note,
)
from bot.slack.home import (
    COMPOSE_ACTION,
    COMPOSE_BLOCK,
    CONNECT_GITHUB_ACTION,
    OPEN_WEB_ACTION,
    RECENT,
    START_ACTION,
    home_view,
    refused_view,
)
from bot.slack.messages import (
    THREAD,
    IncomingMessage,
    author_of,
    mentioned_people,
    parse_message,
    prompt_text,
    thread_of,
    thread_surface,
)
from bot.slack.renderer import SlackRenderer
from bot.slack.repo_picker import PICK_ACTION, ask_blocks, expired_blocks, picked_blocks
from bot.slack.unfurl import session_token, unfurl
from bot.store.processed_events import ProcessedEvents
from bot.store.signin_links import SignInLinks
from bot.util.keyed_locks import KeyedLocks
from bot.util.metrics import Metrics

log = logging.getLogger(__name__)

HELP = (
    "Hi! Tell me what you need in the same message, for example "
    "`@hosted-agents why is the login page slow?`. Replies in the thread are queued for me."
)
FAILED = "Sorry, I could not take that request because something went wrong on my side; please send it again."
_HEX_ID = re.compile(r"^[0-9a-f]{16}$")
"""The shape of session ids (secrets.token_hex(8))."""
MESSAGE = "hosted_agents_message"
SET_REPO = re.compile(r"^set repo\s+<?(?:https?://[^|>]*\|)?([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)>?\s*$", re.IGNORECASE)
"""`@bot set repo owner/repo` (Slack may have turned the name into a link)."""
SEND_TO_AGENT = "send_to_agent"
"""The message shortcut's callback id (manifest.yml)."""
"""Where the middleware leaves the parsed message in bolt's context."""


def web_client(settings: Settings) -> SlackWebClient:
    """The service's Slack Web API client; the app, bolt's per-request copies and the outbox share
    its one HTTP session (`SlackWebClient`), closed by `SlackWebClient.close()`."""
    assert settings.slack_bot_token is not None
    return SlackWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=5),  # waits Retry-After
            AsyncServerErrorRetryHandler(max_retry_count=2),
        ],
    )


class SlackWebClient(AsyncWebClient):
    """slack-sdk's client on one aiohttp session, opened on first use and shared.

    Without a session slack-sdk opens and closes one per call: a new connection every time, about
    twice the cost of a call on a kept-alive one. aiohttp binds a session to the running loop, so
    it is opened on the first call, inside the loop. Whoever copies the client reads `session`
    (bolt makes a copy per request; the outbox makes one without the 429 retries) and so shares
    it. After `close()` calls still work, each on a session of its own, as slack-sdk does.
    """

    _shared: aiohttp.ClientSession | None = None
    _closed = False
    metrics: Metrics | None = None
    """Where every HTTP request to Slack on the shared session is counted (set before the first call)."""

    @property  # the base class sets it in __init__; this makes reading it open the shared session
    def session(self) -> aiohttp.ClientSession | None:
        if self._shared is None and not self._closed:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return None  # outside a loop: nothing to bind a session to yet
            traces = [_counting(self.metrics)] if self.metrics is not None else []
            self._shared = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout),
                                                 trust_env=self.trust_env_in_session, trace_configs=traces)
        return self._shared

    @session.setter
    def session(self, value: aiohttp.ClientSession | None) -> None:
        self._shared = value

    async def close(self) -> None:
        """Close the shared session (at shutdown, after the last write that must land)."""
        self._closed = True
        shared, self._shared = self._shared, None
        if shared is not None:
            await shared.close()


def _counting(metrics: Metrics) -> aiohttp.TraceConfig:
    """Counts Slack HTTP requests by method family (`chat`, `reactions`, ...) and result (`2xx`,
    `429`, `4xx`, `5xx`, `error`): every client on the shared session, slack-sdk's retries included."""

    def family(url: URL) -> str:
        name = url.path.rstrip("/").rsplit("/", 1)[-1]
        head = name.split(".", 1)[0]
        return head if head.isalpha() and len(head) <= 32 else "other"

    async def ended(_: aiohttp.ClientSession, __: SimpleNamespace, params: aiohttp.TraceRequestEndParams) -> None:
        status = params.response.status
        result = "429" if status == 429 else f"{status // 100}xx"
        metrics.slack_requests.labels(family(params.url), result).inc()

    async def failed(_: aiohttp.ClientSession, __: SimpleNamespace,
                     params: aiohttp.TraceRequestExceptionParams) -> None:
        metrics.slack_requests.labels(family(params.url), "error").inc()

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(ended)
    trace.on_request_exception.append(failed)
    return trace


def _bolt_logger() -> logging.Logger:
    """Bolt reads SLACK_BOT_TOKEN from the environment itself and then warns that our client's
    (identical) token wins; that line would only confuse operators."""
    logger = logging.getLogger("slack_bolt")
    if not any(isinstance(f, _BoltNoise) for f in logger.filters):
        logger.addFilter(_BoltNoise())
    return logger


class _BoltNoise(logging.Filter):
    """Drops bolt's token warning; an ack that could not be sent because the socket was closing
    (a shutdown or a reconnect) becomes one line: Slack redelivers an envelope it never saw acked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "`token` will be unused" in record.getMessage():
            return False
        if record.exc_info and isinstance(record.exc_info[1], ConnectionResetError):
            record.msg = "could not acknowledge a Slack envelope (%s); Slack will redeliver it"
            record.args = (record.exc_info[1],)
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.WARNING, "WARNING"
        return True


class SlackContext:
    """A plugin: tells the model how its answers are read when a session lives in a Slack thread."""

    @hookimpl
    def session_context(self, surfaces: tuple[str, ...]) -> str | None:
        if THREAD not in surfaces:
            return None
        return ("People follow this session in a Slack thread, where your answers are shown as Markdown. "
                "Mention a person as <@USERID> only if they already take part in the session.")


@contextmanager
def _single_workspace() -> Iterator[None]:
    """Bolt switches to its OAuth installation mode (and ignores our bot token) when it finds
    SLACK_CLIENT_ID and SLACK_CLIENT_SECRET in the environment; this app is installed in one
    workspace with a bot token, so bolt must not see them while it is built."""
    hidden = {k: os.environ.pop(k) for k in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(hidden)


class SlackClient:
    def __init__(self, settings: Settings, sessions: SessionService, intake: Intake, processed: ProcessedEvents,
                 links: SignInLinks, metrics: Metrics | None = None):
        self.settings = settings
        self.sessions = sessions
        self.intake = intake
        self.processed = processed
        self.links = links
        self._channel_info: TTLCache[str, tuple[str | None, str | None]] = TTLCache(maxsize=2048, ttl=3600)
        self.web = web_client(settings)
        self.web.metrics = metrics
        with _single_workspace():
            self.app = AsyncApp(client=self.web, process_before_response=False, logger=_bolt_logger())
        self.renderer = SlackRenderer(self.web, sessions, settings)
        self.renderer.outbox.metrics = metrics
        sessions.add_observer(self.renderer.on_working)
        self.children = ChildrenBoard(self.renderer.outbox, sessions, settings)
        sessions.add_listener(self.children.changed)  # sub-sessions' lines in their parent's thread
        intake.on_expired(self._show_expired)
        sessions.add_listener(self._on_session_event)
        self.directory = SlackDirectory(self.web)
        self._offered: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=3600)
        self._aimed: TTLCache[str, str | None] = TTLCache(maxsize=10_000, ttl=600)
        """The repository each person's Home tab typing warmed last (typing re-aims when it changes)."""
        self._pane_threads: TTLCache[tuple[str, str], bool] = TTLCache(maxsize=10_000, ttl=7 * 86400)
        self._agent_sessions = True
        """Whether `agents.sessions.setStatus` works here (an app declared as an agent)."""
        """Agent pane threads: their status shows whether the agent is working."""
        if intake.pull_requests is not None:
            intake.pull_requests.not_linked_observers.append(self._offer_github)
        intake.access.add_directory((o.value for o in SLACK_ID_ORIGINS), self.directory)
        self._register()
        self._socket: AsyncSocketModeHandler | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread_locks = KeyedLocks()

    async def start(self) -> None:
        assert self.settings.slack_app_token is not None
        self._socket = AsyncSocketModeHandler(self.app, self.settings.slack_app_token.get_secret_value(), web_client=self.web)
        await self._socket.connect_async()

    async def connected(self) -> bool:
        """Whether the Socket Mode connection is up (readiness): not before `start()`, nor while reconnecting."""
        return self._socket is not None and await self._socket.client.is_connected()

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close_async()
        await self.children.close()
        await self.renderer.close()
        await self.web.close()

    # -- wiring -------------------------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        app.use(self._messages_once)
        app.error(self.on_error)
        app.event("app_mention")(self.on_message)
        app.event("message")(self.on_message)
        app.action(STOP_ACTION)(self.on_stop)
        app.action(CLEAR_QUEUE_ACTION)(self.on_clear_queue)
        app.action(VIEW_ACTION)(self.on_view)
        app.action(CREATE_PR_ACTION)(self.on_create_pr)
        app.action(CREATE_PR_AS_APP_ACTION)(self.on_create_pr)
        app.action(CONNECT_GITHUB_ACTION)(self.on_view)
        app.action(CONNECT_GITHUB_LINK_ACTION)(self.on_view)
        app.action(OPEN_WEB_ACTION)(self.on_view)
        app.action(PICK_ACTION)(self.on_pick)
        app.event("app_home_opened")(self.on_home_opened)
        app.event("link_shared")(self.on_link_shared)
        app.action(COMPOSE_ACTION)(self.on_home_typing)
        app.action(START_ACTION)(self.on_home_start)
        app.event("assistant_thread_started")(self.on_pane_opened)
        app.event("agent_session_stopped")(self.on_agent_stopped)
        app.shortcut(SEND_TO_AGENT)(self.on_send_to_agent)
        app.event(re.compile(".*"))(self.on_other_event)

    async def _messages_once(self, body: dict[str, Any], context: AsyncBoltContext,
                             next: Callable[[], Awaitable[None]]) -> BoltResponse | None:
        """Middleware: a message event reaches the listeners only if a person wrote it, it is for us
        (a mention, a DM, or a reply in one of our threads), and it was not handled before (Slack
        redelivers, and sends a mention both as `app_mention` and as `message`).

        Envelopes are handled concurrently: the thread's lock is taken here, before any I/O, and
        released by the listener, so one thread's messages are handled in the order Slack sent them
        (a reply that follows a mention at once finds the session the mention opened)."""
        event = body.get("event") if body.get("type") == "event_callback" else None
        if not isinstance(event, dict) or event.get("type") not in ("app_mention", "message"):
            await next()
            return None
        msg = parse_message(event, context.bot_user_id)
        if msg is None or not (msg.mentioned or msg.direct or msg.thread_ts):
            return BoltResponse(status=200, body="")
        key = (msg.channel, msg.root)
        await self._thread_locks.acquire(key)
        try:
            ours = msg.mentioned or msg.direct or await self.intake.find(thread_surface(msg.channel, msg.root)) is not None
            new = ours and await self.processed.first_time(msg.dedupe_key)
        except BaseException:
            self._thread_locks.release(key)
            raise
        if not new:
            self._thread_locks.release(key)
            return BoltResponse(status=200, body="")
        context[MESSAGE] = msg
        await next()
        return None

    # -- listeners ----------------------------------------------------------------------

    async def on_message(self, context: AsyncBoltContext) -> None:
        msg: IncomingMessage | None = context.get(MESSAGE)
        if msg is None:
            return
        try:
            await self._handle_message(msg, context.bot_user_id)
        except Exception:
            await self.processed.forget(msg.dedupe_key)  # a redelivery is handled again
            raise
        finally:
            self._thread_locks.release((msg.channel, msg.root))  # taken by the middleware

    async def _handle_message(self, msg: IncomingMessage, bot: str | None) -> None:
        request = Request(
            text=prompt_text(msg, bot), author=author_of(msg), surface=thread_surface(msg.channel, msg.root),
            hints=Hints(channel_id=None if msg.direct else msg.channel), more_hints=lambda: self._hints(msg),
            order_key=float(msg.ts), new_surface=msg.thread_ts is None, mentions=mentioned_people(msg, bot),
        )
        if msg.thread_ts and not (msg.mentioned or msg.direct) and request.mentions and request.surface is not None:
            # Teammates talking to each other in the thread: context for the agent, not a prompt.
            await self.intake.overhear(request.surface, request.author, request.text, request.mentions)
            return
        if (msg.mentioned or msg.direct) and (setting := SET_REPO.match(request.text.strip())):
            await self._set_repo(msg, setting.group(1))
            return
        await self._answer(msg, await self.intake.submit(request))

    async def _set_repo(self, msg: IncomingMessage, repo: str) -> None:
        """`@bot set repo owner/repo` in a channel: that channel's default repository from now on."""
        if msg.direct:
            await self._reply(msg.channel, msg.root, "A default repository is set in a channel: mention me there.")
            return
        author = author_of(msg)
        refused = await self.intake.set_default_repo(Place(msg.channel, None), repo, author)
        if refused is not None:
            await self._ephemeral(msg.channel, msg.user, refused.message, thread_ts=msg.root)
            return
        await self._reply(msg.channel, msg.root, f"From now on, requests in this channel are about {repo} unless they say "
                                                 f"otherwise (set by {author.handle}).")

    # -- warm-up while typing, and Slack's agent surfaces -----------------------------------

    async def on_home_typing(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        """The Home tab's composer sends what is typed so far: warm the likeliest repository now,
        and again when the text comes to name another."""
        await ack()
        person = _clicker(body).model_copy(update={"origin": Origin.APP_HOME})
        text = str(action.get("value") or "")
        self._aimed[person.id] = await self.intake.warm_for(person, text, "app_home", previous=self._aimed.get(person.id))

    async def on_home_start(self, ack: Any, body: dict[str, Any]) -> None:
        """*Start* in the Home tab: the session begins in a DM thread with the person."""
        await ack()
        person = _clicker(body).model_copy(update={"origin": Origin.APP_HOME})
        text = _composed(body)
        self._aimed.pop(person.id, None)
        opened = await self.web.conversations_open(users=person.id)
        channel = str((opened.get("channel") or {}).get("id", ""))
        if not text.strip():
            await self.web.chat_postMessage(channel=channel, text="Type what the agent should do in the Home tab, "
                                                                  "then press Start.")
            return
        root = await self.web.chat_postMessage(channel=channel, text=f"From the Home tab: {text[:2900]}")
        ts = str(root["ts"])
        msg = IncomingMessage(channel=channel, ts=ts, thread_ts=None, user=person.id, text=text, mentioned=False,
                              direct=True, team=person.team)
        request = Request(text=text, author=person, surface=thread_surface(channel, ts), order_key=float(ts),
                          new_surface=True)
        result = await self.intake.submit(request)
        await self._answer(msg, result)

    async def on_pane_opened(self, event: dict[str, Any]) -> None:
        """The agent pane opened: warm the person's likeliest repository; its thread is a session place."""
        thread = event.get("assistant_thread") or {}
        user, channel, ts = thread.get("user_id"), thread.get("channel_id"), thread.get("thread_ts")
        if not all(isinstance(v, str) and v for v in (user, channel, ts)):
            return
        self._pane_threads[(str(channel), str(ts))] = True
        await self.intake.warm_for(Author(id=str(user), origin=Origin.SLACK_DM), "", "agent_pane")

    async def on_agent_stopped(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        """Slack's own stop button on an agent session: like *Stop*."""
        channel, thread_ts, user = event.get("channel"), event.get("thread_ts"), event.get("user")
        if not all(isinstance(v, str) and v for v in (channel, thread_ts, user)):
            return
        info = await self.intake.find(thread_surface(str(channel), str(thread_ts)))
        if info is None:
            return
        who = Author(id=str(user), origin=Origin.SLACK_DM if str(channel).startswith("D") else Origin.SLACK_THREAD,
                     team=body.get("team_id") if isinstance(body.get("team_id"), str) else None)
        refused = await self.intake.stop(info.id, who)
        if refused is not None and refused.reason != "nothing_running":
            await self._ephemeral(str(channel), str(user), refused.message, thread_ts=str(thread_ts))
        await self._pane_status(str(channel), str(thread_ts), working=False)

    async def on_send_to_agent(self, ack: Any, body: dict[str, Any]) -> None:
        """The *Send to agent* message shortcut: the message (its text, author and link) becomes a
        request in a thread under it."""
        await ack()
        message = body.get("message") or {}
        channel = str((body.get("channel") or {}).get("id", ""))
        ts = str(message.get("ts") or body.get("message_ts") or "")
        person = _clicker(body).model_copy(update={"origin": Origin.SHORTCUT})
        if not channel or not ts:
            return
        try:
            link = (await self.web.chat_getPermalink(channel=channel, message_ts=ts)).get("permalink")
        except Exception as exc:
            log.info("no permalink for %s/%s: %r", channel, ts, exc)
            link = None
        text = str(message.get("text") or "").strip()
        by = f"<@{message['user']}>" if isinstance(message.get("user"), str) else "someone"
        prompt = f"{text}\n\n(Sent to the agent from a message by {by}" + (f": {link})" if link else ")")
        root = str(message.get("thread_ts") or ts)
        msg = IncomingMessage(channel=channel, ts=ts, thread_ts=None if root == ts else root, user=person.id, text=text,
                              mentioned=True, direct=channel.startswith("D"), team=person.team)
        request = Request(text=prompt if text else "", author=person, surface=thread_surface(channel, root),
                          hints=Hints(channel_id=None if msg.direct else channel), more_hints=lambda: self._hints(msg),
                          order_key=time.time())
        result = await self.intake.submit(request)
        await self._answer(msg, result)

    async def _answer(self, msg: IncomingMessage, result: Started | Held | Refused) -> None:
        """What a surface says back after intake: help, a private refusal, or the repository question."""
        if isinstance(result, Refused) and result.reason == "empty":
            await self._reply(msg.channel, msg.root, HELP)
        elif isinstance(result, Refused):
            await self._ephemeral(msg.channel, msg.user, result.message, thread_ts=msg.root)
        elif isinstance(result, Held):
            await self._ask_for_repo(msg, result)

    async def _pane_status(self, channel: str, thread_ts: str, working: bool) -> None:
        """The agent pane shows the agent is working: an agent session `processing` (with Slack's own
        stop button) where the workspace offers agent sessions, else the assistant thread's status."""
        if (channel, thread_ts) not in self._pane_threads:
            return
        if self._agent_sessions:
            try:
                await self.web.api_call("agents.sessions.setStatus", json={
                    "channel_id": channel, "thread_ts": thread_ts, "status": "processing" if working else "active"})
                return
            except SlackApiError as exc:
                log.info("agent sessions are not available (%s); using the assistant thread status",
                         exc.response.get("error"))
                self._agent_sessions = False
            except Exception as exc:
                log.info("setting the agent session's status failed: %r", exc)
                return
        try:
            await self.web.api_call("assistant.threads.setStatus", json={
                "channel_id": channel, "thread_ts": thread_ts, "status": "is working…" if working else ""})
        except Exception as exc:
            log.info("setting the agent pane's status failed: %r", exc)

    async def on_stop(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        session_id, user, channel = await self._action_target(body, action)
        if session_id and isinstance(refused := await self.intake.stop(session_id, _clicker(body)), Refused):
            await self._ephemeral(channel, user, refused.message)

    async def on_clear_queue(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        session_id, user, channel = await self._action_target(body, action)
        if session_id and isinstance(refused := await self.intake.clear_queue(session_id, _clicker(body)), Refused):
            await self._ephemeral(channel, user, refused.message)

    async def on_create_pr(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        """Commit, push and open the session's PR in the clicker's name; a refusal (e.g. no linked
        GitHub account: the link to connect) is said to them alone."""
        await ack()
        session_id, user, channel = await self._action_target(body, action)
        if not session_id:
            return
        by = _clicker(body)
        by = by.model_copy(update={"name": self.directory.known_name(by.id)})
        as_app = action.get("action_id") == CREATE_PR_AS_APP_ACTION
        result = await self.intake.open_pull_request(session_id, by, as_app=as_app)
        if isinstance(result, Refused) and result.reason != "not_linked":  # not linked: offered privately already
            await self._ephemeral(channel, user, result.message)

    async def _offer_github(self, session_id: str, person: Author) -> None:
        """Someone needs a PR but has no linked GitHub account: privately, once an hour, the link to
        connect (it signs them in to the web first) and the choice of opening it as the App."""
        thread = await nearest_thread(self.sessions, await self.sessions.get(session_id))  # a sub-session's: its parent's
        if thread is None or person.id in self._offered or not self.settings.github_linking_enabled:
            return
        self._offered[person.id] = True
        token = await self.links.mint(person.id, person.name, person.team)
        url = f"{self.settings.public_url}/auth/link/{token}?next=/github/connect"
        text, blocks = github_offer_blocks(url, session_id)
        try:
            await self.web.chat_postEphemeral(channel=thread[0], user=person.id, thread_ts=thread[1], text=text,
                                              blocks=blocks)
        except Exception as exc:
            log.warning("offering %s the GitHub link failed: %r", person.id, exc)

    def _on_session_event(self, session_id: str, event: Event) -> None:
        """What happens to a session's pull request is said in its thread, working or not; the agent
        pane shows whether the agent is working."""
        if isinstance(event.data, PullRequest):
            self._spawn(self._tell_pull_request(session_id, event.data))
        elif isinstance(event.data, Status) and self._pane_threads:
            self._spawn(self._session_pane_status(session_id, event.data.state == "working"))

    async def _session_pane_status(self, session_id: str, working: bool) -> None:
        info = await self.sessions.get(session_id)
        thread = thread_of(info) if info else None
        if thread is not None:
            await self._pane_status(thread[0], thread[1], working)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tell_pull_request(self, session_id: str, pr: PullRequest) -> None:
        info = await self.sessions.get(session_id)
        thread = thread_of(info) if info else None
        if thread is None:
            return
        for fallback, blocks in render_note(pull_request_text(pr)):
            self.renderer.outbox.post(thread[0], thread[1], Content(fallback, blocks))

    async def on_pick(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        """Someone picked the repository of a held request: intake starts its session."""
        await ack()
        user, channel = _actor(body)
        held_id = str(action.get("block_id", "")).removeprefix("pick:")
        repo = str((action.get("selected_option") or {}).get("value", ""))
        result = await self.intake.pick(held_id, repo, _clicker(body))
        if isinstance(result, Refused):
            await self._ephemeral(channel, user, result.message)
            return
        message_ts = (body.get("message") or {}).get("ts") or (body.get("container") or {}).get("message_ts")
        if isinstance(message_ts, str):
            await self._update(channel, message_ts, f"Working on {repo}", picked_blocks(repo, user))

    async def on_view(self, ack: Any) -> None:
        await ack()  # a link button: Slack opens the URL, we only acknowledge

    async def on_home_opened(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        """The Home tab: recent sessions and a fresh personal sign-in link to the web view."""
        user = event.get("user")
        if not isinstance(user, str) or not user:
            return
        if event.get("tab") == "messages":  # the agent pane / Messages tab: warm what they will likely ask about
            await self.intake.warm_for(Author(id=user, origin=Origin.SLACK_DM), "", "agent_pane")
            return
        if event.get("tab", "home") != "home":
            return
        team = body.get("team_id")
        person = Author(id=user, origin=Origin.APP_HOME, team=team if isinstance(team, str) else None)
        if denied := await self.intake.access.check_person(person):
            await self.web.views_publish(user_id=user, view=refused_view(denied.message))
            return
        name = await self.directory.display_name(user)
        token = await self.links.mint(user, name, person.team)
        recent = await self.sessions.list_sessions(creator=user, limit=RECENT)
        github = None
        if self.settings.github_linking_enabled and self.intake.pull_requests is not None:
            linked = await self.intake.pull_requests.linked(user)
            connect = await self.links.mint(user, name, person.team)
            github = (linked, f"{self.settings.public_url}/auth/link/{connect}?next=/github/connect")
        default = await self.intake.predict_repo(person, "")
        channels = await self.intake.defaults.set_by(user) if self.intake.defaults else []
        view = home_view(f"{self.settings.public_url}/auth/link/{token}", recent, self.settings.session_url,
                         max(1, round(self.links.ttl / 60)), github, default, channels)
        await self.web.views_publish(user_id=user, view=view)

    async def on_link_shared(self, event: dict[str, Any]) -> None:
        """Links to session pages get a preview: title, repository, status, who started it."""
        unfurls: dict[str, Any] = {}
        for link in event.get("links") or []:
            url = link.get("url") if isinstance(link, dict) else None
            token = session_token(url, self.settings.public_url) if isinstance(url, str) else None
            info = await self.sessions.by_share_token(token) if token else None
            row = await self.sessions.summary(info.id) if info else None
            if url and row is not None:
                unfurls[url] = unfurl(row)
        if not unfurls:
            return
        if event.get("unfurl_id") and event.get("source"):
            await self.web.chat_unfurl(unfurl_id=event["unfurl_id"], source=event["source"], unfurls=unfurls)
        elif event.get("channel") and event.get("message_ts"):
            await self.web.chat_unfurl(channel=event["channel"], ts=event["message_ts"], unfurls=unfurls)

    async def on_other_event(self) -> None:
        """Events we do not use are acknowledged and ignored."""

    async def on_error(self, error: Exception, body: dict[str, Any]) -> None:
        """Any listener failure: logged with its traceback, and the person is told, privately."""
        log.error("handling a Slack %s failed", body.get("type", "request"), exc_info=error)
        event = body.get("event") or {}
        user, channel = (event.get("user"), event.get("channel")) if event else _actor(body)
        if isinstance(user, str) and isinstance(channel, str):
            await self._ephemeral(channel, user, FAILED)

    # -- held requests ------------------------------------------------------------------

    async def _hints(self, msg: IncomingMessage) -> Hints:
        name, topic = (None, None) if msg.direct else await self._channel(msg.channel)
        thread = await self._thread_before(msg) if msg.thread_ts else ()
        return Hints(channel=name, topic=topic, thread=thread)

    async def _ask_for_repo(self, msg: IncomingMessage, held: Held) -> None:
        minutes = max(1, round(held.ttl / 60))
        blocks = ask_blocks(held.id, msg.user, list(held.likely), list(held.repos), minutes)
        try:
            resp = await self.web.chat_postMessage(channel=msg.channel, thread_ts=msg.root,
                                                   text="Which repository is this about?", blocks=blocks)
            await self.intake.set_ui_ref(held.id, str(resp["ts"]))
        except Exception as exc:
            log.warning("asking for a repository in %s failed: %r", msg.channel, exc)

    async def _show_expired(self, held: HeldRequest) -> None:
        if held.surface is None or held.surface.kind != THREAD or not held.ui_ref:
            return
        channel = held.surface.key.partition(":")[0]
        minutes = max(1, round(self.intake.ttl / 60))
        await self._update(channel, held.ui_ref, "This request expired.", expired_blocks(minutes))

    # -- Slack reads ----------------------------------------------------------------------

    async def _channel(self, channel: str) -> tuple[str | None, str | None]:
        if channel not in self._channel_info:
            try:
                info = (await self.web.conversations_info(channel=channel))["channel"]
                self._channel_info[channel] = (info.get("name"), (info.get("topic") or {}).get("value") or None)
            except Exception as exc:
                log.info("no channel info for %s: %r", channel, exc)
                return None, None
        return self._channel_info[channel]

    async def _thread_before(self, msg: IncomingMessage) -> tuple[str, ...]:
        """The thread's earlier human messages, oldest first (context for the classifier)."""
        try:
            replies = (await self.web.conversations_replies(channel=msg.channel, ts=msg.root, limit=50))["messages"]
        except Exception as exc:
            log.info("no thread history for %s/%s: %r", msg.channel, msg.root, exc)
            return ()
        return tuple(str(m.get("text", "")) for m in replies
                     if not m.get("bot_id") and float(m.get("ts", "0")) < float(msg.ts))[-20:]

    # -- Slack writes -----------------------------------------------------------------------

    async def _action_target(self, body: dict[str, Any], action: dict[str, Any]) -> tuple[str | None, str, str]:
        user, channel = _actor(body)
        value = action.get("value")
        info = await self.sessions.get(value) if isinstance(value, str) and _HEX_ID.match(value) else None
        thread = thread_of(info) if info else None
        if info is None or thread is None or thread[0] != channel:
            await self._ephemeral(channel, user, "I can't find that session any more.")
            return None, user, channel
        return info.id, user, channel

    async def _update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]) -> None:
        try:
            await self.web.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
        except Exception as exc:
            log.warning("updating %s/%s failed: %r", channel, ts, exc)

    async def _reply(self, channel: str, thread_ts: str, text: str) -> None:
        try:
            await self.web.chat_postMessage(channel=channel, thread_ts=thread_ts, text=text)
        except Exception as exc:
            log.warning("replying in %s failed: %r", channel, exc)

    async def _ephemeral(self, channel: str, user: str, text: str, thread_ts: str | None = None) -> None:
        if not channel or not user:
            return
        try:
            await self.web.chat_postEphemeral(channel=channel, user=user, text=text, thread_ts=thread_ts)
        except Exception as exc:
            log.warning("ephemeral reply in %s failed: %r", channel, exc)


def _clicker(body: dict[str, Any]) -> Author:
    """Who clicked a button, as the access rules see them (their own team: Slack Connect)."""
    user = body.get("user") or {}
    team = user.get("team_id")
    return Author(id=str(user.get("id", "")) or "unknown", origin=Origin.SLACK_THREAD,
                  team=team if isinstance(team, str) and team else None)


def _actor(body: dict[str, Any]) -> tuple[str, str]:
    """Who clicked, and in which channel (interactive payloads)."""
    return str((body.get("user") or {}).get("id", "")), str((body.get("channel") or {}).get("id", ""))


def _composed(body: dict[str, Any]) -> str:
    """The Home tab composer's text, from the view state Slack sends with the *Start* click."""
    values = ((body.get("view") or {}).get("state") or {}).get("values") or {}
    field = (values.get(COMPOSE_BLOCK) or {}).get(COMPOSE_ACTION) or {}
    value = field.get("value")
    return value if isinstance(value, str) else ""
