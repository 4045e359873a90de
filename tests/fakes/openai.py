"""A small OpenAI-compatible server that the real `openai` client talks to unchanged.

`POST /v1/chat/completions`, streaming (server-sent events, `data: [DONE]`) or not, with text and
tool calls. Each test scripts its replies (`add`, or `add_for` a text the request's last user
message contains, for sessions running side by side); when the script is empty the model
answers "Answer to: <last user text>". Knobs: time to first token, delay between chunks, HTTP errors,
malformed output, a reply that never comes, and
response headers (`Retry-After`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class ToolCall:
    name: str
    arguments: str | dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass
class Reply:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    ttft: float = 0.0
    """seconds before the first chunk"""
    chunk_delay: float = 0.0
    chunk_chars: int = 4
    """about one token per chunk"""
    status: int = 200
    error: str = "The server had an error while processing your request."
    code: str | None = None
    """the error body's `code` (e.g. `rate_limit_exceeded`, `insufficient_quota`)"""
    headers: dict[str, str] = field(default_factory=dict)
    """response headers to send with this reply (`Retry-After`, `retry-after-ms`, `x-should-retry`)"""
    garbage: bool = False
    """a chunk that is not JSON"""
    hang: bool = False
    """send headers, then nothing, until the client gives up"""
    stall_after: int | None = None
    """send this many chunks (the first is the role's), then nothing, until the client gives up"""
    usage: dict[str, Any] | None = None
    """token counts to report (`prompt_tokens`, `completion_tokens`, `prompt_tokens_details.cached_tokens`)
    in a last chunk with no choices, when the request asks with `stream_options.include_usage`"""


@dataclass
class Request:
    body: dict[str, Any]
    at: float

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.body.get("messages", [])):
            if message.get("role") == "user":
                return message.get("content") or ""
        return ""


Script = Reply | Callable[[Request], Reply]


class FakeOpenAI:
    def __init__(self) -> None:
        self.script: deque[Script] = deque()
        self.routes: list[tuple[str, deque[Script]]] = []
        """`add_for`: replies by a text their request's last user message contains."""
        self.requests: list[Request] = []
        self.reported_usage: list[dict[str, Any]] = []
        """the usage chunks sent, in order"""
        self.completed = 0
        self.disconnected = 0
        """streams the client closed before the end (Stop, timeouts)"""
        self.default: Callable[[Request], Reply] = lambda r: Reply(text="Answer to: " + r.last_user_text.split("\n", 1)[-1])
        self._runner: web.AppRunner | None = None
        self.port = 0

    def add(self, *replies: Script) -> None:
        self.script.extend(replies)

    def add_for(self, match: str, *replies: Script) -> None:
        """Replies for requests whose last user message contains `match`, in order, ahead of the
        shared script: sessions running in parallel each get their own (then the shared ones)."""
        for pattern, queue in self.routes:
            if pattern == match:
                queue.extend(replies)
                return
        self.routes.append((match, deque(replies)))

    def _next(self, req: Request) -> Script:
        text = req.last_user_text
        for pattern, queue in self.routes:
            if queue and pattern in text:
                return queue.popleft()
        return self.script.popleft() if self.script else self.default

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.base_url

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"error": {"message": "Missing bearer token", "type": "invalid_request_error"}}, status=401)
        body = await request.json()
        req = Request(body, time.monotonic())
        self.requests.append(req)
        item = self._next(req)
        reply = item(req) if callable(item) else item
        if reply.status != 200:
            kind = "requests" if reply.status == 429 else "server_error"
            error = {"message": reply.error, "type": kind, "code": reply.code}
            return web.json_response({"error": error}, status=reply.status, headers=reply.headers)
        if not body.get("stream"):
            if reply.hang:
                await asyncio.sleep(3600)
            await asyncio.sleep(reply.ttft)
            return web.json_response(self._whole(body, reply), headers=reply.headers)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **reply.headers})
        await resp.prepare(request)
        try:
            if reply.hang:
                await asyncio.sleep(3600)
            await asyncio.sleep(reply.ttft)
            for i, chunk in enumerate(self._chunks(body, reply)):
                if i == reply.stall_after:
                    await asyncio.sleep(3600)
                if i and reply.chunk_delay:
                    await asyncio.sleep(reply.chunk_delay)
                await resp.write(b"data: " + chunk.encode() + b"\n\n")
            if reply.usage is not None and (body.get("stream_options") or {}).get("include_usage"):
                usage = {**reply.usage, "total_tokens": reply.usage.get("prompt_tokens", 0)
                         + reply.usage.get("completion_tokens", 0)}
                self.reported_usage.append(usage)
                last = {"id": "chatcmpl-usage", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": body.get("model"), "choices": [], "usage": usage}
                await resp.write(b"data: " + json.dumps(last).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            self.completed += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected += 1
            raise
        return resp

    def _chunks(self, body: dict[str, Any], reply: Reply) -> list[str]:
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model", "fake")}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return json.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        out = [chunk({"role": "assistant", "content": ""})]
        if reply.garbage:
            out.append('{"choices": [ this is not json')
        text = reply.text
        out += [chunk({"content": text[i : i + reply.chunk_chars]}) for i in range(0, len(text), reply.chunk_chars)]
        for index, call in enumerate(reply.tool_calls):
            args = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
            out.append(chunk({"tool_calls": [{"index": index, "id": call.id or f"call_{uuid.uuid4().hex[:8]}",
                                              "type": "function", "function": {"name": call.name, "arguments": ""}}]}))
            out += [chunk({"tool_calls": [{"index": index, "function": {"arguments": args[i : i + 16]}}]})
                    for i in range(0, len(args), 16)]
        out.append(chunk({}, "tool_calls" if reply.tool_calls else "stop"))
        return out

    def _whole(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": c.id or f"call_{uuid.uuid4().hex[:8]}", "type": "function",
                 "function": {"name": c.name,
                              "arguments": c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments)}}
                for c in reply.tool_calls
            ]
        self.completed += 1
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}
