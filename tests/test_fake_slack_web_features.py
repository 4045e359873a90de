"""The Slack fake's App Home, link unfurling, Sign in with Slack and users.info, driven by the real slack-sdk client.

No app is connected: a plain websocket client opens Socket Mode the way an app would and reads the envelopes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack import FakeSlack

ALICE = "U0ALICE1"
REDIRECT = "http://agents.test/auth/slack/callback"
HOME = {
    "type": "home",
    "callback_id": "home",
    "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": "*Your sessions*"}},
        {"type": "actions", "block_id": "controls", "elements": [
            {"type": "button", "action_id": "new_session", "text": {"type": "plain_text", "text": "New session"},
             "value": "new"}]},
        {"type": "section", "text": {"type": "mrkdwn", "text": "api: fix login"},
         "accessory": {"type": "button", "action_id": "open_s1", "text": {"type": "plain_text", "text": "Open"}, "value": "s1"}},
    ],
}


def bot(slack: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)


async def slack_error(call: Any) -> str:
    with pytest.raises(SlackApiError) as raised:
        await call
    return str(raised.value.response["error"])


@asynccontextmanager
async def app_socket(slack: FakeSlack) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """Socket Mode as an app opens it: apps.connections.open, then the URL it answers, then `hello`."""
    url = (await AsyncWebClient(base_url=slack.api_url).apps_connections_open(app_token=slack.app_token))["url"]
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        yield ws


async def envelope(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next envelope, acknowledged as an app would."""
    env = await ws.receive_json(timeout=5)
    await ws.send_json({"envelope_id": env["envelope_id"]})
    return env


# -- App Home --------------------------------------------------------------------------------


async def test_views_publish_keeps_each_persons_home_view(slack: FakeSlack):
    answer = await bot(slack).views_publish(user_id=ALICE, view=HOME)
    view = answer["view"]
    assert answer["ok"] and view["type"] == "home" and view["id"].startswith("V")
    assert view["team_id"] == slack.team_id and view["callback_id"] == "home" and view["hash"]
    assert all(b["block_id"] for b in view["blocks"]), "Slack gives every block a block_id"
    assert slack.home_views[ALICE] == view
    assert set(slack.home_buttons(ALICE)) == {"new_session", "open_s1"}
    assert slack.home_buttons("U0BOB001") == {}

    # the view as a JSON string in a form body (what the method docs describe), with the current hash
    again = await bot(slack).api_call("views.publish", data={
        "user_id": ALICE, "view": json.dumps({**HOME, "blocks": HOME["blocks"][:1]}), "hash": view["hash"]})
    assert again["view"]["id"] == view["id"], "one Home view per person, updated in place"
    assert slack.home_buttons(ALICE) == {}
    assert [c.method for c in slack.calls] == ["views.publish", "views.publish"]
    # a hash from before that update no longer matches
    assert await slack_error(bot(slack).views_publish(user_id=ALICE, view=HOME, hash=view["hash"])) == "hash_conflict"


@pytest.mark.parametrize("view", [
    {**HOME, "type": "modal"},
    {"type": "home"},
    {"type": "home", "blocks": [{"type": "divider"}] * 101},
    {"type": "home", "blocks": [{"type": "carousel"}]},
    {"type": "home", "blocks": ["not a block"]},
    {**HOME, "private_metadata": "x" * 3001},
])
async def test_views_publish_refuses_what_slack_refuses(slack: FakeSlack, view: dict[str, Any]):
    with pytest.raises(SlackApiError) as raised:
        await bot(slack).views_publish(user_id=ALICE, view=view)
    assert raised.value.response["error"] == "invalid_arguments"
    assert raised.value.response["response_metadata"]["messages"]
    assert ALICE not in slack.home_views


async def test_views_publish_checks_the_user_and_the_token(slack: FakeSlack):
    assert await slack_error(bot(slack).views_publish(user_id="C0000001", view=HOME)) == "invalid_arguments"
    stranger = AsyncWebClient(token="xoxb-wrong", base_url=slack.api_url)
    assert await slack_error(stranger.views_publish(user_id=ALICE, view=HOME)) == "invalid_auth"
    ok = await bot(slack).views_publish(user_id=ALICE, view={"type": "home", "blocks": [{"type": "divider"}] * 100})
    assert len(ok["view"]["blocks"]) == 100


