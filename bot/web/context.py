"""What every web handler shares: the sessions layer, who is asking, the session a link names,
and rendering off the event loop."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from cachetools import LRUCache
from markupsafe import Markup

from bot.config import Settings
from bot.sessions.intake import Intake
from bot.sessions.projection import SessionView
from bot.sessions.service import SessionInfo, SessionService
from bot.store.signin_links import SignInLinks
from bot.web.identity import Identity, Viewer
from bot.web.live import EventEncoder, Presence
from bot.web.markdown import render as render_markdown
from bot.web.oidc import SlackSignIn
from bot.web.security import origin_of, same_origin

TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
TOKEN_HEADER = "X-Request-Token"
VIEWS_KEPT = 32
"""Session projections kept current in memory for page loads (the most recently opened)."""

templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")), autoescape=True,
    undefined=jinja2.StrictUndefined,
)
templates.filters["markdown"] = lambda text: Markup(render_markdown(text or ""))


@dataclass
class _CachedView:
    view: SessionView = field(default_factory=SessionView)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class WebContext:
    def __init__(self, settings: Settings, sessions: SessionService, intake: Intake, identity: Identity,
                 links: SignInLinks, slack_enabled: bool):
        self.settings = settings
        self.sessions = sessions
        self.intake = intake
        self.identity = identity
        self.links = links
        self.slack_enabled = slack_enabled
        self.oidc = SlackSignIn(settings, identity) if settings.oidc_enabled else None
        self.presence = Presence()
        self.encoder = EventEncoder()
        self.public_origin = origin_of(settings.public_url)
        self._views: LRUCache[str, _CachedView] = LRUCache(VIEWS_KEPT)

    def viewer(self, request: web.Request) -> Viewer | None:
        return self.identity.viewer(request)

    async def session_for(self, request: web.Request) -> SessionInfo:
        """The session the link's share token names; 404 for a missing or wrong token (the token
        is compared in constant time by the sessions layer)."""
        token = request.match_info.get("token", "")
        info = await self.sessions.by_share_token(token) if TOKEN_SHAPE.match(token) else None
        if info is None:
            raise web.HTTPNotFound(text="No such session.")
        return info

    def writer(self, request: web.Request) -> Viewer:
        """The signed-in person making a change from one of our pages; anything else is refused."""
        if not same_origin(request, self.public_origin):
            raise web.HTTPForbidden(text="Cross-site requests are not accepted.")
        viewer = self.viewer(request)
        if viewer is None:
            raise web.HTTPUnauthorized(text="Sign in with Slack to do that.")
        if not self.identity.check_request_token(viewer, request.headers.get(TOKEN_HEADER)):
            raise web.HTTPForbidden(text="This page is out of date; reload it and try again.")
        return viewer

    async def with_view(self, session_id: str, use: Any) -> Any:
        """Run `use(view)` in a thread on the session's projection, brought up to date first. The
        projection is kept between loads, so a reload reads only what is new."""
        cached = self._views.get(session_id)
        if cached is None:
            cached = self._views[session_id] = _CachedView()
        async with cached.lock:
            await self.sessions.refresh(session_id, cached.view)
            return await asyncio.to_thread(use, cached.view)

    async def page(self, name: str, code: int = 200, **context: Any) -> web.Response:
        html = await asyncio.to_thread(self.render, name, **context)
        return web.Response(text=html, status=code, content_type="text/html")

    def render(self, name: str, **context: Any) -> str:
        return templates.get_template(name).render(settings=self.settings, oidc=self.oidc is not None, **context)


def local_path(value: str | None, default: str = "/sessions") -> str:
    """A redirect target that stays on this site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value
