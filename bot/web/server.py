"""The web server: session pages (live over a WebSocket), the sessions list, new sessions,
sign-in with Slack, and health. Thin: it turns what people do into calls on intake and renders
the sessions layer's projection and event stream; no agent logic lives here."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from bot.config import Settings, secret_key
from bot.github.accounts import GitHubAccounts
from bot.sessions.intake import Intake
from bot.sessions.service import SessionService
from bot.store.signin_links import SignInLinks
from bot.web import actions, auth, github, pages, stats
from bot.web.context import WebContext
from bot.web.identity import Identity
from bot.web.security import security_headers

STATIC = Path(__file__).with_name("static")
CONTEXT = web.AppKey("context", WebContext)


def build_app(settings: Settings, sessions: SessionService, intake: Intake, links: SignInLinks,
              slack_enabled: bool, accounts: GitHubAccounts) -> web.Application:
    identity = Identity(secret_key(settings), secure=settings.public_url.startswith("https://"))
    ctx = WebContext(settings, sessions, intake, identity, links, slack_enabled)
    # GitHub caps webhook payloads at 25 MB; the pages' own JSON writes are held to far less (actions.MAX_BODY).
    app = web.Application(client_max_size=25 * 1024 * 1024, middlewares=[security_headers])
    app[CONTEXT] = ctx

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "slack": "on" if slack_enabled else "off"})

    app.router.add_get("/healthz", health)
    app.add_routes(pages.routes(ctx))
    app.add_routes(actions.routes(ctx))
    app.add_routes(auth.routes(ctx))
    app.add_routes(github.routes(ctx, accounts))
    app.add_routes(stats.routes(ctx))
    app.router.add_static("/static/", STATIC, follow_symlinks=False, append_version=False)

    async def close_sockets(_: web.Application) -> None:
        await ctx.presence.close_all()

    app.on_shutdown.append(close_sockets)
    return app
