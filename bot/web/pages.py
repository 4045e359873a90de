"""The pages: a session (rendered from its projection, then live over the WebSocket), the
sessions list, the new-session form, and sign-in."""

from __future__ import annotations

from aiohttp import web

from bot.events import Origin
from bot.sessions.projection import SessionView
from bot.web.context import WebContext, local_path
from bot.web.identity import Viewer
from bot.web.live import serve_socket
from bot.web.security import same_origin

STATUSES = ("working", "idle")
ORIGIN_LABELS = {Origin.WEB: "web", Origin.SLACK_THREAD: "Slack", Origin.SLACK_DM: "Slack", Origin.APP_HOME: "Slack",
                 Origin.SHORTCUT: "Slack", Origin.PARENT_SESSION: "a parent session", Origin.GITHUB: "GitHub"}


def routes(ctx: WebContext) -> list[web.RouteDef]:
    async def index(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/sessions" if ctx.viewer(request) else "/signin")

    async def session_page(request: web.Request) -> web.Response:
        info = await ctx.session_for(request)
        viewer = ctx.viewer(request)
        token = ctx.identity.request_token(viewer) if viewer else ""
        parent = await ctx.sessions.get(info.parent_id) if info.parent_id else None

        def render(view: SessionView) -> str:
            return ctx.render("session.html", info=info, view=view, turns=list(view.turns.values()), viewer=viewer,
                              parent=parent, children=list(view.children.values()),
                              request_token=token, origin_label=lambda o: ORIGIN_LABELS.get(o, str(o)),
                              pull_requests=ctx.settings.github_app_enabled,
                              next_path=request.path)

        html = await ctx.with_view(info.id, render)
        return web.Response(text=html, content_type="text/html")

    async def session_socket(request: web.Request) -> web.StreamResponse:
        info = await ctx.session_for(request)
        if not same_origin(request, ctx.public_origin):
            raise web.HTTPForbidden(text="Cross-site WebSockets are not accepted.")
        viewer = ctx.viewer(request)

        async def warm(who: Viewer) -> None:
            await ctx.intake.warm(info.id, who.author, "web")

        return await serve_socket(request, ctx.sessions, info.id, viewer, ctx.presence, ctx.encoder, warm)

    async def refused(viewer: Viewer) -> web.Response | None:
        """The lists and forms are for people the access rules let in (a guest signed in by an
        old link sees no one's sessions)."""
        denied = await ctx.intake.access.check_person(viewer.author)
        if denied is None:
            return None
        return await ctx.page("message.html", code=403, viewer=viewer, request_token="", title="Not for you, sorry",
                              text=denied.message)

    async def sessions_list(request: web.Request) -> web.Response:
        viewer = ctx.viewer(request)
        if viewer is None:
            raise web.HTTPFound("/signin?next=/sessions")
        if (denied := await refused(viewer)) is not None:
            return denied
        mine = request.query.get("who", "mine") != "all"
        repos = [r.name for r in ctx.intake.repos_for(viewer.author)]
        repo = request.query.get("repo") or None
        status = request.query.get("status") or None
        if status not in (None, *STATUSES):
            status = None
        allowed = [repo] if repo in repos else ([] if repo else None)
        if not mine and allowed is None and len(ctx.sessions.catalog):
            allowed = repos  # everyone's sessions, on the repositories this person may use
        rows = await ctx.sessions.list_sessions(creator=viewer.user_id if mine else None, repos=allowed, status=status)
        return await ctx.page("sessions.html", viewer=viewer, rows=rows, mine=mine, repos=repos, repo=repo,
                              status=status, statuses=STATUSES, request_token=ctx.identity.request_token(viewer))

    async def new_session(request: web.Request) -> web.Response:
        viewer = ctx.viewer(request)
        if viewer is None:
            raise web.HTTPFound("/signin?next=/new")
        if (denied := await refused(viewer)) is not None:
            return denied
        repos = [r.name for r in ctx.intake.repos_for(viewer.author)]
        return await ctx.page("new.html", viewer=viewer, repos=repos, request_token=ctx.identity.request_token(viewer))

    async def signin(request: web.Request) -> web.Response:
        return await ctx.page("signin.html", viewer=ctx.viewer(request), slack=ctx.slack_enabled,
                              next_path=local_path(request.query.get("next")), request_token="")

    return [
        web.get("/", index),
        web.get("/s/{token}", session_page),
        web.get("/s/{token}/ws", session_socket),
        web.get("/sessions", sessions_list),
        web.get("/new", new_session),
        web.get("/signin", signin),
    ]
