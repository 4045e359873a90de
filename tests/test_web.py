"""The web view over HTTP and its WebSocket: links, sign-in, writes and their checks, live events.

The browser tests (tests/test_web_browser.py) drive the same pages in Chromium; these pin the
protocol: status codes, headers, cookies, and the event stream's order."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from bot.service import Service
from bot.store.signin_links import SignInLinks
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.slack import FakeSlack
from tests.slack_threads import all_done, turns
from tests.web_client import anonymous, base_url, home_link, local, signed_in

ACME = Path(__file__).parent / "data" / "acme_repos.yml"


async def asked(slack: FakeSlack, model: FakeOpenAI, text: str, answer: str = "ok", user: str = "U0ALICE1") -> tuple[str, str]:
    """A mention answered in Slack; returns its thread and the session's share token."""
    model.add(Reply(text=answer))
    root = await slack.mention(user, text)
    await slack.wait_for(lambda: all_done(slack, root, 1), what="the answer in Slack")
    link = turns(slack, root)[0].head.buttons()["view_session"]["url"]
    return root, link.rsplit("/", 1)[1]


async def read_events(ws: aiohttp.ClientWebSocketResponse, until: Any, timeout: float = 10) -> list[dict[str, Any]]:
    """Events (not presence) from the socket until `until(events)` holds."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not until(events):
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            events += [item for item in json.loads(msg.data) if item["type"] == "event"]
    return events


async def test_the_session_link_shows_the_transcript_safely_and_wrong_tokens_get_404(service, slack, model):
    _, token = await asked(slack, model, "fix the <b>bug</b>", answer="<script>alert(1)</script> **fixed**")
    base = base_url(service)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/s/{token}") as resp:
            assert resp.status == 200
            html = await resp.text()
            headers = resp.headers
        assert "fix the &lt;b&gt;bug&lt;/b&gt;" in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt; <strong>fixed</strong>" in html and "<script>alert" not in html
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-store"
        wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
        for bad in ("", "nope", wrong, "../../etc/passwd", "x" * 500, f"{token}/extra"):
            async with http.get(f"{base}/s/{bad}") as resp:
                assert resp.status == 404, bad
            async with http.get(f"{base}/s/{bad}/ws", headers={"Origin": base}) as resp:
                assert resp.status == 404, bad


async def test_the_app_home_lists_recent_sessions_and_its_sign_in_link_works_once(service, slack, model):
    await asked(slack, model, "look at the nightly logs")
    link = await home_link(service, slack, "U0ALICE1")
    assert "look at the nightly logs" in json.dumps(slack.home_views["U0ALICE1"])
    person = anonymous(service)
    try:
        async with person.http.get(link, allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/sessions"
            cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # PUBLIC_URL is http
        status, html = await person.get("/sessions")
        assert status == 200 and "look at the nightly logs" in html and "Alice" in html
        async with person.http.get(link, allow_redirects=False) as resp:
            assert resp.status == 404, "a sign-in link works once"
        expired = await SignInLinks(service.db, ttl=-1).mint("U0BOB001", "Bob", None)
        stranger = anonymous(service)
        status, html = await stranger.get(f"/auth/link/{expired}", allow_redirects=False)
        assert status == 404 and "expired" in html
        status, _ = await stranger.get("/sessions", allow_redirects=False)
        assert status == 302, "nobody was signed in by the expired link"
        await stranger.close()
    finally:
        await person.close()


async def test_a_web_prompt_is_answered_on_the_page_and_in_the_thread_under_the_persons_name(service, slack, model):
    root, token = await asked(slack, model, "what does the cron job do?", answer="It cleans up.")
    alice = await signed_in(service, slack, "U0ALICE1")
    try:
        model.add(Reply(text="It runs at **3 am**."))
        status, body = await alice.post(f"/s/{token}/prompt", {"text": "and when does it run?"})
        assert status == 200 and body["ok"], body
        await slack.wait_for(lambda: all_done(slack, root, 2), what="the web prompt's turn in Slack")
        head = turns(slack, root)[1].head
        assert "<@U0ALICE1> asked (from the web): and when does it run?" in json.dumps(head.blocks)
        assert "3 am" in turns(slack, root)[1].rendered()
        assert "From <@U0ALICE1>:\nand when does it run?" in model.requests[-1].last_user_text
        status, html = await alice.get(f"/s/{token}")
        assert "and when does it run?" in html and "from web" in html and "<strong>3 am</strong>" in html
        assert '<span class="author">Alice</span> <span class="via">from Slack</span>' in html, "Slack prompts by name"
    finally:
        await alice.close()


async def test_writes_need_a_signed_in_person_on_one_of_our_pages(service, slack, model):
    root, token = await asked(slack, model, "hello")
    calls = len(model.requests)
    stranger = anonymous(service)
    alice = await signed_in(service, slack, "U0ALICE1")
    try:
        status, _ = await stranger.post(f"/s/{token}/prompt", {"text": "hi"})
        assert status == 401, "anonymous viewers cannot prompt"
        status, _ = await alice.post(f"/s/{token}/prompt", {"text": "hi"}, origin="https://evil.example")
        assert status == 403, "cross-site"
        status, _ = await alice.post(f"/s/{token}/prompt", {"text": "hi"}, origin="")
        assert status == 403, "no Origin"
        status, _ = await alice.post(f"/s/{token}/prompt", {"text": "hi"}, token="0" * 64)
        assert status == 403, "a request token of another page"
        async with alice.http.post(f"{alice.base}/s/{token}/prompt", data="not json",
                                   headers={"Origin": alice.base, "X-Request-Token": alice.token}) as resp:
            assert resp.status == 400
        status, body = await alice.post(f"/s/{token}/prompt", {"text": "   "})
        assert status == 422 and body["reason"] == "empty"
        status, _ = await alice.post(f"/s/{token}/prompt", {"text": "x" * 300_000})
        assert status == 413, "a page's write is small"
        status, _ = await alice.post("/s/" + "A" * 32 + "/prompt", {"text": "hi"})
        assert status == 404
        status, _ = await stranger.post("/new", {"text": "start something"})
        assert status == 401
        status, _ = await stranger.post(f"/s/{token}/pull-request")
        assert status == 401
        status, body = await alice.post(f"/s/{token}/pull-request")
        assert status == 422 and body["reason"] == "no_repo", body  # (and without GitHub set up: what to set)
        await asyncio.sleep(0.2)
        assert len(model.requests) == calls, "nothing refused reached the model"
        assert len(turns(slack, root)) == 1
    finally:
        await stranger.close()
        await alice.close()


async def test_the_websocket_replays_from_any_sequence_number_then_tails(service, slack, model):
    _, token = await asked(slack, model, "count", answer="word " * 500)  # past INLINE_MARKDOWN: rendered in a thread
    base = base_url(service)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base}/s/{token}/ws?after=0", headers={"Origin": base}) as ws:
            events = await read_events(ws, lambda evs: any(e["kind"] == "status" and e["data"]["state"] == "idle" for e in evs))
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(seqs) + 1)), "every event once, in order"
        text = "".join(e["data"]["text"] for e in events if e["kind"] == "text_delta")
        assert text == "word " * 500
        assert any(e["kind"] == "assistant_message" and "word" in e.get("html", "") for e in events)
        middle = seqs[len(seqs) // 2]
        async with http.ws_connect(f"{base}/s/{token}/ws?after={middle}", headers={"Origin": base}) as ws:
            tail = await read_events(ws, lambda evs: bool(evs) and evs[-1]["seq"] == seqs[-1])
        assert [e["seq"] for e in tail] == seqs[middle:]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{base}/s/{token}/ws", headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403


async def test_presence_names_signed_in_viewers_and_counts_anonymous_ones(service, slack, model):
    _, token = await asked(slack, model, "hello")
    base = base_url(service)
    alice = await signed_in(service, slack, "U0ALICE1")
    stranger = anonymous(service)

    async def presence(ws: aiohttp.ClientWebSocketResponse, want: dict[str, Any]) -> None:
        async with asyncio.timeout(5):
            while True:
                items = json.loads((await ws.receive()).data)
                if any(i["type"] == "presence" and {k: i[k] for k in want} == want for i in items):
                    return

    try:
        a = await alice.http.ws_connect(f"{base}/s/{token}/ws", headers={"Origin": base})
        await presence(a, {"names": ["Alice"], "anonymous": 0})
        s = await stranger.http.ws_connect(f"{base}/s/{token}/ws", headers={"Origin": base})
        await presence(a, {"names": ["Alice"], "anonymous": 1})
        await s.close()
        await presence(a, {"names": ["Alice"], "anonymous": 0})
        await a.close()
    finally:
        await alice.close()
        await stranger.close()


async def test_stop_and_clear_queue_from_the_web_follow_the_access_rules(service, slack, model):
    model.add(Reply(text="slow " * 2000, chunk_delay=0.01))
    root = await slack.mention("U0ALICE1", "a long job")
    head = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root), what="the turn's message"))[0]
    token = head.buttons()["view_session"]["url"].rsplit("/", 1)[1]
    alice = await signed_in(service, slack, "U0ALICE1")
    bob = await signed_in(service, slack, "U0BOB001")
    try:
        status, body = await bob.post(f"/s/{token}/prompt", {"text": "then this"})
        assert status == 200, body
        status, body = await bob.post(f"/s/{token}/stop")
        assert status == 422 and body["reason"] == "not_yours", body
        status, body = await alice.post(f"/s/{token}/clear")
        assert status == 200 and body["cleared"] == 1, body
        status, body = await alice.post(f"/s/{token}/stop")
        assert status == 200, body
        await slack.wait_for(lambda: all_done(slack, root, 1), what="the stopped turn")
        assert "Stopped" in turns(slack, root)[0].head.rendered()
        status, body = await alice.post(f"/s/{token}/stop")
        assert status == 422 and body["reason"] == "nothing_running"
    finally:
        await alice.close()
        await bob.close()


async def test_session_links_posted_in_slack_unfurl(service, slack, model):
    _, token = await asked(slack, model, "investigate the flaky login test")
    url = f"{service.settings.public_url}/s/{token}"
    await slack.share_link("U0BOB001", url)
    await slack.share_link("U0BOB001", f"{service.settings.public_url}/s/{'Z' * 32}")  # no such session: no unfurl
    await slack.wait_for(lambda: slack.unfurls, what="the unfurl")
    await asyncio.sleep(0.3)
    assert len(slack.unfurls) == 1
    shown = json.dumps(slack.unfurls[0]["unfurls"][url])
    assert "investigate the flaky login test" in shown and "<@U0ALICE1>" in shown and "idle" in shown


@pytest.fixture
async def acme(tmp_path: Path, slack: FakeSlack, model: FakeOpenAI):  # type: ignore[no-untyped-def]
    env = service_env(tmp_path / "data", slack, model, repos_config=ACME, sandbox_backend="none")
    svc = Service(make_settings(env))
    await svc.start()
    await asyncio.wait_for(slack.connected.wait(), 10)
    yield svc
    await svc.stop()


async def test_new_sessions_from_the_web_and_the_sessions_list(acme, slack, model):
    alice = await signed_in(acme, slack, "U0ALICE1")
    try:
        status, html = await alice.get("/new")
        assert status == 200 and "acme/api" in html and 'label for="prompt">Prompt' in html
        model.add(Reply(text="Added."))
        status, body = await alice.post("/new", {"text": "add a health check endpoint", "repo": "acme/api"})
        assert status == 200 and body["url"].startswith("/s/"), body
        status, html = await alice.get(body["url"])
        assert status == 200 and "add a health check endpoint" in html
        status, refused = await alice.post(body["url"] + "/pull-request")  # no GitHub App here: say what to set
        assert status == 422 and refused["reason"] == "not_configured" and "GITHUB_APP_ID" in refused["error"]
        # the classifier cannot tell: the page asks, the person picks
        model.add(Reply(text=json.dumps({"repo": "unknown", "confidence": 0.1, "alternatives": [], "reason": ""})),
                  Reply(text="Looked."))
        status, body = await alice.post("/new", {"text": "the numbers look odd"})
        assert status == 200 and body.get("held") and "acme/web" in body["repos"], body
        status, picked = await alice.post("/new/pick", {"held": body["held"], "repo": "acme/web"})
        assert status == 200 and picked["url"].startswith("/s/"), picked
        status, again = await alice.post("/new/pick", {"held": body["held"], "repo": "acme/web"})
        assert status == 422 and again["reason"] == "already_started"
        status, unknown = await alice.post("/new", {"text": "x", "repo": "acme/nope"})
        assert status == 422 and unknown["reason"] == "unknown_repo"
        status, html = await alice.get("/sessions")
        assert "add a health check endpoint" in html and "the numbers look odd" in html
        status, html = await alice.get("/sessions?who=all&repo=acme/web")
        assert "the numbers look odd" in html and "add a health check endpoint" not in html
        status, html = await alice.get("/sessions?status=bogus&repo=nope")
        assert status == 200 and "No sessions" in html
    finally:
        await alice.close()


async def test_sign_in_with_slack_openid_connect_and_bolt_ignores_oauth_variables(tmp_path, slack, model, monkeypatch):
    # slack_bolt switches to OAuth installation mode when these are set; the bot must keep answering.
    monkeypatch.setenv("SLACK_CLIENT_ID", slack.oidc_client_id)
    monkeypatch.setenv("SLACK_CLIENT_SECRET", slack.oidc_client_secret)
    env = service_env(tmp_path / "data", slack, model, slack_oidc_client_id=slack.oidc_client_id,
                      slack_oidc_client_secret=slack.oidc_client_secret, slack_oidc_authorize_url=slack.oidc_authorize_url)
    svc = Service(make_settings(env))
    await svc.start()
    await asyncio.wait_for(slack.connected.wait(), 10)
    person = anonymous(svc)
    try:
        await asked(slack, model, "still there?")
        status, html = await person.get("/signin")
        assert "Sign in with Slack" in html
        async with person.http.get(f"{person.base}/auth/slack?next=/new", allow_redirects=False) as resp:
            assert resp.status == 302
            authorize = resp.headers["Location"]
        query = parse_qs(urlsplit(authorize).query)
        assert query["redirect_uri"] == ["http://agents.test/auth/slack/callback"] and query["nonce"] and query["state"]
        assert "openid" in query["scope"][0].split()
        async with person.http.get(authorize, allow_redirects=False) as resp:
            callback = local(svc, resp.headers["Location"])
        forged = callback.replace("state=", "state=x")
        async with person.http.get(forged, allow_redirects=False) as resp:
            assert resp.status == 400, "a state that is not ours"
        async with person.http.get(f"{person.base}/auth/slack?next=/new", allow_redirects=False) as resp:
            authorize = resp.headers["Location"]
        async with person.http.get(authorize, allow_redirects=False) as resp:
            callback = local(svc, resp.headers["Location"])
        async with person.http.get(callback, allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/new", await resp.text()
        status, html = await person.get("/new")
        assert status == 200 and "Alice" in html
        async with person.http.get(callback, allow_redirects=False) as resp:
            assert resp.status == 400, "a code works once"
    finally:
        await person.close()
        await svc.stop()


async def test_people_the_access_rules_keep_out_get_no_sign_in_link_and_no_lists(service, slack, model):
    await asked(slack, model, "something of Alice's")
    slack.users["U0GUEST01"] = {"is_restricted": True}
    await slack.open_home("U0GUEST01")
    await slack.wait_for(lambda: slack.home_views.get("U0GUEST01"), what="the guest's Home tab")
    assert "open_web_view" not in slack.home_buttons("U0GUEST01")
    assert "guests" in json.dumps(slack.home_views["U0GUEST01"])
    # a link minted before they became a guest still signs them in, but shows them nothing
    token = await SignInLinks(service.db).mint("U0GUEST01", "Guest", None)
    guest = anonymous(service)
    try:
        status, _ = await guest.get(f"/auth/link/{token}")
        assert status == 403
        for path in ("/sessions?who=all", "/new"):
            status, html = await guest.get(path)
            assert status == 403 and "guests" in html and "something of Alice" not in html, path
    finally:
        await guest.close()
