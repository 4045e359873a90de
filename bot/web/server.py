"""The web server: health, and the session page behind each *View session* link.

The live page (WebSocket, prompt box) comes with the web view issue; for now the link shows a
read-only transcript rendered from the session's log.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
from aiohttp import web

from bot.sessions.service import SessionService

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")), autoescape=True
)


def build_app(sessions: SessionService, slack_enabled: bool) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "slack": "on" if slack_enabled else "off"})

    async def session_page(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        info = await sessions.by_share_token(token) if _TOKEN.match(token) else None
        if info is None:
            raise web.HTTPNotFound(text="No such session.")
        view = await sessions.view(info.id)
        html = _templates.get_template("session.html").render(session=info, turns=list(view.turns.values()))
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    app.router.add_get("/healthz", health)
    app.router.add_get("/s/{token}", session_page)
    return app