async def test_opening_the_home_and_clicking_in_it(slack: FakeSlack):
    async with app_socket(slack) as ws:
        await slack.open_home(ALICE)
        env = await envelope(ws)
        assert env["type"] == "events_api"
        event = env["payload"]["event"]
        assert event["type"] == "app_home_opened" and event["user"] == ALICE and event["tab"] == "home"
        assert event["channel"].startswith("D") and event["event_ts"]
        assert "view" not in event, "no view before one was published"

        view = (await bot(slack).views_publish(user_id=ALICE, view=HOME))["view"]
        await slack.open_home(ALICE)
        assert (await envelope(ws))["payload"]["event"]["view"] == view
        await slack.open_home(ALICE, tab="messages")
        assert "view" not in (await envelope(ws))["payload"]["event"]

        envelope_id = await slack.click_home(ALICE, "new_session")
        env = await envelope(ws)
        assert env["envelope_id"] == envelope_id and env["type"] == "interactive"
        payload = env["payload"]
        assert payload["type"] == "block_actions" and payload["user"]["id"] == ALICE
        assert payload["container"] == {"type": "view", "view_id": view["id"]}
        assert payload["view"] == view and payload["trigger_id"]
        assert not {"channel", "message", "response_url"} & set(payload)
        (action,) = payload["actions"]
        assert action["action_id"] == "new_session" and action["block_id"] == "controls" and action["value"] == "new"

        await slack.click_home(ALICE, "open_s1")  # a section's accessory button
        (action,) = (await envelope(ws))["payload"]["actions"]
        assert action["value"] == "s1" and action["block_id"] == view["blocks"][2]["block_id"]
    assert len(slack.sent_envelopes) == 5 and set(slack.acks) == {e for e, _ in slack.sent_envelopes}


# -- link unfurling --------------------------------------------------------------------------


