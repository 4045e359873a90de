"""Who is looking at a page: a signed cookie set by a Slack sign-in, and the key that signs it.

The cookie holds the person's Slack id, name and team, signed (not encrypted: nothing in it is
secret) with SECRET_KEY; it is HttpOnly, SameSite=Lax, and Secure when PUBLIC_URL is https.
State-changing requests also carry a token derived from the key and the person (double submit:
a page of another site can neither read it nor forge it).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web
from itsdangerous import BadSignature, URLSafeTimedSerializer

from bot.events import Author, Origin

COOKIE = "ha_session"
SESSION_MAX_AGE = 30 * 86400
"""Seconds a sign-in lasts."""
_ID_SHAPE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in person (their Slack identity)."""

    user_id: str
    name: str | None = None
    team: str | None = None

    @property
    def author(self) -> Author:
        return Author(id=self.user_id, name=self.name, origin=Origin.WEB, team=self.team)

    @property
    def display(self) -> str:
        return self.name or self.user_id


class Identity:
    """Reads and writes the sign-in cookie; makes and checks the per-person request token."""

    def __init__(self, key: bytes, secure: bool):
        self._key = key
        self._signer = URLSafeTimedSerializer(key, salt="hosted-agents.web-session")
        self.secure = secure

    def viewer(self, request: web.Request) -> Viewer | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data = self._signer.loads(raw, max_age=SESSION_MAX_AGE)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not _is_id(data.get("u")):
            return None
        name, team = data.get("n"), data.get("t")
        return Viewer(str(data["u"]), name if isinstance(name, str) else None, team if isinstance(team, str) else None)

    def sign_in(self, response: web.StreamResponse, viewer: Viewer) -> None:
        value = self._signer.dumps({"u": viewer.user_id, "n": viewer.name, "t": viewer.team})
        response.set_cookie(COOKIE, value, max_age=SESSION_MAX_AGE, path="/", httponly=True, samesite="Lax",
                            secure=self.secure)

    def sign_out(self, response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/")

    def request_token(self, viewer: Viewer) -> str:
        """What a page of ours sends back with every write (the `X-Request-Token` header)."""
        return hmac.new(self._key, f"request:{viewer.user_id}".encode(), hashlib.sha256).hexdigest()

    def check_request_token(self, viewer: Viewer, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.request_token(viewer), token or "")

    def signer(self, purpose: str) -> URLSafeTimedSerializer:
        """A serializer of short-lived values for one purpose (e.g. the OIDC state cookie)."""
        return URLSafeTimedSerializer(self._key, salt=f"hosted-agents.{purpose}")


def _is_id(value: object) -> bool:
    return isinstance(value, str) and 2 <= len(value) <= 32 and set(value) <= _ID_SHAPE
