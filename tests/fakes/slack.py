"""A small Slack that the real slack-bolt / slack-sdk clients talk to unchanged.

It speaks the Web API (`POST /api/<method>` with bearer tokens, form or JSON bodies, 429 with
Retry-After when asked to) and Socket Mode (`apps.connections.open` hands out a
`ws://127.0.0.1` URL; the socket sends `hello`, then envelopes, and records acks). Like Slack,
it echoes the bot's own posts and edits back as `message` events, and a mention reaches the app
twice (`app_mention` and `message`). Helpers act as a user would: post, mention, click.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import WSMsgType, web


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


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

    def rendered(self) -> str:
        """All text a person would read in the message: its blocks, or its text."""
        if not self.blocks:
            return self.text
        parts: list[str] = []
        for block in self.blocks:
            if block.get("type") == "section":
                parts.append(block["text"]["text"])
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
        self.sent_envelopes: list[tuple[str, float]] = []
        """(envelope_id, monotonic time it was written to the socket)"""
        self._sockets: list[web.WebSocketResponse] = []
        self._clock = itertools.count(1)
        self._base = int(time.time()) - 100_000
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.connected = asyncio.Event()
        self.connections = 0
        self.channels: dict[str, dict[str, str]] = {"C0000001": {"name": "general", "topic": "Company-wide"}}
        """channel id -> name and topic, for conversations.info"""

    # -- server ---------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)  # slack-sdk sends some methods as GET
        app.router.add_get("/link/", self._socket)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.api_url

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

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
        self.calls.append(Call(method, params))
        if self.rate_limit.get(method, 0) > 0:
            self.rate_limit[method] -= 1
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(self.retry_after)}
            )
        wanted = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != wanted:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        return web.json_response(await handler(params))

    async def _m_auth_test(self, _: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True, "url": "https://fake.slack.test/", "team": "Fake Co", "user": "hosted-agents",
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
        error = _check_blocks(p.get("blocks"))
        if error:
            return {"ok": False, "error": "invalid_blocks", "errors": [error]}
        msg = Message(channel, self.next_ts(), self.bot_user_id, p.get("text", ""), p.get("thread_ts"),
                      p.get("blocks") or [], bot=True)
        self.messages[(channel, msg.ts)] = msg
        if self.echo_bot_messages:
            asyncio.create_task(self._echo(msg))
        return {"ok": True, "channel": channel, "ts": msg.ts, "message": self._as_event(msg)}

    async def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        msg = self.messages.get((p.get("channel", ""), p.get("ts", "")))
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        error = _check_blocks(p.get("blocks"))
        if error:
            return {"ok": False, "error": "invalid_blocks", "errors": [error]}
        msg.text = p.get("text", msg.text)
        if "blocks" in p:
            msg.blocks = p["blocks"] or []
        msg.updates.append(time.monotonic())
        if self.echo_bot_messages:
            asyncio.create_task(self._echo(msg, edited=True))
        return {"ok": True, "channel": msg.channel, "ts": msg.ts, "text": msg.text}

    async def _m_chat_postEphemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "message_ts": self.next_ts()}

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

    def _as_event(self, msg: Message) -> dict[str, Any]:
        event: dict[str, Any] = {"type": "message", "user": msg.user, "text": msg.text, "ts": msg.ts, "team": self.team_id}
        if msg.blocks:
            event["blocks"] = msg.blocks
        if msg.thread_ts:
            event["thread_ts"] = msg.thread_ts
        if msg.bot:
            event["bot_id"] = self.bot_id
            event["app_id"] = "A0000001"
        return event

    async def _echo(self, msg: Message, edited: bool = False) -> None:
        event = {**self._as_event(msg), "channel": msg.channel, "event_ts": msg.ts, "channel_type": "channel"}
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

    async def send_envelope(self, type_: str, payload: Any, retry_attempt: int = 0) -> str:
        await asyncio.wait_for(self.connected.wait(), 10)
        envelope_id = str(uuid.uuid4())
        envelope = {"envelope_id": envelope_id, "payload": payload, "type": type_,
                    "accepts_response_payload": type_ != "events_api", "retry_attempt": retry_attempt,
                    "retry_reason": "timeout" if retry_attempt else ""}
        self.sent_envelopes.append((envelope_id, time.monotonic()))
        await self._sockets[-1].send_str(json.dumps(envelope))
        return envelope_id

    def event_callback(self, event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        return {
            "token": "verification-token-unused", "team_id": self.team_id, "api_app_id": "A0000001",
            "event": event, "type": "event_callback", "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()), "is_ext_shared_channel": False,
            "authorizations": [{"enterprise_id": None, "team_id": self.team_id, "user_id": self.bot_user_id,
                                "is_bot": True, "is_enterprise_install": False}],
        }

    async def send_event(self, event: dict[str, Any], event_id: str | None = None, retry_attempt: int = 0) -> str:
        return await self.send_envelope("events_api", self.event_callback(event, event_id), retry_attempt)

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

    async def mention(self, user: str, text: str, channel: str = "C0000001", thread_ts: str | None = None) -> str:
        return await self.user_message(user, f"<@{self.bot_user_id}> {text}", channel, thread_ts)

    async def click(self, user: str, message: Message, action_id: str) -> str:
        button = message.buttons()[action_id]
        payload = {
            "type": "block_actions", "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": self.team_id},
            "api_app_id": "A0000001", "token": "verification-token-unused",
            "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel, "is_ephemeral": False},
            "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:8]}", "team": {"id": self.team_id, "domain": "fake"},
            "channel": {"id": message.channel, "name": "eng"}, "message": self._as_event(message),
            "response_url": f"http://127.0.0.1:{self.port}/actions/{uuid.uuid4().hex}",
            "actions": [{"action_id": action_id, "block_id": "controls", "value": button.get("value", ""),
                         "type": "button", "action_ts": f"{time.time():.6f}", "text": button["text"]}],
        }
        return await self.send_envelope("interactive", payload)

    async def choose(self, user: str, message: Message, action_id: str, value: str) -> str:
        """Pick `value` in the message's select (`static_select`), as a person would."""
        block = next(b for b in message.blocks if b.get("type") == "actions"
                     and any(e.get("action_id") == action_id for e in b["elements"]))
        payload = {
            "type": "block_actions", "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": self.team_id},
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

    # -- looking at what the bot did ------------------------------------------------------

    def bot_messages(self, channel: str = "C0000001", thread_ts: str | None = None) -> list[Message]:
        return sorted(
            (m for m in self.messages.values() if m.bot and m.channel == channel and (thread_ts is None or m.thread_ts == thread_ts)),
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


def _check_blocks(blocks: Any) -> str | None:
    """The limits Slack enforces that the app must respect."""
    if blocks is None:
        return None
    if not isinstance(blocks, list) or len(blocks) > 50:
        return "must be a list of at most 50 blocks"
    for i, block in enumerate(blocks):
        if block.get("type") == "section" and len(block.get("text", {}).get("text", "")) > 3000:
            return f"blocks[{i}].text must be at most 3000 characters"
    return None
