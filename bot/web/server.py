"""The web server: session pages (live over a WebSocket), the sessions list, new sessions,
sign-in with Slack, and health. Thin: it turns what people do into calls on intake and renders
the sessions layer's projection and event stream; no agent logic lives here."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from aiohttp import web

from bot.config import Settings, secret_key
from bot.github.accounts import GitHubAccounts
from bot.sessions.intake import Intake
from bot.sessions.service import SessionService
from bot.store.signin_links import SignInLinks
from bot.util.metrics import CONTENT_TYPE, Metrics
from bot.web import actions, auth, github, pages, stats
from bot.web.context import WebContext
from bot.web.identity import Identity
from bot.web.security import security_headers

STATIC = Path(__file__).with_name("static")
CONTEXT = web.AppKey("context", WebContext)
CHECK_TIMEOUT = 3.0
"""Seconds a readiness check may take before it counts as failing."""

Check = Callable[[], Awaitable[str | None]]
"""A readiness check: None when the part works, else why not (raising counts as failing too)."""


async def run_checks(checks: Mapping[str, Check], timeout: float = CHECK_TIMEOUT) -> tuple[dict[str, str], dict[str, str]]:
    """All checks at once: (failing: name → reason, checks: name → "ok" or the reason)."""

    async def one(check: Check) -> str | None:
        try:
            return await asyncio.wait_for(check(), timeout)
        except TimeoutError:
            return f"no answer within {timeout:g}s"
        except Exception as exc:
            text = str(exc).strip().splitlines()
            return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__

    names = list(checks)
    results = await asyncio.gather(*(one(checks[name]) for name in names))
    failing = {name: reason for name, reason in zip(names, results, strict=True) if reason is not None}
    return failing, {name: failing.get(name, "ok") for name in names}


def build_app(settings: Settings, sessions: SessionService, intake: Intake, links: SignInLinks,
              slack_enabled: bool, accounts: GitHubAccounts, metrics: Metrics | None = None,
              checks: Mapping[str, Check] | None = None) -> web.Application:
    identity = Identity(secret_key(settings), secure=settings.public_url.startswith("https://"))
    ctx = WebContext(settings, sessions, intake, identity, links, slack_enabled)
    # GitHub caps webhook payloads at 25 MB; the pages' own JSON writes are held to far less (actions.MAX_BODY).
    app = web.Application(client_max_size=25 * 1024 * 1024, middlewares=[security_headers])
    app[CONTEXT] = ctx

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "slack": "on" if slack_enabled else "off"})

    async def ready(_: web.Request) -> web.Response:
        failing, results = await run_checks(checks or {})
        return web.json_response({"ok": not failing, "failing": failing, "checks": results},
                                 status=503 if failing else 200)

    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", ready)
    if metrics is not None:
        metrics.refreshers.append(_web_gauges(ctx, metrics))

        async def scrape(_: web.Request) -> web.Response:
            return web.Response(body=await metrics.render(), headers={"Content-Type": CONTENT_TYPE})

        app.router.add_get("/metrics", scrape)
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


def _web_gauges(ctx: WebContext, metrics: Metrics) -> Callable[[], Awaitable[None]]:
    async def refresh() -> None:
        metrics.web_viewers.set(ctx.presence.count())

    return refresh
