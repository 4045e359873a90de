"""A small Slack that the real slack-bolt / slack-sdk clients talk to unchanged.

It speaks the Web API (`POST /api/<method>` with bearer tokens, form or JSON bodies, 429 with
Retry-After when asked to) and Socket Mode (`apps.connections.open` hands out a
`ws://127.0.0.1` URL; the socket sends `hello`, then envelopes, and records acks). Like Slack,
it echoes the bot's own posts and edits back as `message` events, and a mention reaches the app
twice (`app_mention` and `message`). Helpers act as a user would: post, mention, click.

Every write is held to Slack's documented limits and answered as Slack does when it breaks
them: text 40,000 characters (`msg_too_long`), 50 blocks, section text 3,000, a `markdown`
block 12,000 (`invalid_blocks`), all `markdown` blocks of a message together 12,000
(`msg_blocks_too_long`). Streaming (`chat.startStream` / `appendStream` / `stopStream`)
follows the method docs: `channel` and `ts`/`thread_ts` required, `recipient_team_id` and
`recipient_user_id` required outside DMs, `markdown_text` up to 12,000 characters per call and
not together with `chunks`, no append after a stop. A streamed message is held to the markdown
limit as a whole too (it becomes `markdown` blocks). Knobs: `stream_error` refuses streaming
with that error; `write_limit` answers 429 + Retry-After past that many writes a second.

Beyond messages, as the method and event docs describe them:
- App Home: `views.publish` (a `home` view, at most 100 blocks) keeps each person's latest view in
  `home_views`; `open_home` sends `app_home_opened` (with the view once one was published),
  `home_buttons` / `click_home` press a button in it (`block_actions` with a `view` container).
- Link unfurling: `share_link` posts a message with a URL and sends `link_shared`; `chat.unfurl`
  (by `channel`+`ts` or `unfurl_id`+`source`) attaches previews to URLs announced that way and
  records them in `unfurls`.
- Sign in with Slack (OpenID Connect): `GET /openid/connect/authorize` (`oidc_authorize_url`)
  signs `oidc_user` in and redirects with a single-use code (or `error=access_denied` when
  `oidc_deny`); `openid.connect.token` swaps it, for `oidc_client_id` / `oidc_client_secret`
  (form fields or HTTP Basic) and the same `redirect_uri`, for an `xoxp-` token and an `id_token`
  (a JWT signed HS256 with the client secret: Slack signs RS256 with its own keys);
  `openid.connect.userInfo` answers for that token. Claims follow the scopes (`email`, `profile`).
- Home tab composer: an `input` block with `dispatch_action: true` around a `plain_text_input` whose
  `dispatch_action_config.trigger_actions_on` has `on_character_entered`; `type_home` types into it (a
  `block_actions` payload with a `plain_text_input` action and the text in `view.state.values`), and
  later payloads from that view (`click_home`) carry the typed text. A republished view keeps what was
  typed in an input with the same `block_id` and `action_id`, as Slack does.
- DMs: `conversations.open` (`users` -> the IM `D…`, the same one `dm_channel` names; `return_im`).
- Agents and assistants: `assistant.threads.setStatus` (`assistant_status`, `assistant_status_log`),
  `agents.sessions.setStatus` (`agent_sessions`, `agent_session_log`); `start_assistant_thread` (the
  thread root in the DM and `assistant_thread_started`), `stop_agent_session` (the stop button:
  `agent_session_stopped`, listing and stopping the app's streams in that thread).
- Message shortcuts: `shortcut` sends `message_action`; `chat.getPermalink` links to a message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import random
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from yarl import URL


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    status: int = 200
    reply: dict[str, Any] = field(default_factory=dict)
    """what the fake answered"""
    peer: tuple[str, int] | None = None
    """the client's address and port: calls on one kept-alive connection share it"""

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.reply.get("ok"))


@dataclass
class Message:
    channel: str
    ts: str
    user: str
    text: str
    thread_ts: str | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    bot: bool = False
    updates: list[float] = field(default_factory=list)
    """monotonic times of chat.update calls that changed this message"""
    streaming: bool = False
    """started with chat.startStream and not stopped yet"""
    streamed: str = ""
    """the Markdown streamed into it"""
    stream_mode: str | None = None
    """`markdown_text` or `chunks`: how the stream was started (appends must match)"""
    appends: list[float] = field(default_factory=list)
    """monotonic times of chat.appendStream calls"""
    unfurls: dict[str, dict[str, Any]] = field(default_factory=dict)
    """URL -> the attachment chat.unfurl put under it (a later call for the same URL replaces it)"""
    subtype: str | None = None
    """e.g. `assistant_app_thread` for the root Slack posts when a person opens the agent pane"""

    def rendered(self) -> str:
        """All text a person would read in the message: its blocks, or its text."""
        if not self.blocks:
            return self.text
        parts: list[str] = []
        for block in self.blocks:
            if block.get("type") == "section":
                parts.append(block["text"]["text"])
            elif block.get("type") == "markdown":
                parts.append(block.get("text", ""))
            elif block.get("type") == "context":
                parts.extend(e.get("text", "") for e in block.get("elements", []))
            elif block.get("type") == "actions":
                parts.extend("[" + (e.get("text") or e.get("placeholder") or {}).get("text", "") + "]"
                             for e in block.get("elements", []))
        return "\n".join(parts)

    def buttons(self) -> dict[str, dict[str, Any]]:
        return {
            e["action_id"]: e
            for b in self.blocks
            if b.get("type") == "actions"
            for e in b.get("elements", [])
        }


