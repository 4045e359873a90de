"""A person using the web view over HTTP, signed in the way people are: through the App Home link."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bot.service import Service
from tests.fakes.slack import FakeSlack

_TOKEN = re.compile(r'<meta name="request-token" content="([^"]*)">')


def base_url(service: Service) -> str:
    return f"http://127.0.0.1:{service.web_port}"


def local(service: Service, url: str) -> str:
    """A link the service made (on PUBLIC_URL) as reachable here."""
    parts = urlsplit(url)
    return base_url(service) + parts.path + (f"?{parts.query}" if parts.query else "")


@dataclass
class WebUser:
    http: aiohttp.ClientSession
    base: str
    token: str = ""

    async def get(self, path: str, **kw: Any) -> tuple[int, str]:
        async with self.http.get(self.base + path, **kw) as resp:
            return resp.status, await resp.text()

    async def post(self, path: str, body: dict[str, Any] | None = None, *, origin: str | None = None,
                   token: str | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Origin": self.base if origin is None else origin, "Content-Type": "application/json",
                   "X-Request-Token": self.token if token is None else token}
        headers = {k: v for k, v in headers.items() if v}
        async with self.http.post(self.base + path, data=json.dumps(body or {}), headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, {"text": text}

    async def load_token(self, path: str = "/new") -> str:
        status, html = await self.get(path)
        assert status == 200, html
        match = _TOKEN.search(html)
        assert match, "the page carries a request token"
        self.token = match.group(1)
        return self.token

    async def close(self) -> None:
        await self.http.close()


def anonymous(service: Service) -> WebUser:
    return WebUser(aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)), base_url(service))


async def home_link(service: Service, slack: FakeSlack, user: str) -> str:
    """Open the App Home as `user` and return its *Open web view* URL (reachable here)."""
    before = slack.home_views.get(user)
    await slack.open_home(user)
    await slack.wait_for(lambda: slack.home_views.get(user) is not before and slack.home_views.get(user),
                         what="the App Home to be published")
    return local(service, slack.home_buttons(user)["open_web_view"]["url"])


async def signed_in(service: Service, slack: FakeSlack, user: str) -> WebUser:
    person = anonymous(service)
    link = await home_link(service, slack, user)
    async with person.http.get(link, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        assert resp.headers["Location"] == "/sessions"
    await person.load_token()
    return person
