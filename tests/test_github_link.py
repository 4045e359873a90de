"""Linking a person's GitHub account: OAuth with state and PKCE, tokens stored sealed, refreshes
serialized with GitHub's rotation."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import update

from bot.service import Service
from bot.store.tables import GitHubAccountRow
from tests.conftest import make_settings, service_env
from tests.fakes.github import FakeGitHub
from tests.github_fixtures import github, github_env  # noqa: F401 (fixture)
from tests.web_client import local, signed_in


@pytest.fixture
async def svc(tmp_path, slack, model, github: FakeGitHub):  # type: ignore[no-untyped-def]  # noqa: F811
    service = Service(make_settings(service_env(tmp_path / "data", slack, model, **github_env(github))))
    await service.start()
    await asyncio.wait_for(slack.connected.wait(), 10)
    yield service
    await service.stop()


async def link(svc: Service, slack, github: FakeGitHub, user: str, login: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    person = await signed_in(svc, slack, user)
    github.oauth_user = login
    try:
        async with person.http.get(f"{person.base}/github/connect", allow_redirects=False) as resp:
            authorize = resp.headers["Location"]
        query = parse_qs(urlsplit(authorize).query)
        assert authorize.startswith(github.web_url + "/login/oauth/authorize")
        assert query["code_challenge_method"] == ["S256"] and query["code_challenge"] and query["state"]
        assert query["redirect_uri"] == ["http://agents.test/github/callback"]
        async with person.http.get(authorize, allow_redirects=False) as resp:
            callback = local(svc, resp.headers["Location"])
        forged = callback.replace("state=", "state=x")
        async with person.http.get(forged) as resp:
            assert resp.status == 400, "a state that is not ours links nothing"
        async with person.http.get(callback) as resp:
            assert resp.status == 200 and f"@{login}" in await resp.text()
    finally:
        await person.close()


async def test_a_person_links_their_account_and_their_tokens_are_stored_sealed(svc, slack, github):  # noqa: F811
    github.add_user("alice-gh", 5001, "Alice Example", "alice@example.com")
    await link(svc, slack, github, "U0ALICE1", "alice-gh")
    account = await svc.github_accounts.get("U0ALICE1")
    assert account is not None and account.login == "alice-gh" and account.name == "Alice Example"
    assert account.noreply_email == "5001+alice-gh@users.noreply.github.com"
    user_tokens = [t.value for t in github.tokens.values() if t.kind in ("user", "refresh")]
    assert user_tokens
    raw = (svc.settings.data_dir / "hosted-agents.db").read_bytes()
    wal = svc.settings.data_dir / "hosted-agents.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert not [t for t in user_tokens if t.encode() in raw], "the database holds only sealed tokens"
    token = await svc.github_accounts.token("U0ALICE1")
    assert github.tokens[token].kind == "user" and github.tokens[token].valid


async def test_an_expiring_token_is_refreshed_once_and_the_rotated_pair_is_kept(svc, slack, github):  # noqa: F811
    github.add_user("alice-gh", 5001, "Alice Example")
    await link(svc, slack, github, "U0ALICE1", "alice-gh")
    first = await svc.github_accounts.token("U0ALICE1")

    async def about_to_expire() -> None:  # as if hours had passed
        async with svc.db.session() as s, s.begin():
            await s.execute(update(GitHubAccountRow).values(access_expires_at=time.time() + 60))

    await about_to_expire()
    refreshes = len([c for c in github.calls if c.path == "/login/oauth/access_token"])
    tokens = await asyncio.gather(*(svc.github_accounts.token("U0ALICE1") for _ in range(5)))
    assert len(set(tokens)) == 1 and tokens[0] != first, "five callers, one refresh, one new token"
    assert len([c for c in github.calls if c.path == "/login/oauth/access_token"]) == refreshes + 1
    assert github.tokens[tokens[0]].valid and not github.tokens[first].valid, "GitHub rotated the pair"
    await about_to_expire()
    third = await svc.github_accounts.token("U0ALICE1")
    assert third not in (first, tokens[0]) and github.tokens[third].valid, "the rotated refresh token was kept"


async def test_the_app_home_offers_connect_github_and_says_who_you_are_linked_as(svc, slack, github):  # noqa: F811
    from tests.web_client import home_link

    await home_link(svc, slack, "U0ALICE1")
    assert "not linked" in str(slack.home_views["U0ALICE1"])
    connect = slack.home_buttons("U0ALICE1")["connect_github"]["url"]
    assert "/auth/link/" in connect and connect.endswith("?next=/github/connect")
    github.add_user("alice-gh", 5001, "Alice Example")
    await link(svc, slack, github, "U0ALICE1", "alice-gh")
    await home_link(svc, slack, "U0ALICE1")
    assert "linked as *alice-gh*" in str(slack.home_views["U0ALICE1"])