class FakeSlack:
    def __init__(
        self,
        bot_token: str = "xoxb-fake-bot-token",
        app_token: str = "xapp-fake-app-token",
        bot_user_id: str = "UBOT0001",
        bot_id: str = "BBOT0001",
        team_id: str = "T0000001",
        echo_bot_messages: bool = True,
    ):
        self.bot_token, self.app_token = bot_token, app_token
        self.bot_user_id, self.bot_id, self.team_id = bot_user_id, bot_id, team_id
        self.echo_bot_messages = echo_bot_messages
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], Message] = {}
        self.acks: dict[str, dict[str, Any]] = {}
        self.rate_limit: dict[str, int] = {}
        """method -> how many of its next calls get a 429"""
        self.retry_after = 1
        self.write_limit: int | None = None
        """answer 429 + Retry-After to writes past this many a second (all write methods together)"""
        self.method_errors: dict[str, str] = {}
        """method -> the error Slack answers it with here (a feature this workspace or app lacks)"""
        self.stream_error: str | None = None
        """refuse chat.startStream with this error (e.g. `method_not_supported`), to test the fallback"""
        self._writes: list[float] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent_envelopes: list[tuple[str, float]] = []
        """(envelope_id, monotonic time it was written to the socket)"""
        self._sockets: list[web.WebSocketResponse] = []
        self.spread = False
        """Spread events over every open Socket Mode connection at random (seeded), as Slack does
        with several connections of one app; off: the newest connection gets them."""
        self._dealer = random.Random(16)
        self._clock = itertools.count(1)
        self._base = int(time.time()) - 100_000
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.connected = asyncio.Event()
        self.connections = 0
        self.channels: dict[str, dict[str, str]] = {"C0000001": {"name": "general", "topic": "Company-wide"}}
        """channel id -> name and topic, for conversations.info"""
        self.users: dict[str, dict[str, Any]] = {}
        """user id -> fields users.info returns over a full member's defaults (`is_restricted`,
        `is_ultra_restricted`, `team_id`: another team makes them a Slack Connect user)"""
        self.hidden_users: set[str] = set()
        """users.info answers `user_not_found` for these"""
        self.usergroups: dict[str, list[str]] = {}
        """user group id -> member ids, for usergroups.users.list"""
        self.home_views: dict[str, dict[str, Any]] = {}
        """user id -> the Home tab view last published for them (as views.publish answered it)"""
        self.unfurls: list[dict[str, Any]] = []
        """accepted chat.unfurl calls: channel, ts, unfurls (URL -> attachment), unfurl_id, source"""
        self.unfurl_blocked_domains: set[str] = set()
        """domains on the workspace's blocklist: chat.unfurl answers `cannot_unfurl_url` for them"""
        self._shared_links: dict[str, dict[str, Any]] = {}
        """unfurl_id -> channel, ts and the URLs a link_shared event announced"""
        self.oidc_client_id = "1111.2222"
        self.oidc_client_secret = "fake-oidc-secret"
        self.oidc_user = "U0ALICE1"
        """who signs in at the authorize endpoint"""
        self.oidc_deny = False
        """the person declines: the authorize endpoint redirects with `error=access_denied`"""
        self.oidc_code_ttl = 600.0
        """seconds an authorization code can be exchanged"""
        self._oidc_codes: dict[str, dict[str, Any]] = {}
        self.oidc_tokens: dict[str, dict[str, Any]] = {}
        """access token (xoxp-) -> user, scopes and client id, for openid.connect.userInfo"""
        self.home_composer: dict[str, str] = {}
        """user id -> the text last typed (`type_home`) into their Home tab's dispatching input, while the
        published view still holds that input"""
        self._opened_ims: set[str] = set()
        self._composer_at: dict[str, tuple[str, str]] = {}
        """user id -> (block_id, action_id) of the input `home_composer` was typed into"""
        self.assistant_status: dict[tuple[str, str], str] = {}
        """(channel, thread_ts) -> the status assistant.threads.setStatus last set there ("" once cleared)"""
        self.assistant_status_log: list[dict[str, Any]] = []
        """every accepted assistant.threads.setStatus: channel_id, thread_ts, status, loading_messages"""
        self.agent_sessions: dict[tuple[str, str], dict[str, Any]] = {}
        """(channel, thread_ts) -> the agent session agents.sessions.setStatus made: status, title,
        initiator_user_id (title and initiator are kept from the call that created it)"""
        self.agent_session_log: list[dict[str, Any]] = []
        """every accepted agents.sessions.setStatus: channel_id, thread_ts, status, title, initiator_user_id"""

    # -- server ---------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)  # slack-sdk sends some methods as GET
        app.router.add_get("/link/", self._socket)
        app.router.add_get("/openid/connect/authorize", self._oidc_authorize)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.api_url

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def oidc_authorize_url(self) -> str:
        """Sign in with Slack's `/openid/connect/authorize`, on this server."""
        return f"http://127.0.0.1:{self.port}/openid/connect/authorize"

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner:
            await self._runner.cleanup()

    def next_ts(self) -> str:
        n = next(self._clock)
        return f"{self._base + n}.{n % 1_000_000:06d}"

    # -- Web API --------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            try:
                params.update(await request.json())
            except json.JSONDecodeError:
                return web.json_response({"ok": False, "error": "invalid_json"})
        elif request.method == "POST":
            params.update(await request.post())
        for key in ("blocks", "attachments"):
            if isinstance(params.get(key), str):
                params[key] = json.loads(params[key])
        token = request.headers.get("Authorization", "").removeprefix("Bearer ") or params.get("token", "")
        basic = _basic_credentials(request.headers.get("Authorization", ""))  # openid.connect.token, from slack-sdk
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        call = Call(method, params, peer=(str(peer[0]), int(peer[1])) if peer else None)
        self.calls.append(call)
        status, reply = await self._answer(method, params, token, basic)
        call.status, call.reply = status, reply
        if status == 429:
            return web.json_response(reply, status=429, headers={"Retry-After": str(self.retry_after)})
        return web.json_response(reply)

    async def _answer(self, method: str, params: dict[str, Any], token: str,
                      basic: tuple[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        if self.rate_limit.get(method, 0) > 0:
            self.rate_limit[method] -= 1
            return 429, {"ok": False, "error": "ratelimited"}
        if method in WRITES and self.write_limit is not None:
            now = time.monotonic()
            self._writes = [t for t in self._writes if t > now - 1.0]
            if len(self._writes) >= self.write_limit:
                return 429, {"ok": False, "error": "ratelimited"}
            self._writes.append(now)
        if method == "openid.connect.token":  # no token: the app authenticates with its client credentials
            return 200, await self._m_openid_connect_token(params, basic)
        if method == "openid.connect.userInfo":  # the token Sign in with Slack issued, not the bot's
            return 200, await self._m_openid_connect_userInfo(params, token)
        wanted = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != wanted:
            return 200, {"ok": False, "error": "invalid_auth"}
        if method in self.method_errors:  # e.g. a workspace where the app is not an agent
            return 200, {"ok": False, "error": self.method_errors[method]}
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}
        reply: dict[str, Any] = await handler(params)
        return 200, reply

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _m_auth_test(self, _: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True, "url": WORKSPACE_URL, "team": "Fake Co", "user": "hosted-agents",
            "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    async def _m_apps_connections_open(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link/?ticket={uuid.uuid4()}&app_id=A0000001"}

    async def _m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = p.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not p.get("text") and not p.get("blocks"):
            return {"ok": False, "error": "no_text"}
        error = _check_message(p)
        if error:
            return error
        msg = Message(channel, self.next_ts(), self.bot_user_id, p.get("text", ""), p.get("thread_ts"),
                      p.get("blocks") or [], bot=True)
        self.messages[(channel, msg.ts)] = msg
        if self.echo_bot_messages:
            self._spawn(self._echo(msg))
        return {"ok": True, "channel": channel, "ts": msg.ts, "message": self._as_event(msg)}

    async def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        msg = self.messages.get((p.get("channel", ""), p.get("ts", "")))
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        if not msg.bot:
            return {"ok": False, "error": "cant_update_message"}
        error = _check_message(p)
        if error:
            return error
        msg.text = p.get("text", msg.text)
        if "blocks" in p:
            msg.blocks = p["blocks"] or []
        msg.streaming = False  # an edit ends a stream (what slack-sdk suggests for an expired one)
        msg.updates.append(time.monotonic())
        if self.echo_bot_messages:
            self._spawn(self._echo(msg, edited=True))
        return {"ok": True, "channel": msg.channel, "ts": msg.ts, "text": msg.text}

    # -- streaming: https://docs.slack.dev/reference/methods/chat.startStream (appendStream, stopStream)

    async def _m_chat_startStream(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, thread_ts = p.get("channel"), p.get("thread_ts")
        if self.stream_error:
            return {"ok": False, "error": self.stream_error}
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not thread_ts:
            return {"ok": False, "error": "invalid_arguments"}
        if not str(channel).startswith("D"):
            if not p.get("recipient_team_id"):
                return {"ok": False, "error": "missing_recipient_team_id"}
            if not p.get("recipient_user_id"):
                return {"ok": False, "error": "missing_recipient_user_id"}
            if p["recipient_team_id"] != self.team_id:
                return {"ok": False, "error": "team_not_found"}
            if not str(p["recipient_user_id"]).startswith(("U", "W")):
                return {"ok": False, "error": "user_not_found"}
        text, mode, error = _stream_text(p, None)
        if error:
            return error
        msg = Message(channel, self.next_ts(), self.bot_user_id, "", thread_ts, [], bot=True, streaming=True,
                      stream_mode=mode)
        self._stream_into(msg, text)
        self.messages[(channel, msg.ts)] = msg
        if self.echo_bot_messages:
            self._spawn(self._echo(msg))
        return {"ok": True, "channel": channel, "ts": msg.ts}

    async def _m_chat_appendStream(self, p: dict[str, Any]) -> dict[str, Any]:
        msg, error = self._stream_target(p)
        if error:
            return error
        assert msg is not None
        if p.get("markdown_text") is None and p.get("chunks") is None:
            return {"ok": False, "error": "markdown_text_or_chunks_required"}
        text, _, error = _stream_text(p, msg.stream_mode)
        if error:
            return error
        if len(msg.streamed) + len(text) > MARKDOWN_LIMIT:
            return {"ok": False, "error": "msg_too_long"}
        self._stream_into(msg, text)
        msg.appends.append(time.monotonic())
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    async def _m_chat_stopStream(self, p: dict[str, Any]) -> dict[str, Any]:
        msg, error = self._stream_target(p)
        if error:
            return error
        assert msg is not None
        text, _, error = _stream_text(p, msg.stream_mode)
        if error:
            return error
        if len(msg.streamed) + len(text) > MARKDOWN_LIMIT:
            return {"ok": False, "error": "msg_too_long"}
        blocks = p.get("blocks") or []
        block_error = _check_message({"blocks": blocks}) if blocks else None
        if block_error:
            return block_error
        self._stream_into(msg, text)
        msg.blocks = msg.blocks + list(blocks)
        msg.streaming = False
        if self.echo_bot_messages:
            self._spawn(self._echo(msg, edited=True))
        return {"ok": True, "channel": msg.channel, "ts": msg.ts, "message": self._as_event(msg)}

    def _stream_target(self, p: dict[str, Any]) -> tuple[Message | None, dict[str, Any] | None]:
        if not p.get("channel"):
            return None, {"ok": False, "error": "channel_not_found"}
        if not p.get("ts"):
            return None, {"ok": False, "error": "invalid_arguments"}
        msg = self.messages.get((p["channel"], p["ts"]))
        if msg is None:
            return None, {"ok": False, "error": "message_not_found"}
        if not msg.bot:
            return None, {"ok": False, "error": "message_not_owned_by_app"}
        if not msg.streaming:
            return None, {"ok": False, "error": "message_not_in_streaming_state"}
        return msg, None

    def _stream_into(self, msg: Message, text: str) -> None:
        msg.streamed += text
        msg.text = msg.streamed
        extra = [b for b in msg.blocks if b.get("type") != "markdown" or b.get("block_id") != "streamed"]
        msg.blocks = ([{"type": "markdown", "block_id": "streamed", "text": msg.streamed}] if msg.streamed else []) + extra

    async def _m_chat_postEphemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "message_ts": self.next_ts()}

    async def _m_users_info(self, p: dict[str, Any]) -> dict[str, Any]:
        user = p.get("user", "")
        if not user or user in self.hidden_users:
            return {"ok": False, "error": "user_not_found"}
        extra = self.users.get(user, {})
        person = self.person(user)
        profile = {"real_name": person["real_name"], "real_name_normalized": person["real_name"],
                   "display_name": person["display_name"], "display_name_normalized": person["display_name"],
                   "email": person["email"], "image_72": person["image"], "image_192": person["image"],
                   "team": extra.get("team_id", self.team_id)}
        info = {"id": user, "team_id": self.team_id, "name": user.lower(), "real_name": person["real_name"],
                "deleted": False, "is_bot": False, "is_admin": False, "is_owner": False, "is_restricted": False,
                "is_ultra_restricted": False, **extra}
        info["profile"] = {**profile, **(extra.get("profile") or {})}
        return {"ok": True, "user": info}

    def person(self, user: str) -> dict[str, str]:
        """Names, email and picture of a person: `users[user]` (`real_name`, `name`, `profile`) over defaults
        made from the id (U0ALICE1 -> Alice)."""
        extra = self.users.get(user, {})
        profile = extra.get("profile") or {}
        real_name = extra.get("real_name") or profile.get("real_name") or _default_name(user)
        display_name = profile.get("display_name", real_name.split()[0] if real_name else "")
        handle = extra.get("name") or user.lower()
        return {"real_name": real_name, "display_name": display_name, "name": handle,
                "email": profile.get("email") or f"{handle}@fake.slack.test",
                "image": profile.get("image_192") or f"https://fake.slack.test/avatars/{user}_192.png"}

    async def _m_usergroups_users_list(self, p: dict[str, Any]) -> dict[str, Any]:
        members = self.usergroups.get(p.get("usergroup", ""))
        if members is None:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(members)}

    async def _m_conversations_info(self, p: dict[str, Any]) -> dict[str, Any]:
        info = self.channels.get(p.get("channel", ""))
        if info is None:
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "channel": {"id": p["channel"], "name": info["name"], "is_channel": True,
                                        "topic": {"value": info.get("topic", ""), "creator": "", "last_set": 0}}}

    async def _m_conversations_replies(self, p: dict[str, Any]) -> dict[str, Any]:
        root = p.get("ts")
        items = [m for m in self.messages.values() if m.channel == p.get("channel") and (m.ts == root or m.thread_ts == root)]
        return {"ok": True, "messages": [self._as_event(m) for m in sorted(items, key=lambda m: float(m.ts))]}

    # -- DMs: https://docs.slack.dev/reference/methods/conversations.open ---------------------

    async def _m_conversations_open(self, p: dict[str, Any]) -> dict[str, Any]:
        users = [u.strip() for u in str(p.get("users") or "").split(",") if u.strip()]
        channel = p.get("channel")
        if not users and not channel:
            return {"ok": False, "error": "users_list_not_supplied"}
        if not users:  # resume an IM or a group DM by its id
            if isinstance(channel, str) and channel.startswith("G") and channel in self._opened_ims:
                return {"ok": True, "no_op": True, "already_open": True, "channel": {"id": channel}}
            if not (isinstance(channel, str) and channel.startswith("D") and self._known_channel(channel)):
                return {"ok": False, "error": "channel_not_found"}
            users = ["U" + channel[1:]]
        if len(users) > 8:
            return {"ok": False, "error": "too_many_users"}
        if any(not u.startswith(("U", "W")) or u in self.hidden_users for u in users):
            return {"ok": False, "error": "user_not_found"}
        if len(users) > 1:  # a group DM: one id per set of people
            members = ",".join(sorted({*users, self.bot_user_id}))
            im = "G" + hashlib.sha256(members.encode()).hexdigest()[:10].upper()
        else:
            im = self.dm_channel(users[0])
        already = im in self._opened_ims or any(m.channel == im for m in self.messages.values())
        self._opened_ims.add(im)
        info: dict[str, Any] = {"id": im}
        if _truthy(p.get("return_im")) and len(users) == 1:
            user = users[0]
            info.update({"created": self._base, "is_im": True, "is_org_shared": False, "user": user,
                         "is_user_deleted": False, "priority": 0, "is_open": True,
                         "last_read": "0000000000.000000", "latest": None, "unread_count": 0,
                         "unread_count_display": 0})
        answer: dict[str, Any] = {"ok": True, "channel": info}
        if already:
            answer.update({"no_op": True, "already_open": True})
        return answer

    def _known_channel(self, channel: str) -> bool:
        """A channel the fake knows: a configured one, a DM with the app, or one that holds messages."""
        return (channel in self.channels or (channel.startswith("D") and len(channel) > 1) or channel in self._opened_ims
                or any(m.channel == channel for m in self.messages.values()))

    # -- permalinks: https://docs.slack.dev/reference/methods/chat.getPermalink -----------------

    async def _m_chat_getPermalink(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(p.get("channel") or ""), str(p.get("message_ts") or "")
        if not channel or not self._known_channel(channel):
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "channel": channel, "permalink": self.permalink(channel, ts)} \
            if (channel, ts) in self.messages else {"ok": False, "error": "message_not_found"}

    def permalink(self, channel: str, ts: str) -> str:
        """The permalink Slack gives a message: `/archives/<channel>/p<ts without the dot>`, and for a reply in a
        thread `?thread_ts=<root>&cid=<channel>`."""
        link = f"{WORKSPACE_URL}archives/{channel}/p{ts.replace('.', '')}"
        msg = self.messages.get((channel, ts))
        if msg is not None and msg.thread_ts and msg.thread_ts != ts:
            link += f"?thread_ts={msg.thread_ts}&cid={channel}"
        return link

    # -- agents and assistants: https://docs.slack.dev/reference/methods/assistant.threads.setStatus,
    #    https://docs.slack.dev/reference/methods/agents.sessions.setStatus ----------------------

    async def _m_assistant_threads_setStatus(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, thread_ts, status = p.get("channel_id"), p.get("thread_ts"), p.get("status")
        if not isinstance(channel, str) or not self._known_channel(channel):
            return {"ok": False, "error": "channel_not_found"}
        if not self._is_thread_root(channel, thread_ts):
            return {"ok": False, "error": "invalid_thread_ts"}
        if not isinstance(status, str):  # required; "" clears the status
            return _invalid_arguments("[ERROR] missing required field: status [json-pointer:/status]")
        loading = p.get("loading_messages")
        if isinstance(loading, str):
            try:
                loading = json.loads(loading)
            except json.JSONDecodeError:
                loading = [loading]
        if loading is not None and (not isinstance(loading, list) or len(loading) > 10
                                    or not all(isinstance(m, str) for m in loading)):
            return _invalid_arguments("[ERROR] must be an array of at most 10 strings [json-pointer:/loading_messages]")
        assert isinstance(thread_ts, str)
        self.assistant_status[(channel, thread_ts)] = status
        self.assistant_status_log.append({"channel_id": channel, "thread_ts": thread_ts, "status": status,
                                          "loading_messages": loading})
        return {"ok": True}

    async def _m_agents_sessions_setStatus(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, thread_ts, status, title = p.get("channel_id"), p.get("thread_ts"), p.get("status"), p.get("title")
        if status not in AGENT_SESSION_STATUSES:  # free text and "" are refused
            return _invalid_arguments("[ERROR] must be a valid enum value [json-pointer:/status]")
        if title is not None and (not isinstance(title, str) or len(title) > 200):
            return _invalid_arguments("[ERROR] must be less than 201 characters [json-pointer:/title]")
        if not isinstance(channel, str) or not self._known_channel(channel):
            return {"ok": False, "error": "channel_not_found"}
        if not self._is_thread_root(channel, thread_ts):  # the fake has thread-based sessions only
            return {"ok": False, "error": "invalid_thread_ts"}
        assert isinstance(thread_ts, str)
        session = self.agent_sessions.get((channel, thread_ts))
        if session is None:  # title and initiator only count when the call creates the session
            session = self.agent_sessions[(channel, thread_ts)] = {
                "title": title, "initiator_user_id": p.get("initiator_user_id")}
        session["status"] = status
        self.agent_session_log.append({"channel_id": channel, "thread_ts": thread_ts, "status": status, "title": title,
                                       "initiator_user_id": p.get("initiator_user_id")})
        return {"ok": True}

    def _is_thread_root(self, channel: str, thread_ts: Any) -> bool:
        msg = self.messages.get((channel, thread_ts)) if isinstance(thread_ts, str) else None
        return msg is not None and msg.thread_ts in (None, msg.ts)

    # -- App Home: https://docs.slack.dev/reference/methods/views.publish ---------------------

    async def _m_views_publish(self, p: dict[str, Any]) -> dict[str, Any]:
        user, view = p.get("user_id"), p.get("view")
        if not isinstance(user, str) or not user.startswith(("U", "W")) or user in self.hidden_users:
            return _invalid_arguments("invalid `user_id`")
        if isinstance(view, str):
            if len(view.encode()) > VIEW_BYTES_LIMIT:
                return {"ok": False, "error": "view_too_large"}
            try:
                view = json.loads(view)
            except json.JSONDecodeError:
                return _invalid_arguments("[ERROR] failed to parse `view` as JSON [json-pointer:/view]")
        if not isinstance(view, dict):
            return _invalid_arguments("[ERROR] missing required field: view [json-pointer:/view]")
        if len(json.dumps(view).encode()) > VIEW_BYTES_LIMIT:
            return {"ok": False, "error": "view_too_large"}
        if view.get("type") != "home":
            return _invalid_arguments("[ERROR] must be `home` for views.publish [json-pointer:/view/type]")
        blocks = view.get("blocks")
        if blocks is None:
            return _invalid_arguments("[ERROR] missing required field: blocks [json-pointer:/view/blocks]")
        error = _check_blocks(blocks, VIEW_BLOCKS_LIMIT)
        if error:
            return _invalid_arguments(f"[ERROR] {error} [json-pointer:/view/blocks]")
        for key, limit in (("private_metadata", 3000), ("callback_id", 255)):
            if len(str(view.get(key) or "")) > limit:
                return _invalid_arguments(f"[ERROR] must be less than {limit + 1} characters [json-pointer:/view/{key}]")
        previous = self.home_views.get(user)
        if p.get("hash") and previous is not None and p["hash"] != previous["hash"]:
            return {"ok": False, "error": "hash_conflict"}
        external_id = str(view.get("external_id") or "")
        if external_id and any(v.get("external_id") == external_id for u, v in self.home_views.items() if u != user):
            return {"ok": False, "error": "duplicate_external_id"}
        view_id = previous["id"] if previous else f"V{uuid.uuid4().hex[:10].upper()}"
        blocks = [_with_ids(b) for b in blocks]
        # what the person typed survives an update that keeps the input's block_id and action_id
        kept = {(b["block_id"], b["element"]["action_id"]) for b in blocks if b.get("type") == "input"}
        values = {bid: {aid: v for aid, v in actions.items() if (bid, aid) in kept}
                  for bid, actions in (previous or {}).get("state", {}).get("values", {}).items()}
        values = {bid: actions for bid, actions in values.items() if actions}
        if self._composer_at.get(user) not in kept:
            self.home_composer.pop(user, None)
            self._composer_at.pop(user, None)
        published = {
            "id": view_id, "team_id": self.team_id, "type": "home", "close": None, "submit": None,
            "blocks": blocks,
            "private_metadata": str(view.get("private_metadata") or ""), "callback_id": str(view.get("callback_id") or ""),
            "state": {"values": values}, "hash": f"{int(time.time())}.{uuid.uuid4().hex[:8]}",
            "clear_on_close": False, "notify_on_close": False, "root_view_id": view_id, "previous_view_id": None,
            "app_id": "A0000001", "external_id": external_id, "app_installed_team_id": self.team_id, "bot_id": self.bot_id,
        }
        self.home_views[user] = published
        return {"ok": True, "view": published}

    # -- link unfurling: https://docs.slack.dev/reference/methods/chat.unfurl ----------------

    async def _m_chat_unfurl(self, p: dict[str, Any]) -> dict[str, Any]:
        raw = p.get("unfurls")
        if raw is None:
            if p.get("metadata") or any(p.get(k) for k in ("user_auth_message", "user_auth_blocks",
                                                             "user_auth_required", "user_auth_url")):
                raw = {}
            else:
                return {"ok": False, "error": "missing_unfurls"}
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                return {"ok": False, "error": "invalid_unfurls_format"}
        if not isinstance(raw, dict) or not all(isinstance(u, str) and isinstance(a, dict) for u, a in raw.items()):
            return {"ok": False, "error": "invalid_unfurls_format"}
        for attachment in raw.values():
            if not any(attachment.get(k) for k in ATTACHMENT_CONTENT):
                return {"ok": False, "error": "cannot_parse_attachment"}
            if "blocks" in attachment and _check_blocks(attachment["blocks"]):
                return {"ok": False, "error": "cannot_parse_attachment"}
        unfurl_id, source = p.get("unfurl_id"), p.get("source")
        if unfurl_id or source:
            if not unfurl_id or source not in ("composer", "conversations_history"):
                return _invalid_arguments("`unfurl_id` and `source` (composer or conversations_history) go together")
            shared = self._shared_links.get(unfurl_id)
            if shared is None:
                return {"ok": False, "error": "cannot_unfurl_url"}
            channel, ts = shared["channel"], shared["ts"]
        else:
            channel, ts = p.get("channel"), p.get("ts")
            if not channel:
                return {"ok": False, "error": "missing_channel"}
            if not ts:
                return {"ok": False, "error": "missing_ts"}
        msg = self.messages.get((channel, ts))
        if msg is None:
            known = channel in self.channels or any(m.channel == channel for m in self.messages.values())
            return {"ok": False, "error": "cannot_find_message" if known else "cannot_find_channel"}
        announced = {url for s in self._shared_links.values() if (s["channel"], s["ts"]) == (channel, ts) for url in s["urls"]}
        for url in raw:
            if url not in msg.text:
                return {"ok": False, "error": "cannot_unfurl_message"}
            if url not in announced or (urlsplit(url).hostname or "") in self.unfurl_blocked_domains:
                return {"ok": False, "error": "cannot_unfurl_url"}
        msg.unfurls.update(raw)
        self.unfurls.append({"channel": channel, "ts": ts, "unfurls": raw, "unfurl_id": unfurl_id, "source": source})
        return {"ok": True}

    # -- Sign in with Slack: https://docs.slack.dev/reference/methods/openid.connect.token (and .userInfo)

    async def _oidc_authorize(self, request: web.Request) -> web.Response:
        """What Slack's `/openid/connect/authorize` does once the person is signed in: a redirect back."""
        q = dict(request.query)
        self.calls.append(Call("openid.connect.authorize", q))
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.oidc_client_id:
            return web.Response(status=400, text="invalid_client_id")
        if not redirect_uri.startswith(("http://", "https://")):  # the fake has no app config to fall back on
            return web.Response(status=400, text="bad_redirect_uri")
        back = {"state": q["state"]} if "state" in q else {}
        scopes = set(q.get("scope", "").replace(",", " ").split())
        if q.get("response_type") != "code":
            back = {"error": "unsupported_response_type", **back}
        elif "openid" not in scopes or not scopes <= OIDC_SCOPES:
            back = {"error": "invalid_scope", **back}
        elif self.oidc_deny:
            back = {"error": "access_denied", **back}
        else:
            code = f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**13)}.{secrets.token_hex(32)}"
            self._oidc_codes[code] = {"client_id": q["client_id"], "redirect_uri": redirect_uri, "nonce": q.get("nonce") or None,
                                      "scopes": scopes, "user": self.oidc_user, "auth_time": int(time.time()),
                                      "issued": time.monotonic()}
            back = {"code": code, **back}
        raise web.HTTPFound(URL(redirect_uri).update_query(back))

    async def _m_openid_connect_token(self, p: dict[str, Any], basic: tuple[str, str] | None) -> dict[str, Any]:
        client_id = p.get("client_id") or (basic[0] if basic else "")
        client_secret = p.get("client_secret") or (basic[1] if basic else "")
        if client_id != self.oidc_client_id:
            return {"ok": False, "error": "invalid_client_id"}
        if client_secret != self.oidc_client_secret:
            return {"ok": False, "error": "bad_client_secret"}
        grant_type = p.get("grant_type") or "authorization_code"
        if grant_type == "refresh_token":  # the fake never issues refresh tokens (no token rotation)
            return {"ok": False, "error": "invalid_refresh_token"}
        if grant_type != "authorization_code":
            return {"ok": False, "error": "invalid_grant_type"}
        grant = self._oidc_codes.get(p.get("code") or "")
        if grant is None or grant["client_id"] != client_id or time.monotonic() - grant["issued"] > self.oidc_code_ttl:
            return {"ok": False, "error": "invalid_code"}
        if (p.get("redirect_uri") or "") != grant["redirect_uri"]:  # required when authorize was given one
            return {"ok": False, "error": "bad_redirect_uri"}
        del self._oidc_codes[p["code"]]  # single use
        user, scopes = grant["user"], grant["scopes"]
        access_token = f"xoxp-{secrets.randbelow(10**10)}-{secrets.randbelow(10**10)}-{secrets.token_hex(16)}"
        self.oidc_tokens[access_token] = {"user": user, "scopes": scopes, "client_id": client_id}
        now = int(time.time())
        claims: dict[str, Any] = {"iss": "https://slack.com", "sub": user, "aud": client_id, "exp": now + 300, "iat": now,
                                  "auth_time": grant["auth_time"]}
        if grant["nonce"] is not None:
            claims["nonce"] = grant["nonce"]
        digest = hashlib.sha256(access_token.encode()).digest()
        claims["at_hash"] = _b64url(digest[: len(digest) // 2])
        claims.update(self._oidc_claims(user, scopes))
        return {"ok": True, "access_token": access_token, "token_type": "Bearer",
                "id_token": _jwt_hs256(claims, self.oidc_client_secret)}

    async def _m_openid_connect_userInfo(self, _: dict[str, Any], token: str) -> dict[str, Any]:
        if not token:
            return {"ok": False, "error": "not_authed"}
        if token in (self.bot_token, self.app_token):
            return {"ok": False, "error": "not_allowed_token_type"}
        grant = self.oidc_tokens.get(token)
        if grant is None:
            return {"ok": False, "error": "invalid_auth"}
        info = {"ok": True, "sub": grant["user"], **self._oidc_claims(grant["user"], grant["scopes"])}
        if "profile" in grant["scopes"]:
            info.update({"https://slack.com/team_name": "Fake Co", "https://slack.com/team_domain": "fake"})
        return info

    def _oidc_claims(self, user: str, scopes: set[str]) -> dict[str, Any]:
        """The claims Sign in with Slack gives for these scopes (`email`, `profile`) beyond the subject."""
        person = self.person(user)
        claims: dict[str, Any] = {"https://slack.com/user_id": user, "https://slack.com/team_id": self.team_id}
        if "email" in scopes:
            claims.update({"email": person["email"], "email_verified": True, "date_email_verified": self._base})
        if "profile" in scopes:
            given, _, family = person["real_name"].partition(" ")
            claims.update({"name": person["real_name"], "given_name": given, "family_name": family, "locale": "en-US",
                           "picture": person["image"]})
            claims.update({f"https://slack.com/user_image_{n}": person["image"] for n in (24, 32, 48, 72, 192, 512)})
            claims.update({f"https://slack.com/team_image_{n}": f"https://fake.slack.test/team_{n}.png"
                           for n in (34, 44, 68, 88, 102, 132, 230)})
            claims["https://slack.com/team_image_default"] = True
        return claims

    def _as_event(self, msg: Message) -> dict[str, Any]:
        team = self.users.get(msg.user, {}).get("team_id", self.team_id)
        event: dict[str, Any] = {"type": "message", "user": msg.user, "text": msg.text, "ts": msg.ts, "team": team}
        if msg.subtype:
            event["subtype"] = msg.subtype
        if not msg.bot:  # Slack Connect: whose organisation the author is from, and where the message was sent
            event["user_team"], event["source_team"] = team, team
        if msg.blocks:
            event["blocks"] = msg.blocks
        if msg.thread_ts:
            event["thread_ts"] = msg.thread_ts
        if msg.bot:
            event["bot_id"] = self.bot_id
            event["app_id"] = "A0000001"
        return event

    async def _echo(self, msg: Message, edited: bool = False) -> None:
        event = {**self._as_event(msg), "channel": msg.channel, "event_ts": msg.ts,
                 "channel_type": "im" if msg.channel.startswith("D") else "channel"}
        if edited:
            event = {"type": "message", "subtype": "message_changed", "channel": msg.channel, "hidden": True,
                     "message": self._as_event(msg), "ts": self.next_ts(), "event_ts": msg.ts}
        await self.send_event(event)

    # -- Socket Mode ----------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        if "ticket" not in request.query:
            raise web.HTTPUnauthorized()
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        self.connections += 1
        await ws.send_json({"type": "hello", "num_connections": len(self._sockets),
                            "debug_info": {"host": "fake-slack", "approximate_connection_time": 18060},
                            "connection_info": {"app_id": "A0000001"}})
        self.connected.set()
        try:
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    try:
                        data = json.loads(frame.data)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(data, dict) and "envelope_id" in data:
                        self.acks[data["envelope_id"]] = data
        finally:
            self._sockets.remove(ws)
            if not self._sockets:
                self.connected.clear()
        return ws

    async def send_raw(self, text: str) -> None:
        """Write a frame as is (for malformed-input tests)."""
        await self.connected.wait()
        await self._sockets[-1].send_str(text)

    @property
    def socket_count(self) -> int:
        return len(self._sockets)

    def _socket_for(self, to: int | None) -> web.WebSocketResponse:
        if to is not None:
            return self._sockets[to % len(self._sockets)]
        if self.spread:
            return self._dealer.choice(self._sockets)
        return self._sockets[-1]

    async def send_envelope(self, type_: str, payload: Any, retry_attempt: int = 0, to: int | None = None) -> str:
        await asyncio.wait_for(self.connected.wait(), 10)
        envelope_id = str(uuid.uuid4())
        envelope = {"envelope_id": envelope_id, "payload": payload, "type": type_,
                    "accepts_response_payload": type_ != "events_api", "retry_attempt": retry_attempt,
                    "retry_reason": "timeout" if retry_attempt else ""}
        self.sent_envelopes.append((envelope_id, time.monotonic()))
        await self._socket_for(to).send_str(json.dumps(envelope))
        return envelope_id

    def event_callback(self, event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        return {
            "token": "verification-token-unused", "team_id": self.team_id, "api_app_id": "A0000001",
            "event": event, "type": "event_callback", "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()), "is_ext_shared_channel": False,
            "authorizations": [{"enterprise_id": None, "team_id": self.team_id, "user_id": self.bot_user_id,
                                "is_bot": True, "is_enterprise_install": False}],
        }

    async def send_event(self, event: dict[str, Any], event_id: str | None = None, retry_attempt: int = 0,
                         to: int | None = None) -> str:
        """Deliver an event; `to` picks the connection (by its index in connection order)."""
        return await self.send_envelope("events_api", self.event_callback(event, event_id), retry_attempt, to)

    # -- acting as a user -----------------------------------------------------------------

    async def user_message(self, user: str, text: str, channel: str = "C0000001", thread_ts: str | None = None) -> str:
        """Post as a person; a message that mentions the bot reaches the app as two events."""
        msg = Message(channel, self.next_ts(), user, text, thread_ts)
        self.messages[(channel, msg.ts)] = msg
        im = channel.startswith("D")
        event = {**self._as_event(msg), "channel": msg.channel, "event_ts": msg.ts,
                 "client_msg_id": str(uuid.uuid4()), "channel_type": "im" if im else "channel"}
        if f"<@{self.bot_user_id}>" in text and not im:
            mention = {k: v for k, v in event.items() if k != "channel_type"}
            await self.send_event({**mention, "type": "app_mention"})
        await self.send_event(event)
        return msg.ts

    def mention_event(self, user: str, text: str, channel: str = "C0000001") -> dict[str, Any]:
        """A new top-level `app_mention` of the bot (for tests that deliver it themselves, e.g. twice)."""
        ts = self.next_ts()
        return {"type": "app_mention", "user": user, "text": f"<@{self.bot_user_id}> {text}", "ts": ts,
                "channel": channel, "event_ts": ts}

    async def mention(self, user: str, text: str, channel: str = "C0000001", thread_ts: str | None = None) -> str:
        return await self.user_message(user, f"<@{self.bot_user_id}> {text}", channel, thread_ts)

    async def click(self, user: str, message: Message, action_id: str, to: int | None = None) -> str:
        """Press a message's button; `to` picks the Socket Mode connection (see `send_event`)."""
        button = message.buttons()[action_id]
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "name": user.lower(),
                     "team_id": self.users.get(user, {}).get("team_id", self.team_id)},
            "api_app_id": "A0000001", "token": "verification-token-unused",
            "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel, "is_ephemeral": False},
            "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:8]}", "team": {"id": self.team_id, "domain": "fake"},
            "channel": {"id": message.channel, "name": "eng"}, "message": self._as_event(message),
            "response_url": f"http://127.0.0.1:{self.port}/actions/{uuid.uuid4().hex}",
            "actions": [{"action_id": action_id, "block_id": "controls", "value": button.get("value", ""),
                         "type": "button", "action_ts": f"{time.time():.6f}", "text": button["text"]}],
        }
        return await self.send_envelope("interactive", payload, to=to)

    async def choose(self, user: str, message: Message, action_id: str, value: str) -> str:
        """Pick `value` in the message's select (`static_select`), as a person would."""
        block = next(b for b in message.blocks if b.get("type") == "actions"
                     and any(e.get("action_id") == action_id for e in b["elements"]))
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "name": user.lower(),
                     "team_id": self.users.get(user, {}).get("team_id", self.team_id)},
            "api_app_id": "A0000001", "token": "verification-token-unused",
            "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel, "is_ephemeral": False},
            "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:8]}", "team": {"id": self.team_id, "domain": "fake"},
            "channel": {"id": message.channel, "name": self.channels.get(message.channel, {}).get("name", "x")},
            "message": self._as_event(message),
            "actions": [{"action_id": action_id, "block_id": block.get("block_id", ""), "type": "static_select",
                         "selected_option": {"text": {"type": "plain_text", "text": value}, "value": value},
                         "action_ts": f"{time.time():.6f}"}],
        }
        return await self.send_envelope("interactive", payload)

    def dm_channel(self, user: str) -> str:
        """The id of the app's DM with a person (its App Home's Messages tab)."""
        return "D" + user[1:]

    async def open_home(self, user: str, tab: str = "home") -> str:
        """Open the app's Home (`tab`: home or messages): `app_home_opened`, with the view once one was published."""
        event: dict[str, Any] = {"type": "app_home_opened", "user": user, "channel": self.dm_channel(user), "tab": tab,
                                 "event_ts": f"{time.time():.6f}"}
        if tab == "home" and user in self.home_views:
            event["view"] = self.home_views[user]
        return await self.send_event(event)

    def home_buttons(self, user: str) -> dict[str, dict[str, Any]]:
        """The buttons of the Home tab published for `user`, by action_id (actions blocks and section accessories)."""
        return {e["action_id"]: e for _, e in self._home_elements(user)}

    def _home_elements(self, user: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        found = []
        for block in self.home_views.get(user, {}).get("blocks", []):
            elements = block.get("elements", []) if block.get("type") == "actions" else [block.get("accessory") or {}]
            found.extend((block, e) for e in elements if e.get("type") == "button" and e.get("action_id"))
        return found

    async def click_home(self, user: str, action_id: str) -> str:
        """Press a button in the person's Home tab: `block_actions` from a view (no channel, message or response_url).
        The view carries what they typed in its inputs (`view.state.values`)."""
        view = self.home_views[user]
        block, button = next((b, e) for b, e in self._home_elements(user) if e["action_id"] == action_id)
        return await self._view_action(user, view, {
            "action_id": action_id, "block_id": block.get("block_id", ""), "value": button.get("value", ""),
            "type": "button", "action_ts": f"{time.time():.6f}", "text": button["text"]})

    def home_inputs(self, user: str) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """The `plain_text_input`s of the Home tab published for `user`, by action_id: (input block, element)."""
        return {b["element"]["action_id"]: (b, b["element"]) for b in self.home_views.get(user, {}).get("blocks", [])
                if b.get("type") == "input" and b.get("element", {}).get("type") == "plain_text_input"}

    async def type_home(self, user: str, text: str, action_id: str | None = None, *, press_enter: bool = False) -> str:
        """Type `text` into the Home tab's dispatching input, as a person would: the `block_actions` Slack sends for
        a `plain_text_input` in an input block with `dispatch_action: true`. Slack sends it as characters are
        entered when `dispatch_action_config.trigger_actions_on` has `on_character_entered`, or on Enter
        (`press_enter`) when it has `on_enter_pressed` or no config. The text stays in the view's state (and in
        `home_composer`) for later payloads from the view, such as `click_home`."""
        if user not in self.home_views:
            raise AssertionError(f"no Home tab was published for {user}")
        inputs = {aid: (b, e) for aid, (b, e) in self.home_inputs(user).items() if action_id in (None, aid)}
        dispatching = {aid: (b, e) for aid, (b, e) in inputs.items() if b.get("dispatch_action") is True}
        if not dispatching:
            raise AssertionError(f"no input block with dispatch_action: true{f' for {action_id}' if action_id else ''} "
                                 f"in {user}'s Home tab: Slack would send the app nothing")
        if len(dispatching) > 1:
            raise AssertionError(f"more than one dispatching input in {user}'s Home tab: name one ({sorted(dispatching)})")
        ((aid, (block, element)),) = dispatching.items()
        triggers = (element.get("dispatch_action_config") or {}).get("trigger_actions_on") or ["on_enter_pressed"]
        wanted = "on_enter_pressed" if press_enter else "on_character_entered"
        if wanted not in triggers:
            raise AssertionError(f"{aid} dispatches on {triggers}, not {wanted}: Slack would send the app nothing")
        view = self.home_views[user]
        view["state"]["values"].setdefault(block["block_id"], {})[aid] = {"type": "plain_text_input", "value": text}
        self.home_composer[user] = text
        self._composer_at[user] = (block["block_id"], aid)
        return await self._view_action(user, view, {
            "type": "plain_text_input", "action_id": aid, "block_id": block["block_id"], "value": text,
            "action_ts": f"{time.time():.6f}"})

    async def _view_action(self, user: str, view: dict[str, Any], action: dict[str, Any]) -> str:
        payload = {
            "type": "block_actions", "user": self._actor(user),
            "api_app_id": "A0000001", "token": "verification-token-unused",
            "container": {"type": "view", "view_id": view["id"]},
            "trigger_id": _trigger_id(), "team": {"id": self.team_id, "domain": "fake"},
            "enterprise": None, "is_enterprise_install": False, "view": view, "actions": [action],
        }
        return await self.send_envelope("interactive", payload)

    def _actor(self, user: str) -> dict[str, Any]:
        return {"id": user, "username": user.lower(), "name": user.lower(),
                "team_id": self.users.get(user, {}).get("team_id", self.team_id)}

    # -- agents and assistants, as a person uses them ---------------------------------------

    async def start_assistant_thread(self, user: str, context_channel: str | None = None) -> tuple[str, str]:
        """Open the app's agent pane, as a person would: Slack starts a thread in the DM (its root has the subtype
        `assistant_app_thread`) and sends `assistant_thread_started`, with the channel the person was viewing
        (`context_channel`) as context. Returns (channel, thread_ts)."""
        channel = self.dm_channel(user)
        title = f"Chats from {time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}.000Z"
        root = Message(channel, self.next_ts(), self.bot_user_id, title, subtype="assistant_app_thread")
        self.messages[(channel, root.ts)] = root
        context: dict[str, Any] = {}
        if context_channel:
            context = {"channel_id": context_channel, "team_id": self.team_id, "enterprise_id": None}
        await self.send_event({"type": "assistant_thread_started",
                               "assistant_thread": {"user_id": user, "context": context, "channel_id": channel,
                                                    "thread_ts": root.ts},
                               "event_ts": f"{time.time():.6f}"})
        return channel, root.ts

    async def stop_agent_session(self, user: str, channel: str, thread_ts: str) -> str:
        """Press the stop button of the agent session in that thread: Slack stops the app's streams there and sends
        `agent_session_stopped` listing them (`streaming_message_ts`, empty when none was streaming). The
        session's status stays as it was: the app moves it on."""
        streaming = [m for m in self.bot_messages(channel, thread_ts) if m.streaming]
        for msg in streaming:
            msg.streaming = False
        return await self.send_event({"type": "agent_session_stopped", "channel": channel, "thread_ts": thread_ts,
                                      "user": user, "streaming_message_ts": [m.ts for m in streaming],
                                      "event_ts": f"{time.time():.6f}"})

    async def shortcut(self, user: str, message: Message | tuple[str, str], callback_id: str) -> str:
        """Use the app's message shortcut `callback_id` on a message (a `Message` or its (channel, ts)), as a
        person would: a `message_action` payload."""
        msg = message if isinstance(message, Message) else self.messages[message]
        name = "directmessage" if msg.channel.startswith("D") else self.channels.get(msg.channel, {}).get("name", "")
        payload = {
            "type": "message_action", "token": "verification-token-unused", "action_ts": f"{time.time():.6f}",
            "team": {"id": self.team_id, "domain": "fake"}, "user": self._actor(user),
            "channel": {"id": msg.channel, "name": name}, "is_enterprise_install": False, "enterprise": None,
            "callback_id": callback_id, "trigger_id": _trigger_id(), "message_ts": msg.ts,
            "response_url": f"http://127.0.0.1:{self.port}/actions/{uuid.uuid4().hex}",
            "message": self._as_event(msg),
        }
        return await self.send_envelope("interactive", payload)

    async def share_link(self, user: str, url: str, channel: str = "C0000001", thread_ts: str | None = None,
                         is_bot_user_member: bool = True) -> str:
        """Post a message with a link, as a person: the message, then `link_shared`. Returns the message's ts."""
        ts = await self.user_message(user, f"<{url}>", channel, thread_ts)
        unfurl_id = f"{channel}.{ts}.{hashlib.sha256(f'{channel}/{ts}/{url}'.encode()).hexdigest()}"
        self._shared_links[unfurl_id] = {"channel": channel, "ts": ts, "urls": {url}}
        event: dict[str, Any] = {"type": "link_shared", "channel": channel, "is_bot_user_member": is_bot_user_member,
                                 "user": user, "message_ts": ts, "unfurl_id": unfurl_id, "source": "conversations_history",
                                 "links": [{"domain": urlsplit(url).hostname or "", "url": url}], "event_ts": self.next_ts()}
        if thread_ts:
            event["thread_ts"] = thread_ts
        await self.send_event(event)
        return ts

    # -- looking at what the bot did ------------------------------------------------------

    def bot_messages(self, channel: str = "C0000001", thread_ts: str | None = None) -> list[Message]:
        return sorted(
            (m for m in self.messages.values()
             if m.bot and m.channel == channel and (thread_ts is None or m.thread_ts == thread_ts)),
            key=lambda m: float(m.ts),
        )

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def wait_for(self, condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.02)


WRITES = frozenset({"chat.postMessage", "chat.update", "chat.startStream", "chat.appendStream", "chat.stopStream"})
TEXT_LIMIT, BLOCKS_LIMIT, SECTION_LIMIT, MARKDOWN_LIMIT = 40_000, 50, 3_000, 12_000
BLOCK_TYPES = {"section", "markdown", "context", "actions", "divider", "header", "rich_text", "image", "input"}
VIEW_BLOCKS_LIMIT, VIEW_BYTES_LIMIT = 100, 250_000
ATTACHMENT_CONTENT = ("blocks", "title", "text", "fallback", "pretext", "image_url", "thumb_url", "fields", "author_name",
                      "preview")
OIDC_SCOPES = {"openid", "email", "profile"}
AGENT_SESSION_STATUSES = ("active", "processing", "suspended", "closed")
WORKSPACE_URL = "https://fake.slack.test/"
"""the workspace's address (auth.test's `url`); permalinks start with it"""


def _trigger_id() -> str:
    return f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:8]}"


