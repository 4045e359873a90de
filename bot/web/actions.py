"""What signed-in people do from the pages: prompt, stop, clear the queue, start a session, pick
its repository, and the keystroke on the new-session page that warms a sandbox (on a session's
page, typing goes over its WebSocket). Each is a call on intake, which applies
the same access rules as in Slack; each request is checked for origin, sign-in and the page's
request token first (`WebContext.writer`). Answers are JSON: `{"ok": true, ...}` or
`{"ok": false, "error": "what to tell the person"}`.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from bot.sessions.intake import Held, Hints, Refused, Request, Started
from bot.web.context import WebContext

MAX_BODY = 256 * 1024


def routes(ctx: WebContext) -> list[web.RouteDef]:
    async def prompt(request: web.Request) -> web.Response:
        viewer = ctx.writer(request)
        info = await ctx.session_for(request)
        body = await _body(request)
        result = await ctx.intake.submit(Request(_text(body), viewer.author, session_id=info.id))
        if isinstance(result, Refused):
            return _refused(result)
        assert isinstance(result, Started)
        return web.json_response({"ok": True, "prompt_id": result.prompt.id})

    async def stop(request: web.Request) -> web.Response:
        viewer = ctx.writer(request)
        info = await ctx.session_for(request)
        refused = await ctx.intake.stop(info.id, viewer.author)
        return _refused(refused) if refused else web.json_response({"ok": True})

    async def clear_queue(request: web.Request) -> web.Response:
        viewer = ctx.writer(request)
        info = await ctx.session_for(request)
        result = await ctx.intake.clear_queue(info.id, viewer.author)
        return _refused(result) if isinstance(result, Refused) else web.json_response({"ok": True, "cleared": result})

    async def create(request: web.Request) -> web.Response:
        viewer = ctx.writer(request)
        body = await _body(request)
        repo = body.get("repo") or None
        if repo is not None and not isinstance(repo, str):
            raise web.HTTPBadRequest(text="repo must be a repository name")
        result = await ctx.intake.submit(Request(_text(body), viewer.author, hints=Hints(repo=repo)))
        return _started_or_held(ctx, result)

    async def pick(request: web.Request) -> web.Response:
        viewer = ctx.writer(request)
        body = await _body(request)
        held, repo = body.get("held"), body.get("repo")
        if not isinstance(held, str) or not isinstance(repo, str):
            raise web.HTTPBadRequest(text="held and repo are required")
        return _started_or_held(ctx, await ctx.intake.pick(held, repo, viewer.author))

    async def typing_new(request: web.Request) -> web.Response:
        viewer = ctx.writer(request)
        repo = (await _body(request)).get("repo")
        warmed = isinstance(repo, str) and ctx.intake.warm_repo(repo, viewer.author)
        return web.json_response({"ok": True, "warmed": warmed})

    return [
        web.post("/s/{token}/prompt", prompt),
        web.post("/s/{token}/stop", stop),
        web.post("/s/{token}/clear", clear_queue),
        web.post("/new", create),
        web.post("/new/pick", pick),
        web.post("/new/typing", typing_new),
    ]


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length or len(raw))
    try:
        body = json.loads(raw.decode("utf-8", "replace") or "{}")
    except ValueError:
        raise web.HTTPBadRequest(text="The request body must be JSON.") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="The request body must be a JSON object.")
    return body


def _text(body: dict[str, Any]) -> str:
    text = body.get("text", "")
    if not isinstance(text, str):
        raise web.HTTPBadRequest(text="text must be a string")
    return text


def _refused(refused: Refused) -> web.Response:
    return web.json_response({"ok": False, "reason": refused.reason, "error": refused.message}, status=422)


def _started_or_held(ctx: WebContext, result: Started | Held | Refused) -> web.Response:
    if isinstance(result, Refused):
        return _refused(result)
    if isinstance(result, Held):
        return web.json_response({"ok": True, "held": result.id, "likely": list(result.likely), "repos": list(result.repos),
                                  "minutes": max(1, round(result.ttl / 60))})
    return web.json_response({"ok": True, "url": f"/s/{result.session.share_token}"})
