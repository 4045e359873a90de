"""Sign in with Slack (OpenID Connect): Slack says who the person is; we set our cookie.

`/auth/slack` sends the browser to Slack's authorize page with a fresh `state` and `nonce`,
kept in a short-lived signed cookie; `/auth/slack/callback` checks the state, exchanges the
code with `openid.connect.token` (through the same Slack API base URL the bot uses), checks the
ID token's nonce and audience, and reads the person with `openid.connect.userInfo`. The ID
token comes straight from Slack's token endpoint over TLS, which is what vouches for it (OpenID
Connect Core 3.1.3.7), so its signature is not checked again here.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from itsdangerous import BadSignature
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.web.identity import Identity, Viewer

STATE_COOKIE = "ha_oidc"
STATE_MAX_AGE = 600
CALLBACK = "/auth/slack/callback"


class SignInFailed(Exception):
    """Sign-in did not complete; the message is for the person."""


class SlackSignIn:
    def __init__(self, settings: Settings, identity: Identity):
        assert settings.slack_oidc_client_secret is not None
        self.settings = settings
        self.identity = identity
        self.client_id = settings.slack_oidc_client_id
        self._secret = settings.slack_oidc_client_secret.get_secret_value()
        self.redirect_uri = settings.public_url + CALLBACK
        self._state = identity.signer("oidc-state")
        self._client = AsyncWebClient(base_url=settings.slack_api_url)

    def start(self, next_path: str) -> web.HTTPFound:
        """The redirect to Slack's authorize page, with the state cookie that the callback checks."""
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        query = urlencode({"response_type": "code", "scope": "openid profile email", "client_id": self.client_id,
                           "state": state, "nonce": nonce, "redirect_uri": self.redirect_uri})
        response = web.HTTPFound(f"{self.settings.slack_oidc_authorize_url}?{query}")
        response.set_cookie(STATE_COOKIE, self._state.dumps({"s": state, "n": nonce, "next": next_path}),
                            max_age=STATE_MAX_AGE, path="/auth/slack", httponly=True, samesite="Lax",
                            secure=self.identity.secure)
        return response

    async def finish(self, request: web.Request) -> tuple[Viewer, str]:
        """The signed-in person and where they were going, or SignInFailed."""
        try:
            saved = self._state.loads(request.cookies.get(STATE_COOKIE, ""), max_age=STATE_MAX_AGE)
        except BadSignature:
            raise SignInFailed("This sign-in took too long or was started elsewhere; please start again.") from None
        if request.query.get("error"):
            raise SignInFailed("Slack did not sign you in (the request was declined).")
        state, code = request.query.get("state", ""), request.query.get("code", "")
        if not isinstance(saved, dict) or not secrets.compare_digest(str(saved.get("s", "")), state) or not code:
            raise SignInFailed("This sign-in link does not match the one we started; please start again.")
        try:
            token = await self._client.openid_connect_token(client_id=self.client_id, client_secret=self._secret,
                                                            code=code, redirect_uri=self.redirect_uri)
            claims = _claims(str(token.get("id_token", "")))
            if claims.get("nonce") != saved.get("n") or not _audience_ok(claims.get("aud"), self.client_id):
                raise SignInFailed("Slack's answer was not for this sign-in; please start again.")
            person = AsyncWebClient(token=str(token["access_token"]), base_url=self.settings.slack_api_url)
            info = await person.openid_connect_userInfo()
        except SlackApiError as exc:
            raise SignInFailed(f"Slack refused the sign-in ({exc.response.get('error')}).") from None
        user = info.get("https://slack.com/user_id") or claims.get("https://slack.com/user_id")
        if not isinstance(user, str) or not user:
            raise SignInFailed("Slack did not say who you are.")
        name = info.get("name") or info.get("given_name")
        team = info.get("https://slack.com/team_id") or claims.get("https://slack.com/team_id")
        viewer = Viewer(user, name if isinstance(name, str) else None, team if isinstance(team, str) else None)
        return viewer, str(saved.get("next") or "/sessions")

    def forget_state(self, response: web.StreamResponse) -> None:
        response.del_cookie(STATE_COOKIE, path="/auth/slack")


def _claims(id_token: str) -> dict[str, Any]:
    """The payload of a JWT (header.payload.signature)."""
    parts = id_token.split(".")
    if len(parts) != 3:
        raise SignInFailed("Slack's answer had no usable ID token.")
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        raise SignInFailed("Slack's answer had no usable ID token.") from None
    if not isinstance(payload, dict):
        raise SignInFailed("Slack's answer had no usable ID token.")
    return payload


def _audience_ok(aud: Any, client_id: str) -> bool:
    return aud == client_id or (isinstance(aud, list) and client_id in aud)