def _truthy(value: Any) -> bool:
    """A boolean argument as Slack reads it from JSON or a form/query string (`true`, `1`)."""
    return value is True or (isinstance(value, (str, int)) and str(value).lower() in ("1", "true"))


def _invalid_arguments(message: str) -> dict[str, Any]:
    return {"ok": False, "error": "invalid_arguments", "response_metadata": {"messages": [message]}}


def _default_name(user: str) -> str:
    """A readable name from an id: U0ALICE1 -> Alice."""
    letters = "".join(c for c in user[1:] if c.isalpha())
    return letters.capitalize() or user.lower()


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """Client id and secret from an `Authorization: Basic` header (RFC 7617), or None."""
    if not header.startswith("Basic "):
        return None
    try:
        login, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("latin1").partition(":")
    except ValueError:
        return None
    return (login, password) if sep else None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt_hs256(claims: dict[str, Any], key: str) -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(key.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


def _with_ids(block: dict[str, Any]) -> dict[str, Any]:
    """A block as Slack keeps it: a block_id, and an action_id on an input's element, made up when missing."""
    block = {**block, "block_id": block.get("block_id") or uuid.uuid4().hex[:5]}
    element = block.get("element")
    if block.get("type") == "input" and isinstance(element, dict) and not element.get("action_id"):
        block["element"] = {**element, "action_id": uuid.uuid4().hex[:5]}
    return block


def _check_input(i: int, block: dict[str, Any]) -> str | None:
    """An input block's documented limits (label, element, hint; a plain_text_input's own fields)."""
    label, element, hint = block.get("label"), block.get("element"), block.get("hint")
    if not isinstance(label, dict) or label.get("type") != "plain_text" or not label.get("text"):
        return f"blocks[{i}].label must be a plain_text object"
    if len(label["text"]) > 2000 or (isinstance(hint, dict) and len(hint.get("text", "")) > 2000):
        return f"blocks[{i}].label and hint must be at most 2000 characters"
    if not isinstance(element, dict) or not element.get("type"):
        return f"blocks[{i}].element is required"
    if block.get("dispatch_action") and element["type"] == "file_input":
        return f"blocks[{i}]: unsupported type: dispatch_action with file_input"
    if "dispatch_action_config" in element:
        if element["type"] not in ("plain_text_input", "rich_text_input"):
            return f"blocks[{i}].element: dispatch_action_config is only for plain_text_input and rich_text_input"
        triggers = (element["dispatch_action_config"] or {}).get("trigger_actions_on", [])
        if not isinstance(triggers, list) or not set(triggers) <= {"on_enter_pressed", "on_character_entered"}:
            return f"blocks[{i}].element.dispatch_action_config.trigger_actions_on: must be on_enter_pressed or " \
                   "on_character_entered"
    if len(str(element.get("action_id") or "")) > 255:
        return f"blocks[{i}].element.action_id must be at most 255 characters"
    if element["type"] == "plain_text_input":
        low, high = element.get("min_length"), element.get("max_length")
        if low is not None and not (isinstance(low, int) and 0 <= low <= 3000):
            return f"blocks[{i}].element.min_length must be between 0 and 3000"
        if high is not None and not (isinstance(high, int) and 1 <= high <= 3000):
            return f"blocks[{i}].element.max_length must be between 1 and 3000"
        if len((element.get("placeholder") or {}).get("text", "")) > 150:
            return f"blocks[{i}].element.placeholder must be at most 150 characters"
    return None


def _check_message(p: dict[str, Any]) -> dict[str, Any] | None:
    """Slack's answer to a message that breaks its limits, or None."""
    text = p.get("text")
    if isinstance(text, str) and len(text) > TEXT_LIMIT:
        return {"ok": False, "error": "msg_too_long"}
    blocks = p.get("blocks")
    if blocks is None:
        return None
    error = _check_blocks(blocks)
    if error:
        return {"ok": False, "error": "invalid_blocks", "errors": [error]}
    if sum(len(b.get("text", "")) for b in blocks if b.get("type") == "markdown") > MARKDOWN_LIMIT:
        return {"ok": False, "error": "msg_blocks_too_long"}
    return None


def _check_blocks(blocks: Any, limit: int = BLOCKS_LIMIT) -> str | None:
    """The limits Slack enforces on blocks that the app must respect (`limit`: 50 in a message, 100 in a view)."""
    if not isinstance(blocks, list) or len(blocks) > limit:
        return f"must be a list of at most {limit} blocks"
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in BLOCK_TYPES:
            return f"blocks[{i}]: unknown block type {kind!r}"
        if len(str(block.get("block_id", ""))) > 255:
            return f"blocks[{i}].block_id must be at most 255 characters"
        if kind == "section":
            if len(block.get("text", {}).get("text", "")) > SECTION_LIMIT:
                return f"blocks[{i}].text must be at most {SECTION_LIMIT} characters"
            if any(len(f.get("text", "")) > 2000 for f in block.get("fields", [])):
                return f"blocks[{i}].fields[] must be at most 2000 characters"
        elif kind == "markdown":
            if not isinstance(block.get("text"), str) or not block["text"]:
                return f"blocks[{i}].text is required"
            if len(block["text"]) > MARKDOWN_LIMIT:
                return f"blocks[{i}].text must be at most {MARKDOWN_LIMIT} characters"
        elif kind == "context":
            elements = block.get("elements", [])
            if not elements or len(elements) > 10:
                return f"blocks[{i}].elements must hold 1 to 10 items"
            if any(len(e.get("text", "")) > SECTION_LIMIT for e in elements):
                return f"blocks[{i}].elements[].text must be at most {SECTION_LIMIT} characters"
        elif kind == "input":
            error = _check_input(i, block)
            if error:
                return error
        elif kind == "actions":
            elements = block.get("elements", [])
            if not elements or len(elements) > 25:
                return f"blocks[{i}].elements must hold 1 to 25 items"
            for e in elements:
                if e.get("type") == "button" and (len(e.get("text", {}).get("text", "")) > 75 or len(e.get("url", "")) > 3000
                                                  or len(e.get("value", "")) > 2000 or len(e.get("action_id", "")) > 255):
                    return f"blocks[{i}]: a button breaks its limits"
    return None


def _stream_text(p: dict[str, Any], mode: str | None) -> tuple[str, str | None, dict[str, Any] | None]:
    """The Markdown a streaming call adds, the mode it uses, or Slack's error."""
    markdown, chunks = p.get("markdown_text"), p.get("chunks")
    if markdown is not None and chunks is not None:
        return "", None, {"ok": False, "error": "cannot_provide_both_markdown_text_and_chunks"}
    if markdown is not None:
        if not isinstance(markdown, str) or len(markdown) > MARKDOWN_LIMIT:
            return "", None, {"ok": False, "error": "msg_too_long"}
        used = "markdown_text"
        text = markdown
    elif chunks is not None:
        if isinstance(chunks, str):
            chunks = json.loads(chunks)
        if not isinstance(chunks, list) or not all(isinstance(c, dict) and c.get("type") in
                                                    ("markdown_text", "task_update", "plan_update", "blocks") for c in chunks):
            return "", None, {"ok": False, "error": "invalid_chunks"}
        used = "chunks"
        text = "".join(c.get("text", "") for c in chunks if c["type"] == "markdown_text")
        if len(text) > MARKDOWN_LIMIT:
            return "", None, {"ok": False, "error": "msg_too_long"}
    else:
        return "", mode, None
    if mode is not None and used != mode:
        return "", None, {"ok": False, "error": "streaming_mode_mismatch"}
    return text, used, None
