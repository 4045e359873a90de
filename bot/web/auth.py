"""Signing in and out: the App Home's single-use link, and Sign in with Slack (OpenID Connect)."""

from __future__ import annotations

import logging

from aiohttp import web

from bot.web.context import WebContext, local_path
from bot.web.identity import Viewer
from bot.web.oidc import SignInFailed
from bot.web.security import same_origin

log = logging.getLogger(__name__)


def routes(ctx: WebContext) -> list[web.RouteDef]:
    async def redeem_link(request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        person = await ctx.links.redeem(token) if 20 <= len(token) <= 100 else None
        if person is None:
            return await ctx.page("message.html", code=404, viewer=ctx.viewer(request), request_token="",
                                  title="This sign-in link has expired",
                                  text="Sign-in links work once and for 10 minutes. Open the app's Home tab in Slack "
                                       "again for a fresh one.")
        response = web.HTTPFound(local_path(request.query.get("next")))
        ctx.identity.sign_in(response, Viewer(person.user_id, person.name, person.team))
        raise response

    async def slack_start(request: web.Request) -> web.StreamResponse:
        if ctx.oidc is None:
            raise web.HTTPNotFound(text="Sign in with Slack is not set up here (SLACK_OIDC_CLIENT_ID).")
        raise ctx.oidc.start(local_path(request.query.get("next")))

    async def slack_callback(request: web.Request) -> web.StreamResponse:
        if ctx.oidc is None:
            raise web.HTTPNotFound()
        try:
            viewer, next_path = await ctx.oidc.finish(request)
        except SignInFailed as exc:
            response = await ctx.page("message.html", code=400, viewer=None, request_token="",
                                      title="Sign-in failed", text=str(exc))
            ctx.oidc.forget_state(response)
            return response
        except Exception:
            log.exception("Sign in with Slack failed")
            return await ctx.page("message.html", code=502, viewer=None, request_token="", title="Sign-in failed",
                                  text="Slack could not be reached to finish signing you in; please try again.")
        redirect = web.HTTPFound(local_path(next_path))
        ctx.oidc.forget_state(redirect)
        ctx.identity.sign_in(redirect, viewer)
        raise redirect

    async def sign_out(request: web.Request) -> web.StreamResponse:
        if not same_origin(request, ctx.public_origin):
            raise web.HTTPForbidden(text="Cross-site requests are not accepted.")
        response = web.HTTPFound("/signin")
        ctx.identity.sign_out(response)
        raise response

    return [
        web.get("/auth/link/{token}", redeem_link),
        web.get("/auth/slack", slack_start),
        web.get("/auth/slack/callback", slack_callback),
        web.post("/auth/signout", sign_out),
    ]
