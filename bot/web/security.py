"""Headers every page gets, and the check every write and WebSocket passes: same origin only.

Session links carry their share token in the path, so pages send no referrer; nothing is
framed; scripts come from our own files only (no inline script), so text that slipped into
the page as markup still could not run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _apply(exc)
        raise
    if not response.prepared:  # a WebSocket is already under way; its upgrade needs none
        _apply(response)
    return response


def _apply(response: web.StreamResponse) -> None:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: web.Request, public_origin: str) -> bool:
    """The request comes from one of our own pages: its `Origin` is PUBLIC_URL's, or the very host it
    was sent to (a deployment reached by another name). Browsers send `Origin` on every POST and
    WebSocket; a request without it is not from a page of ours."""
    origin = request.headers.get("Origin", "").lower()
    if not origin or origin == "null":
        return False
    return origin == public_origin or origin == f"{request.scheme}://{request.host}".lower()
