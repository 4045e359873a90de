"""GitHub on the web: linking a person's account (the App's OAuth flow with state and PKCE), the
*Create PR* button of a session page, and `POST /webhooks/github` (signature checked before the
body is parsed, each delivery applied once)."""

from __future__ import annotations

import logging
import secrets

from aiohttp import web
from itsdangerous import BadSignature

from bot.github.accounts import GitHubAccounts
from bot.github.oauth import GitHubOAuth, OAuthError, pkce_pair
from bot.github.webhooks import BadPayload, parse, signature_ok
from bot.sessions.intake import Refused
from bot.store.pull_requests import PullRequestRecords
from bot.web.context import WebContext

log = logging.getLogger(__name__)

STATE_COOKIE = "ha_github"
STATE_MAX_AGE = 600


def routes(ctx: WebContext, accounts: GitHubAccounts) -> list[web.RouteDef]:
    settings = ctx.settings
    oauth = GitHubOAuth(settings) if settings.github_linking_enabled else None
    state_signer = ctx.identity.signer("github-link")
    records = PullRequestRecords(ctx.sessions.db)
    mention = "@" + (settings.github_app_mention or "hosted-agents")

    async def connect(request: web.Request) -> web.StreamResponse:
        viewer = ctx.viewer(request)
        if viewer is None:
            raise web.HTTPFound("/signin?next=/github/connect")
        if oauth is None:
            return await ctx.page("message.html", code=404, viewer=viewer, request_token="", title="GitHub is not set up",
                                  text="Linking GitHub accounts needs GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET.")
        state = secrets.token_urlsafe(24)
        verifier, challenge = pkce_pair()
        response = web.HTTPFound(oauth.authorize_url(state, challenge))
        response.set_cookie(STATE_COOKIE, state_signer.dumps({"s": state, "v": verifier, "u": viewer.user_id}),
                            max_age=STATE_MAX_AGE, path="/github", httponly=True, samesite="Lax",
                            secure=ctx.identity.secure)
        raise response

    async def callback(request: web.Request) -> web.StreamResponse:
        viewer = ctx.viewer(request)
        if viewer is None or oauth is None:
            raise web.HTTPFound("/signin?next=/github/connect")
        try:
            saved = state_signer.loads(request.cookies.get(STATE_COOKIE, ""), max_age=STATE_MAX_AGE)
        except BadSignature:
            saved = None
        state, code = request.query.get("state", ""), request.query.get("code", "")
        if (not isinstance(saved, dict) or saved.get("u") != viewer.user_id or not code
                or not secrets.compare_digest(str(saved.get("s", "")), state)):
            return await _failed(ctx, viewer, "This link does not match the one we started; connect again.")
        try:
            tokens = await oauth.exchange(code, str(saved["v"]))
            who = await oauth.whoami(tokens.access)
        except OAuthError as exc:
            return await _failed(ctx, viewer, f"GitHub did not link your account: {exc}")
        await accounts.link(viewer.user_id, tokens, who)
        response = await ctx.page("message.html", viewer=viewer, request_token="", title="GitHub connected",
                                  text=f"You are linked as @{who.login}: pull requests you ask for are opened in your name.")
        response.del_cookie(STATE_COOKIE, path="/github")
        return response

    async def create_pull_request(request: web.Request) -> web.Response:
        viewer = ctx.writer(request)
        info = await ctx.session_for(request)
        as_app = request.query.get("as_app") == "1"
        result = await ctx.intake.open_pull_request(info.id, viewer.author, as_app=as_app)
        if isinstance(result, Refused) and result.reason == "not_linked":
            return web.json_response({"ok": False, "reason": result.reason, "connect": "/github/connect",
                                      "error": "Connect your GitHub account first so the PR is yours (Connect GitHub "
                                               "at /github/connect), or open it as the GitHub App."}, status=422)
        if isinstance(result, Refused):
            return web.json_response({"ok": False, "reason": result.reason, "error": result.message}, status=422)
        return web.json_response({"ok": True, "number": result.number, "url": result.url, "created": result.created})

    async def webhook(request: web.Request) -> web.Response:
        if settings.github_webhook_secret is None:
            raise web.HTTPNotFound(text="GitHub webhooks are not set up here (GITHUB_WEBHOOK_SECRET).")
        body = await request.read()
        if not signature_ok(settings.github_webhook_secret.get_secret_value(), body,
                            request.headers.get("X-Hub-Signature-256")):
            raise web.HTTPUnauthorized(text="Bad signature.")
        delivery = request.headers.get("X-GitHub-Delivery", "")
        event = request.headers.get("X-GitHub-Event", "")
        if not delivery or len(delivery) > 64 or not event:
            raise web.HTTPBadRequest(text="X-GitHub-Delivery and X-GitHub-Event are required.")
        try:
            parsed = parse(event, body)
        except BadPayload as exc:
            raise web.HTTPBadRequest(text=f"Unreadable payload ({exc}).") from None
        if parsed is None:
            return web.json_response({"ok": True, "ignored": event})
        if not await records.first_delivery(delivery):
            return web.json_response({"ok": True, "duplicate": True})
        try:
            await ctx.intake.github_event(parsed, mention)
        except Exception:
            await records.forget_delivery(delivery)  # GitHub's redelivery is applied again
            log.exception("applying GitHub delivery %s (%s) failed", delivery, event)
            raise web.HTTPInternalServerError(text="Could not apply the delivery.") from None
        return web.json_response({"ok": True})

    return [
        web.get("/github/connect", connect),
        web.get("/github/callback", callback),
        web.post("/s/{token}/pull-request", create_pull_request),
        web.post("/webhooks/github", webhook),
    ]


async def _failed(ctx: WebContext, viewer: object, text: str) -> web.Response:
    return await ctx.page("message.html", code=400, viewer=viewer, request_token="", title="GitHub not connected", text=text)
