"""The web server: health, and the session page behind each *View session* link.

The live page (WebSocket, prompt box) comes with the web view issue; for now the link shows a
read-only transcript rendered from the session's log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import jinja2
from aiohttp import web

from bot.sessions.events import Kind
from bot.sessions.service import SessionService

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")), autoescape=True
)


@dataclass
class TurnView:
    author: str
    prompt: str
    text: str = ""
    outcome: str | None = None
    error: str | None = None


def build_app(sessions: SessionService, slack_enabled: bool) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "slack": "on" if slack_enabled else "off"})

    async def session_page(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        info = await sessions.by_share_token(token) if _TOKEN.match(token) else None
        if info is None:
            raise web.HTTPNotFound(text="No such session.")
        turns: dict[int, TurnView] = {}
        for event in sessions.logs.get(info.id).read(0, limit=1_000_000):
            if event.kind is Kind.TURN_STARTED and event.turn is not None:
                turns[event.turn] = TurnView(event.data["author"]["id"], event.data["text"])
            elif event.turn in turns and event.kind is Kind.TEXT_DELTA:
                turns[event.turn].text += event.data["text"]
            elif event.turn in turns and event.kind is Kind.TURN_ENDED:
                turns[event.turn].outcome = event.data["outcome"]
                turns[event.turn].error = event.data.get("error")
        html = _templates.get_template("session.html").render(session=info, turns=list(turns.values()))
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    app.router.add_get("/healthz", health)
    app.router.add_get("/s/{token}", session_page)
    return app