async def test_a_shared_link_is_announced_and_unfurled(slack: FakeSlack):
    url = "https://agents.test/s/abc123"
    async with app_socket(slack) as ws:
        ts = await slack.share_link(ALICE, url)
        message = (await envelope(ws))["payload"]["event"]
        assert message["type"] == "message" and message["ts"] == ts and url in message["text"]
        assert "<@" not in message["text"], "no bot mention"
        shared = (await envelope(ws))["payload"]["event"]
    assert shared["type"] == "link_shared" and shared["channel"] == "C0000001" and shared["user"] == ALICE
    assert shared["message_ts"] == ts and shared["is_bot_user_member"] is True
    assert shared["links"] == [{"domain": "agents.test", "url": url}]
    assert shared["source"] == "conversations_history" and shared["unfurl_id"] and shared["event_ts"]
    assert "thread_ts" not in shared

    preview = {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*api: fix login* (running)"}}]}
    assert (await bot(slack).chat_unfurl(channel="C0000001", ts=ts, unfurls={url: preview}))["ok"]
    assert slack.unfurls[-1]["channel"] == "C0000001" and slack.unfurls[-1]["ts"] == ts
    assert slack.unfurls[-1]["unfurls"] == {url: preview}

    # by unfurl_id and source, with `unfurls` as the URL-encoded JSON string of a form body
    legacy = {"title": "api: fix login", "text": "Done", "title_link": url}
    answer = await bot(slack).api_call("chat.unfurl", data={
        "unfurl_id": shared["unfurl_id"], "source": "conversations_history", "unfurls": json.dumps({url: legacy})})
    assert answer["ok"] and slack.unfurls[-1]["unfurls"] == {url: legacy}
    assert slack.messages[("C0000001", ts)].unfurls == {url: legacy}, "a later unfurl replaces the attachment"


async def test_chat_unfurl_refuses_what_slack_refuses(slack: FakeSlack):
    url = "https://agents.test/s/abc123"
    async with app_socket(slack):
        ts = await slack.share_link(ALICE, url, thread_ts="1700000000.000100")
        plain = await slack.user_message(ALICE, "see <https://agents.test/s/other>")
    preview = {"title": "session"}

    def unfurl(**kwargs: Any) -> Any:
        return bot(slack).chat_unfurl(**kwargs)

    # a URL no link_shared event announced for that message
    assert await slack_error(unfurl(channel="C0000001", ts=plain, unfurls={"https://agents.test/s/other": preview})) \
        == "cannot_unfurl_url"
    # a URL the message does not hold
    assert await slack_error(unfurl(channel="C0000001", ts=ts, unfurls={"https://agents.test/s/zzz": preview})) \
        == "cannot_unfurl_message"
    # not a map of URL -> attachment
    for bad in ("not json", json.dumps([url]), json.dumps({url: "just text"})):
        answer = bot(slack).api_call("chat.unfurl", data={"channel": "C0000001", "ts": ts, "unfurls": bad})
        assert await slack_error(answer) == "invalid_unfurls_format"
    assert await slack_error(unfurl(channel="C0000001", ts=ts, unfurls={url: {"blocks": [{"type": "nope"}]}})) \
        == "cannot_parse_attachment"
    assert await slack_error(unfurl(channel="C0000001", ts=ts)) == "missing_unfurls"
    assert await slack_error(unfurl(ts=ts, unfurls={url: preview})) == "missing_channel"
    assert await slack_error(unfurl(channel="C0000001", ts="1.000001", unfurls={url: preview})) == "cannot_find_message"
    assert await slack_error(unfurl(unfurl_id="nope", source="conversations_history", unfurls={url: preview})) \
        == "cannot_unfurl_url"
    slack.unfurl_blocked_domains.add("agents.test")
    assert await slack_error(unfurl(channel="C0000001", ts=ts, unfurls={url: preview})) == "cannot_unfurl_url"
    assert slack.unfurls == []


# -- Sign in with Slack (OpenID Connect) -----------------------------------------------------


async def authorize(slack: FakeSlack, **overrides: str) -> aiohttp.ClientResponse:
    params = {"response_type": "code", "scope": "openid email profile", "client_id": slack.oidc_client_id,
              "state": "st-123", "nonce": "n-456", "redirect_uri": REDIRECT, **overrides}
    async with aiohttp.ClientSession() as session, \
            session.get(slack.oidc_authorize_url, params=params, allow_redirects=False) as response:
        await response.read()
        return response


def redirected(response: aiohttp.ClientResponse) -> dict[str, str]:
    assert response.status == 302
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def decode_jwt(token: str, key: str) -> dict[str, Any]:
    header, payload, signature = token.split(".")

    def unb64(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    assert json.loads(unb64(header)) == {"alg": "HS256", "typ": "JWT"}
    expected = hmac.new(key.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(unb64(signature), expected), "signed HS256 with the client secret"
    return dict(json.loads(unb64(payload)))


async def test_sign_in_with_slack(slack: FakeSlack):
    slack.users[ALICE] = {"real_name": "Alice Liddell", "name": "alice"}
    back = redirected(await authorize(slack))
    assert back["state"] == "st-123" and back["code"]

    client = AsyncWebClient(base_url=slack.api_url)  # no token: the client credentials go as HTTP Basic
    tokens = await client.openid_connect_token(client_id=slack.oidc_client_id, client_secret=slack.oidc_client_secret,
                                               code=back["code"], redirect_uri=REDIRECT, grant_type="authorization_code")
    assert tokens["ok"] and tokens["token_type"] == "Bearer" and tokens["access_token"].startswith("xoxp-")
    claims = decode_jwt(tokens["id_token"], slack.oidc_client_secret)
    assert claims["iss"] == "https://slack.com" and claims["sub"] == ALICE and claims["aud"] == slack.oidc_client_id
    assert claims["iat"] <= claims["auth_time"] + 1 and claims["exp"] > claims["iat"]
    assert claims["nonce"] == "n-456" and claims["at_hash"]
    assert claims["https://slack.com/user_id"] == ALICE and claims["https://slack.com/team_id"] == slack.team_id
    assert claims["email"] == "alice@fake.slack.test" and claims["email_verified"] is True
    assert claims["name"] == "Alice Liddell" and claims["given_name"] == "Alice" and claims["picture"]

    # the code was used up
    assert await slack_error(client.openid_connect_token(
        client_id=slack.oidc_client_id, client_secret=slack.oidc_client_secret, code=back["code"], redirect_uri=REDIRECT,
    )) == "invalid_code"

    me = await AsyncWebClient(token=tokens["access_token"], base_url=slack.api_url).openid_connect_userInfo()
    assert me["ok"] and me["sub"] == ALICE and me["https://slack.com/user_id"] == ALICE
    assert me["https://slack.com/team_id"] == slack.team_id and me["https://slack.com/team_name"]
    assert me["email"] == "alice@fake.slack.test" and me["email_verified"] is True
    assert me["name"] == "Alice Liddell" and me["given_name"] == "Alice" and me["picture"]


async def test_openid_connect_token_refuses_what_slack_refuses(slack: FakeSlack):
    client = AsyncWebClient(base_url=slack.api_url)
    cid, secret = slack.oidc_client_id, slack.oidc_client_secret
    code = redirected(await authorize(slack))["code"]
    other = "http://elsewhere.test/callback"
    assert await slack_error(client.openid_connect_token(cid, secret, code=code, redirect_uri=other)) == "bad_redirect_uri"
    assert await slack_error(client.openid_connect_token(cid, secret, code=code)) == "bad_redirect_uri"
    assert await slack_error(client.openid_connect_token(cid, "wrong", code=code, redirect_uri=REDIRECT)) \
        == "bad_client_secret"
    assert await slack_error(client.openid_connect_token("9999.9999", secret, code=code, redirect_uri=REDIRECT)) \
        == "invalid_client_id"
    assert await slack_error(client.openid_connect_token(cid, secret, code="made-up", redirect_uri=REDIRECT)) \
        == "invalid_code"
    assert await slack_error(client.openid_connect_token(cid, secret, code=code, redirect_uri=REDIRECT,
                                                         grant_type="password")) == "invalid_grant_type"
    # none of those used the code up; the client credentials may also come as form fields
    answer = await client.api_call("openid.connect.token", data={
        "client_id": cid, "client_secret": secret, "code": code, "redirect_uri": REDIRECT})
    claims = decode_jwt(answer["id_token"], secret)
    assert claims["name"] == "Alice", "a default name when users has none"

    slack.oidc_code_ttl = 0.0
    late = redirected(await authorize(slack))["code"]
    assert await slack_error(client.openid_connect_token(cid, secret, code=late, redirect_uri=REDIRECT)) == "invalid_code"


async def test_the_authorize_endpoint(slack: FakeSlack):
    slack.oidc_user = "U0BOB001"
    only_openid = redirected(await authorize(slack, scope="openid", nonce="", state="s2"))
    answer = await AsyncWebClient(base_url=slack.api_url).openid_connect_token(
        slack.oidc_client_id, slack.oidc_client_secret, code=only_openid["code"], redirect_uri=REDIRECT)
    claims = decode_jwt(answer["id_token"], slack.oidc_client_secret)
    assert claims["sub"] == "U0BOB001" and "email" not in claims and "name" not in claims, "claims follow the scopes"
    assert slack.calls_to("openid.connect.authorize")[0].params["scope"] == "openid"

    assert redirected(await authorize(slack, scope="email profile")) == {"error": "invalid_scope", "state": "st-123"}
    assert redirected(await authorize(slack, response_type="token"))["error"] == "unsupported_response_type"
    assert (await authorize(slack, client_id="9999.9999")).status == 400, "an unknown app is not sent anywhere"
    slack.oidc_deny = True
    assert redirected(await authorize(slack)) == {"error": "access_denied", "state": "st-123"}


async def test_userinfo_wants_the_sign_in_token(slack: FakeSlack):
    assert await slack_error(bot(slack).openid_connect_userInfo()) == "not_allowed_token_type"
    stranger = AsyncWebClient(token="xoxp-1-2-unknown", base_url=slack.api_url)
    assert await slack_error(stranger.openid_connect_userInfo()) == "invalid_auth"
    assert await slack_error(AsyncWebClient(base_url=slack.api_url).openid_connect_userInfo()) == "not_authed"


# -- users.info ------------------------------------------------------------------------------


async def test_users_info_names_people(slack: FakeSlack):
    user = (await bot(slack).users_info(user=ALICE))["user"]
    assert user["real_name"] == "Alice" and user["name"] == "u0alice1"
    assert user["profile"]["real_name"] == "Alice" and user["profile"]["display_name"] == "Alice"

    slack.users["U0BOB001"] = {"real_name": "Bob Builder", "name": "bob", "profile": {"display_name": "bobby"}}
    user = (await bot(slack).users_info(user="U0BOB001"))["user"]
    assert (user["real_name"], user["name"]) == ("Bob Builder", "bob")
    assert user["profile"]["display_name"] == "bobby" and user["profile"]["real_name"] == "Bob Builder"
    assert user["is_restricted"] is False and user["team_id"] == slack.team_id
