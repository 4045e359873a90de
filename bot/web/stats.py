"""`/stats`: is it paying off (signed in), its numbers at stable URLs (`/stats.json`, `/stats.csv`,
`?days=N`), and the live count of humans prompting (`/stats/humans.json`, polled by the page)."""

from __future__ import annotations

import csv
import io

from aiohttp import web

from bot.sessions.stats import Stats, compute, humans_prompting
from bot.web.context import WebContext

MAX_DAYS = 366


def routes(ctx: WebContext) -> list[web.RouteDef]:
    def signed_in(request: web.Request) -> None:
        if ctx.viewer(request) is None:
            raise web.HTTPFound("/signin?next=/stats") if request.path == "/stats" else web.HTTPUnauthorized(
                text="Sign in with Slack to see the stats.")

    def days(request: web.Request) -> int:
        try:
            value = int(request.query.get("days", "30"))
        except ValueError:
            raise web.HTTPBadRequest(text="days must be a whole number") from None
        if not 1 <= value <= MAX_DAYS:
            raise web.HTTPBadRequest(text=f"days must be 1 to {MAX_DAYS}")
        return value

    async def page(request: web.Request) -> web.Response:
        signed_in(request)
        stats = await compute(ctx.sessions.db, days(request))
        return await ctx.page("stats.html", viewer=ctx.viewer(request), request_token="", stats=stats,
                              chart=_chart(stats))

    async def as_json(request: web.Request) -> web.Response:
        signed_in(request)
        return web.json_response((await compute(ctx.sessions.db, days(request))).as_json())

    async def as_csv(request: web.Request) -> web.Response:
        signed_in(request)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["figure", "key", "value"])
        writer.writerows((await compute(ctx.sessions.db, days(request))).as_rows())
        return web.Response(text=out.getvalue(), content_type="text/csv")

    async def humans(request: web.Request) -> web.Response:
        signed_in(request)
        return web.json_response({"humans_prompting": await humans_prompting(ctx.sessions.db)})

    return [web.get("/stats", page), web.get("/stats.json", as_json), web.get("/stats.csv", as_csv),
            web.get("/stats/humans.json", humans)]


def _chart(stats: Stats, width: int = 720, height: int = 160) -> list[dict[str, float | str | int]]:
    """Bars of sessions per day, with the share that reached a PR and a merge (heights in px)."""
    days = list(stats.per_day.items())
    top = max((d.sessions for _, d in days), default=0) or 1
    step = width / max(1, len(days))
    bars: list[dict[str, float | str | int]] = []
    for i, (day, split) in enumerate(days):
        bars.append({"x": round(i * step, 1), "w": round(max(1.0, step - 2), 1), "day": day, "sessions": split.sessions,
                     "with_pr": split.with_pr, "merged": split.merged,
                     "h": round(split.sessions / top * height, 1), "h_pr": round(split.with_pr / top * height, 1),
                     "h_merged": round(split.merged / top * height, 1)})
    return bars
