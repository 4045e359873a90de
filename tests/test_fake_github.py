"""The fake GitHub (tests/fakes/github.py) against the real PyGithub, plain aiohttp and real git."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from github import Auth, Github, GithubException, GithubIntegration

from tests.fakes.github import FakeGitHub, s256

FAST: dict[str, Any] = {"seconds_between_requests": None, "seconds_between_writes": None, "retry": None}
"""PyGithub without its write throttling (1 s per write) and retries."""


@pytest.fixture
async def gh(tmp_path: Path) -> AsyncIterator[FakeGitHub]:
    fake = FakeGitHub(tmp_path / "github")
    await fake.start()
    fake.add_user("alice", 5001, "Alice Liddell", "alice@example.com")
    fake.add_user("bob", 5002, "Bob", "bob@example.com")
    fake.add_repo("acme", "api", {"README.md": "# api\n", "app.py": "x = 1\n"})
    yield fake
    await fake.stop()


def integration(gh: FakeGitHub, key: str | None = None, app_id: int | str | None = None) -> GithubIntegration:
    auth = Auth.AppAuth(gh.app.id if app_id is None else app_id, key or gh.app.private_key_pem)
    return GithubIntegration(auth=auth, base_url=gh.api_url, **FAST)


def as_installation(gh: FakeGitHub, installation_id: int) -> Github:
    auth = Auth.AppAuth(gh.app.id, gh.app.private_key_pem).get_installation_auth(installation_id)
    return Github(base_url=gh.api_url, auth=auth, **FAST)


def as_token(gh: FakeGitHub, token: str) -> Github:
    return Github(base_url=gh.api_url, auth=Auth.Token(token), **FAST)


async def git(cwd: Path, *args: str, token: str | None = None, check: bool = True) -> tuple[int, str]:
    """git in a subprocess (the fake serves from this event loop); with `token`, as the service sends it."""
    extra: list[str] = []
    if token is not None:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        extra = ["-c", f"http.extraHeader=Authorization: Basic {basic}"]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "Alice Liddell", "GIT_AUTHOR_EMAIL": "5001+alice@users.noreply.github.com",
           "GIT_COMMITTER_NAME": "hosted-agents[bot]",
           "GIT_COMMITTER_EMAIL": "190000001+hosted-agents[bot]@users.noreply.github.com"}
    proc = await asyncio.create_subprocess_exec("git", *extra, *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    text = out.decode()
    if check and proc.returncode != 0:
        raise AssertionError(f"git {args} failed ({proc.returncode}): {text}")
    assert proc.returncode is not None
    return proc.returncode, text


# -- GitHub App auth ----------------------------------------------------------------------------


async def test_installation_lookup_and_access_token_with_pygithub(gh: FakeGitHub) -> None:
    app = integration(gh)
    installation = await asyncio.to_thread(app.get_repo_installation, "acme", "api")
    assert installation.app_id == gh.app.id and installation.target_type == "Organization"
    assert installation.account.login == "acme"
    assert (await asyncio.to_thread(app.get_app_installation, installation.id)).id == installation.id
    assert (await asyncio.to_thread(app.get_app)).slug == "hosted-agents"

    auth = await asyncio.to_thread(app.get_access_token, installation.id)
    assert auth.token.startswith("ghs_") and auth.repository_selection == "selected"
    assert auth.permissions["contents"] == "write"
    assert timedelta(minutes=59) < auth.expires_at - datetime.now(UTC) <= timedelta(hours=1)
    jwt_calls = [c for c in gh.calls if c.path.startswith(("/repos/acme/api/installation", "/app"))]
    assert jwt_calls and all(c.kind == "jwt" for c in jwt_calls)

    # the installation token (PyGithub sends `Authorization: token ghs_...`) reads the repo
    client = as_installation(gh, installation.id)
    repo = await asyncio.to_thread(client.get_repo, "acme/api")
    assert repo.full_name == "acme/api" and repo.private and repo.default_branch == "main"
    assert repo.clone_url == gh.clone_url("acme", "api")
    assert gh.calls[-1].path == "/repos/acme/api" and gh.calls[-1].kind == "installation"
    bot = await asyncio.to_thread(client.get_user, "hosted-agents[bot]")
    assert (bot.id, bot.type) == (gh.app.bot_id, "Bot")

    # an App that is not installed on a repo: 404, as GitHub answers
    gh.add_repo("elsewhere", "lib", installed=False)
    with pytest.raises(GithubException) as missing:
        await asyncio.to_thread(app.get_repo_installation, "elsewhere", "lib")
    assert missing.value.status == 404
    # ...and the installation token of acme cannot see it
    with pytest.raises(GithubException) as hidden:
        await asyncio.to_thread(client.get_repo, "elsewhere/lib")
    assert hidden.value.status == 404


async def test_a_bad_jwt_is_refused_with_401(gh: FakeGitHub) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    from cryptography.hazmat.primitives import serialization

    pem = other_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()).decode()
    with pytest.raises(GithubException) as wrong_key:
        await asyncio.to_thread(integration(gh, key=pem).get_repo_installation, "acme", "api")
    assert wrong_key.value.status == 401
    with pytest.raises(GithubException) as wrong_iss:
        await asyncio.to_thread(integration(gh, app_id=999).get_repo_installation, "acme", "api")
    assert wrong_iss.value.status == 401

    now = int(time.time())
    installation = gh.install("acme").id
    url = f"{gh.api_url}/app/installations/{installation}/access_tokens"
    cases = {
        "good, int iss": (gh.app.jwt(iss=gh.app.id), 201),
        "good, client id iss": (gh.app.jwt(iss=gh.app.client_id), 201),
        "expired": (gh.app.jwt(iat=now - 700, exp=now - 100), 401),
        "too long": (gh.app.jwt(iat=now - 60, exp=now + 1200), 401),
        "issued in the future": (gh.app.jwt(iat=now + 300, exp=now + 500), 401),
        "garbage": ("a.b.c", 401),
    }
    async with aiohttp.ClientSession() as http:
        for name, (token, status) in cases.items():
            async with http.post(url, headers={"Authorization": f"Bearer {token}"}, json={}) as resp:
                assert resp.status == status, name
        # an installation token is no JWT
        ghs = gh.installation_token("acme")
        async with http.get(f"{gh.api_url}/app", headers={"Authorization": f"Bearer {ghs}"}) as resp:
            assert resp.status == 401
        async with http.get(f"{gh.api_url}/app/installations/{installation}") as resp:
            assert resp.status == 401


async def test_expired_and_revoked_installation_tokens_are_bad_credentials(gh: FakeGitHub) -> None:
    token = gh.installation_token("acme")
    async with aiohttp.ClientSession() as http:
        for header in (f"token {token}", f"Bearer {token}"):
            async with http.get(f"{gh.api_url}/repos/acme/api", headers={"Authorization": header}) as resp:
                assert resp.status == 200
        gh.expire_tokens()
        async with http.get(f"{gh.api_url}/repos/acme/api", headers={"Authorization": f"token {token}"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["message"] == "Bad credentials"
        async with http.get(f"{gh.api_url}/repos/acme/api") as resp:  # private, anonymous
            assert resp.status == 404 and (await resp.json())["message"] == "Not Found"
    fresh = gh.installation_token("acme", permissions={"contents": "read", "pull_requests": "read"})
    with pytest.raises(GithubException) as read_only:
        repo = await asyncio.to_thread(as_token(gh, fresh).get_repo, "acme/api")
        await asyncio.to_thread(repo.create_pull, title="t", body="", head="main", base="main")
    assert read_only.value.status == 403


# -- pull requests ------------------------------------------------------------------------------


async def test_a_pull_request_made_with_a_user_token_is_that_users(gh: FakeGitHub) -> None:
    access, _ = gh.user_token("alice")
    gh.commit("acme", "api", "feature", {"app.py": "x = 2\n"}, "Change x")
    client = as_token(gh, access)
    repo = await asyncio.to_thread(client.get_repo, "acme/api")
    pr = await asyncio.to_thread(repo.create_pull, title="Change x", body="Why", head="feature", base="main", draft=True)
    assert (pr.number, pr.user.login, pr.draft, pr.state) == (1, "alice", True, "open")
    assert pr.head.sha == gh.branch_head("acme", "api", "feature")
    assert pr.html_url == f"{gh.web_url}/acme/api/pull/1"
    created = [c for c in gh.calls if c.method == "POST" and c.path == "/repos/acme/api/pulls"]
    assert len(created) == 1 and created[0].token == access and created[0].kind == "user"
    assert created[0].json["head"] == "feature" and created[0].json["draft"] is True

    # the same head again: 422 with GitHub's message
    with pytest.raises(GithubException) as again:
        await asyncio.to_thread(repo.create_pull, title="Again", body="", head="feature", base="main")
    assert again.value.status == 422 and again.value.data["message"] == "Validation Failed"
    assert again.value.data["errors"][0]["message"] == "A pull request already exists for acme:feature."
    # a head branch that was never pushed
    with pytest.raises(GithubException) as missing:
        await asyncio.to_thread(repo.create_pull, title="Nope", body="", head="nowhere", base="main")
    assert missing.value.status == 422
    assert missing.value.data["errors"] == [{"resource": "PullRequest", "field": "head", "code": "invalid"}]

    # listing by head in the documented owner:branch form; a bare branch name filters nothing
    gh.commit("acme", "api", "other", {"b.txt": "b\n"})
    await asyncio.to_thread(repo.create_pull, title="Other", body="", head="acme:other", base="main")
    found = await asyncio.to_thread(lambda: [p.number for p in repo.get_pulls(state="open", head="acme:feature")])
    assert found == [1]
    unfiltered = await asyncio.to_thread(lambda: sorted(p.number for p in repo.get_pulls(head="feature")))
    assert unfiltered == [1, 2]

    # edits, comments and reviews through PyGithub
    await asyncio.to_thread(pr.edit, title="Change x to 2", body="Because")
    fetched = await asyncio.to_thread(repo.get_pull, 1)
    assert (fetched.title, fetched.body) == ("Change x to 2", "Because")
    comment = await asyncio.to_thread(fetched.create_issue_comment, "Done")
    assert comment.user.login == "alice"
    gh.add_review("acme", "api", 1, "bob", "changes_requested", "Not like this")
    reviews = await asyncio.to_thread(lambda: [(r.user.login, r.state) for r in fetched.get_reviews()])
    assert reviews == [("bob", "CHANGES_REQUESTED")]
    comments = await asyncio.to_thread(lambda: [(c.user.login, c.body) for c in fetched.get_issue_comments()])
    assert comments == [("alice", "Done")]
    await asyncio.to_thread(fetched.edit, state="closed")
    assert (await asyncio.to_thread(repo.get_pull, 1)).state == "closed"


async def test_a_pull_request_made_with_an_installation_token_is_the_bots(gh: FakeGitHub) -> None:
    gh.commit("acme", "api", "agent/1", {"app.py": "x = 3\n"})
    repo = await asyncio.to_thread(as_token(gh, gh.installation_token("acme")).get_repo, "acme/api")
    pr = await asyncio.to_thread(repo.create_pull, title="By the App", body="", head="agent/1", base="main")
    assert (pr.user.login, pr.user.type) == ("hosted-agents[bot]", "Bot")
    comment = await asyncio.to_thread(pr.create_issue_comment, "Opened for alice")
    assert comment.user.login == "hosted-agents[bot]"
    assert gh.calls[-1].kind == "installation"


async def test_a_user_without_push_access_cannot_see_a_private_repo(gh: FakeGitHub) -> None:
    gh.add_repo("acme", "secret", collaborators={"alice"})
    alice, _ = gh.user_token("alice")
    bob, _ = gh.user_token("bob")
    assert (await asyncio.to_thread(as_token(gh, alice).get_repo, "acme/secret")).name == "secret"
    with pytest.raises(GithubException) as hidden:
        await asyncio.to_thread(as_token(gh, bob).get_repo, "acme/secret")
    assert hidden.value.status == 404


async def test_pagination_follows_link_headers(gh: FakeGitHub) -> None:
    for n in range(5):
        gh.commit("acme", "api", f"b{n}", {f"f{n}": "x\n"})
        gh.open_pull("acme", "api", f"b{n}", f"PR {n}", user="bob")
    client = Github(base_url=gh.api_url, auth=Auth.Token(gh.user_token("alice")[0]), per_page=2, **FAST)
    repo = await asyncio.to_thread(client.get_repo, "acme/api")
    numbers = await asyncio.to_thread(lambda: [p.number for p in repo.get_pulls()])
    assert numbers == [5, 4, 3, 2, 1]
    assert sum(1 for c in gh.calls if c.path == "/repos/acme/api/pulls") == 3


# -- users and OAuth ----------------------------------------------------------------------------


async def test_oauth_code_exchange_with_pkce_and_refresh_rotation(gh: FakeGitHub) -> None:
    gh.oauth_user = "alice"
    verifier = secrets.token_urlsafe(48)
    redirect = "http://agents.test/github/callback"
    token_url = f"{gh.web_url}/login/oauth/access_token"
    creds = {"client_id": gh.app.client_id, "client_secret": gh.app.client_secret}
    accept = {"Accept": "application/json"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gh.web_url}/login/oauth/authorize", allow_redirects=False, params={
                "client_id": gh.app.client_id, "redirect_uri": redirect, "state": "st4te",
                "code_challenge": s256(verifier), "code_challenge_method": "S256"}) as resp:
            assert resp.status == 302
            location = urlsplit(resp.headers["Location"])
        query = parse_qs(location.query)
        assert f"{location.scheme}://{location.netloc}{location.path}" == redirect and query["state"] == ["st4te"]
        code = query["code"][0]

        async def exchange(**form: str) -> dict[str, Any]:
            async with http.post(token_url, data=form, headers=accept) as resp:
                assert resp.status == 200  # GitHub refuses with 200 and an `error` field
                return dict(await resp.json())

        assert (await exchange(code=code, **{**creds, "client_secret": "nope"}))["error"] == "incorrect_client_credentials"
        assert (await exchange(code=code, **creds))["error"] == "bad_verification_code"  # no verifier
        assert (await exchange(code=code, code_verifier="wrong", **creds))["error"] == "bad_verification_code"
        assert (await exchange(code=code, code_verifier=verifier, redirect_uri="http://evil.test/cb",
                               **creds))["error"] == "redirect_uri_mismatch"
        tokens = await exchange(code=code, code_verifier=verifier, redirect_uri=redirect, **creds)
        assert tokens["access_token"].startswith("ghu_") and tokens["refresh_token"].startswith("ghr_")
        assert (tokens["expires_in"], tokens["refresh_token_expires_in"], tokens["token_type"]) == (28800, 15897600, "bearer")
        assert (await exchange(code=code, code_verifier=verifier, **creds))["error"] == "bad_verification_code"  # used

        auth = {"Authorization": f"Bearer {tokens['access_token']}", "Accept": "application/vnd.github+json"}
        async with http.get(f"{gh.api_url}/user", headers=auth) as resp:
            me = await resp.json()
            assert (me["login"], me["id"], me["name"], me["email"]) == ("alice", 5001, "Alice Liddell", None)
        async with http.get(f"{gh.api_url}/user/emails", headers=auth) as resp:
            emails = await resp.json()
            assert [e["email"] for e in emails if e["primary"] and e["verified"]] == ["alice@example.com"]

        # refresh: a new pair; the old refresh token and the old access token stop working
        refreshed = await exchange(grant_type="refresh_token", refresh_token=tokens["refresh_token"], **creds)
        assert refreshed["access_token"] != tokens["access_token"]
        assert refreshed["refresh_token"] != tokens["refresh_token"]
        reused = await exchange(grant_type="refresh_token", refresh_token=tokens["refresh_token"], **creds)
        assert reused["error"] == "bad_refresh_token"
        async with http.get(f"{gh.api_url}/user", headers=auth) as resp:
            assert resp.status == 401
        async with http.get(f"{gh.api_url}/user", headers={"Authorization": f"token {refreshed['access_token']}"}) as resp:
            assert resp.status == 200

        # without `Accept: application/json`, GitHub answers form-encoded
        gh.expire_user_tokens()
        async with http.get(f"{gh.api_url}/user", headers={"Authorization": f"token {refreshed['access_token']}"}) as resp:
            assert resp.status == 401
        async with http.post(token_url, data={"grant_type": "refresh_token",
                                              "refresh_token": refreshed["refresh_token"], **creds}) as resp:
            assert resp.content_type == "application/x-www-form-urlencoded"
            form = parse_qs(await resp.text())
            assert form["access_token"][0].startswith("ghu_") and form["token_type"] == ["bearer"]

        # the person says no
        gh.oauth_deny = True
        async with http.get(f"{gh.web_url}/login/oauth/authorize", allow_redirects=False, params={
                "client_id": gh.app.client_id, "redirect_uri": redirect, "state": "s2"}) as resp:
            assert parse_qs(urlsplit(resp.headers["Location"]).query)["error"] == ["access_denied"]


async def test_users_with_pygithub(gh: FakeGitHub) -> None:
    client = as_token(gh, gh.user_token("bob")[0])
    me = await asyncio.to_thread(lambda: client.get_user().login)
    assert me == "bob"
    emails = await asyncio.to_thread(lambda: [(e.email, e.primary) for e in client.get_user().get_emails()])
    assert ("bob@example.com", True) in emails
    alice = await asyncio.to_thread(client.get_user, "alice")
    assert (alice.id, alice.name) == (5001, "Alice Liddell")
    with pytest.raises(GithubException) as missing:
        await asyncio.to_thread(client.get_user, "nobody")
    assert missing.value.status == 404
    with pytest.raises(GithubException) as app_token:
        await asyncio.to_thread(lambda: as_token(gh, gh.installation_token("acme")).get_user().login)
    assert app_token.value.status == 403


# -- git ----------------------------------------------------------------------------------------


async def test_git_clone_and_push_need_a_current_token(gh: FakeGitHub, tmp_path: Path) -> None:
    url = gh.clone_url("acme", "api")
    token = gh.installation_token("acme")
    work = tmp_path / "work"
    await git(tmp_path, "clone", "-q", url, str(work), token=token)
    assert (work / "app.py").read_text() == "x = 1\n"

    await git(work, "checkout", "-q", "-b", "agent/fix")
    (work / "app.py").write_text("x = 42\n")
    await git(work, "commit", "-qam", "Fix x\n\nCo-authored-by: Alice Liddell <5001+alice@users.noreply.github.com>")
    await git(work, "push", "-q", "origin", "agent/fix", token=token)
    _, local = await git(work, "rev-parse", "HEAD")
    assert gh.branch_head("acme", "api", "agent/fix") == local.strip()
    info = gh.commit_info("acme", "api", local.strip())
    assert (info.author_name, info.committer_name) == ("Alice Liddell", "hosted-agents[bot]")
    assert info.trailers == (("Co-authored-by", "Alice Liddell <5001+alice@users.noreply.github.com>"),)
    assert info.message.startswith("Fix x\n")
    assert gh.pushes[-1].ref == "refs/heads/agent/fix" and gh.pushes[-1].token == token
    assert any(c.path.endswith("/git-receive-pack") and c.token == token for c in gh.git_calls)

    # no credentials: 401 with a basic challenge, and git fails without prompting
    code, out = await git(tmp_path, "clone", "-q", url, str(tmp_path / "anon"), check=False)
    assert code != 0 and ("could not read Username" in out or "Authentication failed" in out), out
    async with aiohttp.ClientSession() as http, http.get(f"{url}/info/refs?service=git-upload-pack") as resp:
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Basic realm="GitHub"'

    # an expired token: refused for fetch and push alike
    gh.expire_tokens()
    code, _ = await git(work, "fetch", "-q", "origin", token=token, check=False)
    assert code != 0
    (work / "app.py").write_text("x = 43\n")
    await git(work, "commit", "-qam", "Again")
    code, _ = await git(work, "push", "-q", "origin", "agent/fix", token=token, check=False)
    assert code != 0 and gh.branch_head("acme", "api", "agent/fix") == local.strip()

    # a user token (the person's own) pushes too
    code, _ = await git(work, "push", "-q", "origin", "agent/fix", token=gh.user_token("alice")[0])
    assert code == 0 and gh.branch_head("acme", "api", "agent/fix") != local.strip()


async def test_a_public_repo_clones_without_a_token_but_needs_one_to_push(gh: FakeGitHub, tmp_path: Path) -> None:
    gh.add_repo("acme", "open", {"a.txt": "a\n"}, private=False)
    work = tmp_path / "open"
    await git(tmp_path, "clone", "-q", gh.clone_url("acme", "open"), str(work))
    (work / "a.txt").write_text("b\n")
    await git(work, "commit", "-qam", "b")
    code, _ = await git(work, "push", "-q", "origin", "main", check=False)
    assert code != 0
    await git(work, "push", "-q", "origin", "main", token=gh.installation_token("acme"))
    assert gh.read_file("acme", "open", "main", "a.txt") == "b\n"

    # another owner's installation token reads a public repo but cannot push to it
    gh.add_repo("other", "pub", {"p.txt": "p\n"}, private=False)
    elsewhere = tmp_path / "pub"
    stranger = gh.installation_token("acme")
    await git(tmp_path, "clone", "-q", gh.clone_url("other", "pub"), str(elsewhere), token=stranger)
    (elsewhere / "p.txt").write_text("q\n")
    await git(elsewhere, "commit", "-qam", "q")
    code, out = await git(elsewhere, "push", "-q", "origin", "main", token=stranger, check=False)
    assert code != 0 and "403" in out
    assert await git(elsewhere, "push", "-q", "origin", "main", token=gh.installation_token("other")) == (0, "")


# -- webhooks -----------------------------------------------------------------------------------


async def test_deliver_signs_like_github_and_the_payloads_are_documented_shapes(gh: FakeGitHub) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((dict(request.headers), body))
        expected = "sha256=" + hmac.new(gh.app.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(expected, request.headers.get("X-Hub-Signature-256", ""))
        return web.Response(status=202 if ok else 401)

    app = web.Application()
    app.router.add_post("/github/webhook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/github/webhook"
    try:
        gh.commit("acme", "api", "feature", {"app.py": "x = 5\n"})
        opened = gh.open_pull("acme", "api", "feature", "Five", user="alice")
        assert await gh.deliver(url, "pull_request", opened, delivery_id="d-1") == 202
        headers, body = received[-1]
        assert headers["X-GitHub-Event"] == "pull_request" and headers["X-GitHub-Delivery"] == "d-1"
        assert headers["User-Agent"].startswith("GitHub-Hookshot/")
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body) == opened
        assert opened["pull_request"]["user"]["login"] == "alice"
        assert opened["installation"]["id"] == gh.install("acme").id
        assert await gh.deliver(url, "pull_request", opened, secret="wrong") == 401
        assert [d.status for d in gh.deliveries] == [202, 401]

        before = gh.branch_head("acme", "api", "feature")
        after = gh.commit("acme", "api", "feature", {"app.py": "x = 6\n"})
        sync = gh.pull_request_payload("acme", "api", 1, "synchronize")
        assert (sync["before"], sync["after"], sync["pull_request"]["head"]["sha"]) == (before, after, after)
        assert sync["pull_request"]["updated_at"] >= opened["pull_request"]["updated_at"]

        review = gh.add_review("acme", "api", 1, "bob", "approved")
        assert review["action"] == "submitted" and review["review"]["state"] == "approved"
        comment = gh.add_comment("acme", "api", 1, "bob", "LGTM")
        assert comment["issue"]["pull_request"]["html_url"] == f"{gh.web_url}/acme/api/pull/1"
        assert (comment["comment"]["body"], comment["comment"]["user"]["login"]) == ("LGTM", "bob")

        merged = gh.merge("acme", "api", 1, by="bob")
        pr = merged["pull_request"]
        assert (merged["action"], pr["merged"], pr["state"], pr["number"]) == ("closed", True, "closed", 1)
        assert pr["merged_at"] and pr["head"]["ref"] == "feature" and pr["base"]["ref"] == "main"
        assert pr["updated_at"] > comment["issue"]["updated_at"]
        main = gh.branch_head("acme", "api", "main")
        assert main is not None and main == pr["merge_commit_sha"] and gh.read_file("acme", "api", "main", "app.py") == "x = 6\n"
        assert gh.commit_info("acme", "api", main).parents[1] == after
        for event, payload in (("pull_request_review", review), ("issue_comment", comment), ("pull_request", merged),
                               ("installation", gh.installation_payload("acme"))):
            assert await gh.deliver(url, event, payload) == 202

        gh.commit("acme", "api", "dropped", {"z": "z\n"})
        gh.open_pull("acme", "api", "dropped", "Dropped", user="alice")
        closed = gh.close("acme", "api", 2)
        assert (closed["pull_request"]["merged"], closed["pull_request"]["merged_at"]) == (False, None)
    finally:
        await runner.cleanup()
