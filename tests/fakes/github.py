"""A fake GitHub on 127.0.0.1: REST API, GitHub App auth, the OAuth web flow, webhooks and real git
remotes, close enough to GitHub's documentation that the real PyGithub (and plain aiohttp/httpx
callers) run against it unchanged.

One aiohttp server answers everything, shaped like GitHub Enterprise Server:

- `api_url` = `http://127.0.0.1:PORT/api/v3` (PyGithub's `base_url`): the REST API;
- `web_url` = `http://127.0.0.1:PORT`: `/login/oauth/authorize`, `/login/oauth/access_token`, and
  git over smart HTTP at `/{owner}/{repo}.git` (`tests/fakes/git_http.py` runs `git http-backend`);
  the `html_url`s of repos, pull requests and comments point here too.

What it checks, as GitHub does:

- App JWTs (`Authorization: Bearer <JWT>`): RS256 with the App's key (pyjwt), `iss` the App id (int
  or string, as PyGithub sends it) or client id, `iat` not in the future and `exp` not past (60 s
  skew each way), `exp` at most 10 minutes ahead (and after `iat`). Anything else: 401.
- Installation tokens (`ghs_`, 1 hour) and user tokens (`ghu_`, 8 hours; refresh `ghr_`, 6 months,
  rotated on every use, the old pair stops working), as `token X` or `Bearer X` (and as the basic
  auth password for git). Unknown, expired or revoked: 401 `Bad credentials`.
- Access: an installation token sees the repos of its installation (or the subset it was minted
  for); a user token sees repos where the App is installed and the user may push (`collaborators`),
  like GitHub's user-to-server tokens. Private repos they cannot see: 404 `Not Found`. Writes need
  the App's permission (`pull_requests`/`issues`: `write`), else 403 `Resource not accessible by
  integration`.
- Pull requests: 422 `Validation Failed` with `errors` for a missing title, a head or base branch
  that is not in the git remote, no commits between them, or an open PR for the same head and base.
  `GET /pulls?head=` filters only in the documented `owner:branch` form; a bare branch name is
  ignored, as on GitHub.
- OAuth: client credentials, single-use codes (10 minutes), `redirect_uri` equal to the one
  authorized, PKCE S256 `code_verifier`; GitHub's errors (`incorrect_client_credentials`,
  `bad_verification_code`, `redirect_uri_mismatch`, `bad_refresh_token`) with HTTP 200; JSON when
  the `Accept` header asks for it, else form-encoded.

Every API and OAuth request is recorded in `calls` (git requests in `git_calls`, pushes in
`pushes`). The server shares the test's event loop: synchronous clients (PyGithub, `git`) must run
in a thread or a subprocess, as the service does with `asyncio.to_thread`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import string
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import aiohttp
import jwt
from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.git_http import GitHttpServer, bare_repo

API_PREFIX = "/api/v3"
INSTALLATION_TOKEN_TTL = 3600
USER_TOKEN_TTL = 28800
REFRESH_TOKEN_TTL = 15897600
CODE_TTL = 600
JWT_MAX_TTL = 600
CLOCK_SKEW = 60
DOCS = "https://docs.github.com/rest"
LEVELS = {"read": 1, "write": 2, "admin": 3}
ZERO_SHA = "0" * 40
_ALNUM = string.ascii_letters + string.digits


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def sign(secret: str, body: bytes) -> str:
    """`X-Hub-Signature-256`: `sha256=` and the hex HMAC of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _token(prefix: str, length: int = 36) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(length))


def _level(permission: str | None) -> int:
    return LEVELS.get(permission or "", 0)


def _node_id(kind: str, number: int) -> str:
    return base64.b64encode(f"0{len(kind)}:{kind}{number}".encode()).decode().rstrip("=")


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Call:
    """One request: `path` without the `/api/v3` prefix (OAuth ones as `/login/oauth/...`; git ones
    as `/owner/repo.git/...`); `token` the credential sent (a JWT, `ghs_...`, `ghu_...`) or None;
    `json` the JSON (or form) body."""

    method: str
    path: str
    token: str | None
    json: Any = None
    query: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str | None:
        """`installation`, `user`, `jwt` or None (no credential)."""
        if self.token is None:
            return None
        if self.token.startswith("ghs_"):
            return "installation"
        if self.token.startswith("ghu_"):
            return "user"
        return "jwt" if self.token.count(".") == 2 else "other"


@dataclass
class GitHubApp:
    id: int
    slug: str
    name: str
    client_id: str
    client_secret: str
    webhook_secret: str
    private_key: rsa.RSAPrivateKey
    bot_id: int
    permissions: dict[str, str]
    events: list[str]
    callback_urls: list[str] = field(default_factory=list)
    """Registered callback URLs; empty means any `redirect_uri` is accepted."""

    @property
    def private_key_pem(self) -> str:
        """PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`), as GitHub hands it out."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()).decode()

    @property
    def bot_login(self) -> str:
        return f"{self.slug}[bot]"

    def jwt(self, *, iat: int | None = None, exp: int | None = None, iss: str | int | None = None,
            key: rsa.RSAPrivateKey | None = None) -> str:
        """A JWT as the App would make it (for tests of the fake's checks); `iss` may be an int, which
        pyjwt's `encode` refuses but GitHub (and other clients) accept."""
        now = int(time.time())
        payload = {"iat": now - 60 if iat is None else iat, "exp": now + 300 if exp is None else exp,
                   "iss": str(self.id) if iss is None else iss}
        return jwt.api_jws.PyJWS().encode(json.dumps(payload).encode(), key or self.private_key, algorithm="RS256")


@dataclass
class User:
    login: str
    id: int
    name: str | None = None
    email: str | None = None
    public_email: bool = False
    """Whether `email` shows in `/user` and `/users/{login}` (GitHub shows only a public one)."""
    type: str = "User"
    """`User`, `Organization` or `Bot`."""


@dataclass
class Installation:
    id: int
    account: User
    repos: set[str]
    """Full names (`owner/name`) the App is installed on (repository_selection `selected`)."""
    permissions: dict[str, str]
    suspended: bool = False
    created_at: str = ""


@dataclass
class Token:
    value: str
    kind: str
    """`installation`, `user` (access) or `refresh`."""
    expires_at: float
    login: str | None = None
    installation_id: int | None = None
    permissions: dict[str, str] = field(default_factory=dict)
    repos: set[str] | None = None
    """An installation token minted for some repositories only."""
    revoked: bool = False
    pair: str | None = None
    """The access token a refresh token was issued with (and the other way round)."""

    @property
    def valid(self) -> bool:
        return not self.revoked and time.time() < self.expires_at


@dataclass
class Review:
    id: int
    user: str
    state: str
    """REST form: `APPROVED`, `CHANGES_REQUESTED`, `COMMENTED`."""
    body: str
    commit_id: str
    submitted_at: str


@dataclass
class Comment:
    id: int
    number: int
    user: str
    body: str
    created_at: str
    via_app: bool = False


@dataclass
class PullRequest:
    number: int
    id: int
    title: str
    body: str | None
    head: str
    base: str
    user: str
    head_sha: str
    base_sha: str
    created_at: str
    updated_at: str
    draft: bool = False
    state: str = "open"
    merged: bool = False
    merged_at: str | None = None
    merged_by: str | None = None
    merge_commit_sha: str | None = None
    closed_at: str | None = None
    via_app: bool = False
    reviews: list[Review] = field(default_factory=list)


@dataclass
class Repo:
    owner: str
    name: str
    id: int
    path: Path
    private: bool
    default_branch: str
    installation_id: int | None
    collaborators: set[str] | None
    """Logins who may push; None: every user may (the owner always may)."""
    created_at: str
    pulls: dict[int, PullRequest] = field(default_factory=dict)
    comments: list[Comment] = field(default_factory=list)
    next_number: int = 1

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author_name: str
    author_email: str
    committer_name: str
    committer_email: str
    message: str
    parents: tuple[str, ...]
    trailers: tuple[tuple[str, str], ...]
    """(key, value) pairs of the message's trailers (`Co-authored-by`, `Signed-off-by`, ...)."""


@dataclass(frozen=True)
class Push:
    owner: str
    repo: str
    ref: str
    before: str
    """All zeros for a new branch."""
    after: str
    """All zeros for a deleted branch."""
    token: str | None


@dataclass(frozen=True)
class Delivery:
    url: str
    event: str
    delivery_id: str
    status: int
    payload: dict[str, Any]


@dataclass
class _Grant:
    code: str
    login: str
    client_id: str
    redirect_uri: str | None
    challenge: str | None
    expires_at: float


@dataclass
class _Caller:
    kind: str
    """`none`, `jwt`, `installation` or `user`."""
    token: Token | None = None


class _ApiError(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.errors, self.headers = status, message, errors, headers or {}

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message, "documentation_url": DOCS, "status": str(self.status)}
        if self.errors is not None:
            body["errors"] = self.errors
        return web.json_response(body, status=self.status, headers=self.headers)


def _invalid(**error: Any) -> _ApiError:
    """422 `Validation Failed` with one error about a PullRequest (`field`, `code`, `message`)."""
    return _ApiError(422, "Validation Failed", [{"resource": "PullRequest", **error}])


_JSON: web.RequestKey[Any] = web.RequestKey("json")
_CALLER = web.RequestKey("caller", _Caller)
NOT_FOUND = "Not Found"
BAD_CREDENTIALS = "Bad credentials"
NOT_ACCESSIBLE = "Resource not accessible by integration"


# ---------------------------------------------------------------------------------------------


class FakeGitHub:
    def __init__(self, root: Path | None = None, host: str = "127.0.0.1", *, app_id: int = 424242,
                 slug: str = "hosted-agents", bot_id: int = 190000001):
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="fake-github-")) if root is None else root
        self.host = host
        self.port = 0
        self.app = GitHubApp(
            id=app_id, slug=slug, name=slug.replace("-", " ").title(), client_id="Iv23li" + _token("", 14),
            client_secret=secrets.token_hex(20), webhook_secret=secrets.token_hex(16),
            private_key=rsa.generate_private_key(public_exponent=65537, key_size=2048), bot_id=bot_id,
            permissions={"contents": "write", "pull_requests": "write", "issues": "write", "metadata": "read",
                         "email_addresses": "read"},
            events=["pull_request", "pull_request_review", "issue_comment", "push"])
        self.users: dict[str, User] = {}
        """Accounts by lower-case login (users, organizations, the App's bot)."""
        self.repos: dict[str, Repo] = {}
        """By lower-case `owner/name`."""
        self.installations: dict[int, Installation] = {}
        self.tokens: dict[str, Token] = {}
        self.calls: list[Call] = []
        self.git_calls: list[Call] = []
        self.pushes: list[Push] = []
        self.deliveries: list[Delivery] = []
        self.oauth_user: str | None = None
        """The login the OAuth authorize page "signs in" as."""
        self.oauth_deny = False
        """Whether that person denies the App (`error=access_denied`)."""
        self._grants: dict[str, _Grant] = {}
        self._ids = iter(range(1_000_001, 1 << 62))
        self._last_stamp = 0.0
        self._git = GitHttpServer(self.root / "git", push=True)
        self._runner: web.AppRunner | None = None
        self.users[self.app.bot_login.lower()] = User(self.app.bot_login, bot_id, None, None, type="Bot")

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def web_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.web_url + API_PREFIX

    def clone_url(self, owner: str, repo: str) -> str:
        return f"{self.web_url}/{owner}/{repo}.git"

    async def start(self) -> None:
        api = web.Application(middlewares=[self._api_middleware], client_max_size=1 << 24)
        r = api.router
        r.add_get("/app", self._get_app)
        r.add_get("/app/installations", self._list_installations)
        r.add_get("/app/installations/{id:\\d+}", self._get_installation)
        r.add_post("/app/installations/{id:\\d+}/access_tokens", self._create_access_token)
        r.add_get("/installation/repositories", self._installation_repositories)
        r.add_get("/repos/{owner}/{repo}/installation", self._get_repo_installation)
        r.add_get("/repos/{owner}/{repo}", self._get_repo)
        r.add_get("/repos/{owner}/{repo}/branches/{branch:.+}", self._get_branch)
        r.add_get("/repos/{owner}/{repo}/pulls", self._list_pulls)
        r.add_post("/repos/{owner}/{repo}/pulls", self._create_pull)
        r.add_get("/repos/{owner}/{repo}/pulls/{number:\\d+}", self._get_pull)
        r.add_patch("/repos/{owner}/{repo}/pulls/{number:\\d+}", self._update_pull)
        r.add_get("/repos/{owner}/{repo}/pulls/{number:\\d+}/merge", self._is_merged)
        r.add_put("/repos/{owner}/{repo}/pulls/{number:\\d+}/merge", self._merge_pull)
        r.add_get("/repos/{owner}/{repo}/pulls/{number:\\d+}/reviews", self._list_reviews)
        r.add_get("/repos/{owner}/{repo}/issues/{number:\\d+}", self._get_issue)
        r.add_get("/repos/{owner}/{repo}/issues/{number:\\d+}/comments", self._list_comments)
        r.add_post("/repos/{owner}/{repo}/issues/{number:\\d+}/comments", self._create_comment)
        r.add_get("/user", self._get_authenticated_user)
        r.add_get("/user/emails", self._get_emails)
        r.add_get("/users/{login}", self._get_user)
        r.add_route("*", "/{tail:.*}", self._api_not_found)

        app = web.Application(client_max_size=1 << 40)
        app.add_subapp(API_PREFIX, api)
        app.router.add_get("/login/oauth/authorize", self._authorize)
        app.router.add_post("/login/oauth/access_token", self._access_token)
        app.router.add_route("*", "/{tail:.*}", self._web)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    async def __aenter__(self) -> FakeGitHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- test set-up --------------------------------------------------------------------------

    def add_user(self, login: str, id: int, name: str | None = None, email: str | None = None, *,
                 public_email: bool = False, type: str = "User") -> User:
        """An account. `email` is the primary verified address (`/user/emails`)."""
        user = User(login, id, name, email, public_email, type)
        self.users[login.lower()] = user
        return user

    def add_repo(self, owner: str, name: str, files: dict[str, str] | None = None, default_branch: str = "main",
                 private: bool = True, *, installed: bool = True, collaborators: set[str] | None = None) -> Repo:
        """A bare git repository with one commit of `files` on `default_branch`, and its REST record.
        With `installed`, the App's installation on `owner` (made on first use) includes it."""
        if owner.lower() not in self.users:
            self.add_user(owner, next(self._ids), type="Organization")
        path = bare_repo(self.root / "git", f"{owner}/{name}", files or {"README.md": f"# {name}\n"}, default_branch)
        repo = Repo(owner, name, next(self._ids), path, private, default_branch, None,
                    None if collaborators is None else set(collaborators), self._stamp())
        self.repos[repo.full_name.lower()] = repo
        if installed:
            self.install(owner, name)
        return repo

    def install(self, owner: str, name: str | None = None) -> Installation:
        """The App's installation on `owner` (made if missing), with `owner/name` added to it."""
        installation = next((i for i in self.installations.values() if i.account.login.lower() == owner.lower()), None)
        if installation is None:
            account = self.users.get(owner.lower()) or self.add_user(owner, next(self._ids), type="Organization")
            installation = Installation(next(self._ids), account, set(), dict(self.app.permissions),
                                        created_at=self._stamp())
            self.installations[installation.id] = installation
        if name is not None:
            repo = self._repo(owner, name)
            installation.repos.add(repo.full_name)
            repo.installation_id = installation.id
        return installation

    def uninstall(self, owner: str) -> None:
        """Removes the installation on `owner`: its tokens stop working."""
        for installation in [i for i in self.installations.values() if i.account.login.lower() == owner.lower()]:
            del self.installations[installation.id]
            for repo in self.repos.values():
                if repo.installation_id == installation.id:
                    repo.installation_id = None
            for token in self.tokens.values():
                if token.installation_id == installation.id:
                    token.revoked = True

    def installation_token(self, owner: str, permissions: dict[str, str] | None = None) -> str:
        """A fresh installation token for the installation on `owner` (as the App would mint it)."""
        installation = self.install(owner)
        return self._mint_installation_token(installation, permissions or dict(installation.permissions), None).value

    def user_token(self, login: str) -> tuple[str, str]:
        """A fresh (access, refresh) pair for `login`, as the OAuth flow would give."""
        answer = self._issue_user_tokens(login)
        return answer["access_token"], answer["refresh_token"]

    def expire_tokens(self) -> None:
        """Every installation token expires now."""
        for token in self.tokens.values():
            if token.kind == "installation":
                token.expires_at = time.time() - 1

    def expire_user_tokens(self) -> None:
        """Every user access token expires now (refresh tokens still work)."""
        for token in self.tokens.values():
            if token.kind == "user":
                token.expires_at = time.time() - 1

    def expire_refresh_tokens(self) -> None:
        for token in self.tokens.values():
            if token.kind == "refresh":
                token.expires_at = time.time() - 1

    def revoke(self, value: str) -> None:
        """One token stops working (a user token takes its refresh token along, and back)."""
        token = self.tokens[value]
        token.revoked = True
        if token.pair in self.tokens:
            self.tokens[token.pair].revoked = True

    # -- git ----------------------------------------------------------------------------------

    def _repo(self, owner: str, name: str) -> Repo:
        return self.repos[f"{owner}/{name}".lower()]

    def git(self, owner: str, repo: str, *args: str, input: str | None = None, env: dict[str, str] | None = None,
            check: bool = True) -> str:
        """Runs git in the bare repository; its stdout, stripped."""
        result = subprocess.run(["git", *args], cwd=self._repo(owner, repo).path, input=input, text=True,
                                capture_output=True, check=check, env={**os.environ, **(env or {})})
        return result.stdout.strip()

    def branch_head(self, owner: str, repo: str, branch: str) -> str | None:
        """The commit `branch` points at in the remote, None if there is no such branch."""
        return self._rev(self._repo(owner, repo), branch)

    def branches(self, owner: str, repo: str) -> dict[str, str]:
        out = self.git(owner, repo, "for-each-ref", "--format=%(refname:lstrip=2) %(objectname)", "refs/heads/")
        return dict(line.rsplit(" ", 1) for line in out.splitlines())

    def commit_info(self, owner: str, repo: str, sha: str) -> CommitInfo:
        fmt = "%H%x00%an%x00%ae%x00%cn%x00%ce%x00%P%x00%(trailers:unfold,only,separator=%x01)%x00%B"
        out = self.git(owner, repo, "log", "-1", f"--format={fmt}", sha, "--")
        sha_, an, ae, cn, ce, parents, trailers, message = out.split("\x00", 7)
        pairs = tuple((k.strip(), v.strip()) for k, _, v in (t.partition(":") for t in trailers.split("\x01") if t))
        return CommitInfo(sha_, an, ae, cn, ce, message.strip() + "\n", tuple(parents.split()), pairs)

    def read_file(self, owner: str, repo: str, ref: str, path: str) -> str | None:
        result = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=self._repo(owner, repo).path,
                                capture_output=True, text=True)
        return result.stdout if result.returncode == 0 else None

    def commit(self, owner: str, repo: str, branch: str, files: dict[str, str | None], message: str = "change", *,
               author: tuple[str, str] = ("Test", "t@example.com"), base: str | None = None) -> str:
        """A commit on `branch` (made from `base`, default the default branch, if missing) writing
        `files` (None deletes one), straight into the remote; its sha. Records a `Push` (token None)."""
        record = self._repo(owner, repo)
        before = self._rev(record, branch)
        parent = before or self._rev(record, base or record.default_branch)
        if parent is None:
            raise ValueError(f"no branch {base or record.default_branch} in {owner}/{repo}")
        env = {"GIT_AUTHOR_NAME": author[0], "GIT_AUTHOR_EMAIL": author[1],
               "GIT_COMMITTER_NAME": author[0], "GIT_COMMITTER_EMAIL": author[1]}
        with tempfile.TemporaryDirectory() as tmp:
            index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.git(owner, repo, "read-tree", parent, env=index)
            for path, content in files.items():
                if content is None:
                    self.git(owner, repo, "update-index", "--force-remove", "--", path, env=index)
                else:
                    blob = self.git(owner, repo, "hash-object", "-w", "--stdin", input=content)
                    self.git(owner, repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=index)
            tree = self.git(owner, repo, "write-tree", env=index)
        sha = self.git(owner, repo, "commit-tree", tree, "-p", parent, "-m", message, env=env)
        self.git(owner, repo, "update-ref", f"refs/heads/{branch}", sha, before or ZERO_SHA)
        self.pushes.append(Push(owner, repo, f"refs/heads/{branch}", before or ZERO_SHA, sha, None))
        return sha

    @staticmethod
    def _rev(repo: Repo, branch: str) -> str | None:
        result = subprocess.run(["git", "rev-parse", "--verify", "-q", f"refs/heads/{branch}^{{commit}}"],
                                cwd=repo.path, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else None

    def _refs(self, repo: Repo) -> dict[str, str]:
        out = subprocess.run(["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/"],
                             cwd=repo.path, capture_output=True, text=True, check=True).stdout
        return dict(line.rsplit(" ", 1) for line in out.splitlines())

    # -- pull request helpers (state changes from "people on GitHub"; each returns the webhook payload) --

    def pull(self, owner: str, repo: str, number: int) -> PullRequest:
        return self._repo(owner, repo).pulls[number]

    def open_pull(self, owner: str, repo: str, head: str, title: str = "A change", *, user: str, base: str | None = None,
                  body: str | None = None, draft: bool = False) -> dict[str, Any]:
        """A PR opened by `user` on GitHub (not through the API); the `opened` payload."""
        record = self._repo(owner, repo)
        pr = self._new_pull(record, title, body, head, base or record.default_branch, draft, user, via_app=False)
        return self.pull_request_payload(owner, repo, pr.number, "opened", sender=user)

    def merge(self, owner: str, repo: str, number: int, by: str | None = None) -> dict[str, Any]:
        """Merges the PR for real (a merge commit on its base branch) and marks it merged; the
        `closed` payload with `merged: true`."""
        record = self._repo(owner, repo)
        self._do_merge(record, record.pulls[number], by or owner)
        return self.pull_request_payload(owner, repo, number, "closed", sender=by or owner)

    def close(self, owner: str, repo: str, number: int, by: str | None = None) -> dict[str, Any]:
        """Closes the PR without merging; the `closed` payload with `merged: false`."""
        record = self._repo(owner, repo)
        pr = record.pulls[number]
        self._head_sha(record, pr)
        pr.state, pr.closed_at = "closed", self._stamp()
        pr.updated_at = pr.closed_at
        return self.pull_request_payload(owner, repo, number, "closed", sender=by or owner)

    def add_review(self, owner: str, repo: str, number: int, user: str, state: str = "approved",
                   body: str = "") -> dict[str, Any]:
        """A review submitted by `user` (`approved`, `changes_requested`, `commented`); the
        `pull_request_review` `submitted` payload."""
        record = self._repo(owner, repo)
        pr = record.pulls[number]
        review = Review(next(self._ids), user, state.upper(), body, self._head_sha(record, pr), self._stamp())
        pr.reviews.append(review)
        pr.updated_at = review.submitted_at
        return self._event(record, "submitted", user, review=self._review_json(record, pr, review, webhook=True),
                           pull_request=self._pr_json(record, pr))

    def add_comment(self, owner: str, repo: str, number: int, user: str, body: str) -> dict[str, Any]:
        """A comment by `user` on the PR's conversation; the `issue_comment` `created` payload."""
        record = self._repo(owner, repo)
        pr = record.pulls[number]
        comment = Comment(next(self._ids), number, user, body, self._stamp())
        record.comments.append(comment)
        pr.updated_at = comment.created_at
        return self.issue_comment_payload(owner, repo, comment.id)

    def pull_request_payload(self, owner: str, repo: str, number: int, action: str, *, sender: str | None = None,
                             before: str | None = None) -> dict[str, Any]:
        """The `pull_request` payload for the PR as it is now (`opened`, `synchronize` (give `before`),
        `closed`, `reopened`, `edited`, ...)."""
        record = self._repo(owner, repo)
        pr = record.pulls[number]
        extra: dict[str, Any] = {}
        if action == "synchronize":
            after = self._head_sha(record, pr)
            if before is None:
                ref = f"refs/heads/{pr.head}"
                pushed = [p for p in self.pushes if (p.owner, p.repo, p.ref, p.after) == (record.owner, record.name, ref, after)]
                before = pushed[-1].before if pushed else pr.base_sha
            extra = {"before": before, "after": after}
        return self._event(record, action, sender or pr.user, number=number, pull_request=self._pr_json(record, pr),
                           **extra)

    def issue_comment_payload(self, owner: str, repo: str, comment_id: int, action: str = "created") -> dict[str, Any]:
        record = self._repo(owner, repo)
        comment = next(c for c in record.comments if c.id == comment_id)
        pr = record.pulls[comment.number]
        return self._event(record, action, comment.user, issue=self._issue_json(record, pr),
                           comment=self._comment_json(record, comment))

    def installation_payload(self, owner: str, action: str = "created", sender: str | None = None) -> dict[str, Any]:
        """`installation` (`created`, `deleted`, `suspend`, `unsuspend`, ...) for the installation on `owner`."""
        installation = self.install(owner)
        repos = [self.repos[n.lower()] for n in sorted(installation.repos)]
        return {"action": action, "installation": self._installation_json(installation),
                "repositories": [{"id": r.id, "node_id": _node_id("Repository", r.id), "name": r.name,
                                  "full_name": r.full_name, "private": r.private} for r in repos],
                "requester": None, "sender": self._user_json(sender or owner)}

    def _event(self, repo: Repo, action: str, sender: str, **body: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {"action": action, **body, "repository": self._repo_json(repo),
                                   "sender": self._user_json(sender)}
        if repo.installation_id is not None:
            payload["installation"] = {"id": repo.installation_id,
                                       "node_id": _node_id("Installation", repo.installation_id)}
        return payload

    # -- webhooks -----------------------------------------------------------------------------

    async def deliver(self, url: str, event: str, payload: dict[str, Any], delivery_id: str | None = None,
                      secret: str | None = None) -> int:
        """POSTs `payload` to `url` as GitHub delivers a webhook (signed with the App's webhook
        secret, or `secret`); the HTTP status of the answer."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        key = self.app.webhook_secret if secret is None else secret
        delivery_id = delivery_id or str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/5f1c2a9",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery_id,
            "X-GitHub-Hook-ID": str(self.app.id + 1),
            "X-GitHub-Hook-Installation-Target-Type": "integration",
            "X-GitHub-Hook-Installation-Target-ID": str(self.app.id),
            "X-Hub-Signature": "sha1=" + hmac.new(key.encode(), body, hashlib.sha1).hexdigest(),
            "X-Hub-Signature-256": sign(key, body),
        }
        async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
            await resp.read()
            self.deliveries.append(Delivery(url, event, delivery_id, resp.status, payload))
            return resp.status

    # -- JSON shapes --------------------------------------------------------------------------

    def _stamp(self) -> str:
        """Now, strictly later than the last stamp (so `updated_at` orders every change)."""
        self._last_stamp = max(time.time(), self._last_stamp + 1)
        return iso(self._last_stamp)

    def _user(self, login: str) -> User:
        user = self.users.get(login.lower())
        if user is None:
            raise KeyError(f"no GitHub user {login!r}: add it with add_user()")
        return user

    def _user_json(self, login: str) -> dict[str, Any]:
        user = self._user(login)
        html = f"{self.web_url}/apps/{self.app.slug}" if user.type == "Bot" else f"{self.web_url}/{user.login}"
        url = f"{self.api_url}/users/{quote(user.login)}"
        return {"login": user.login, "id": user.id, "node_id": _node_id(user.type, user.id),
                "avatar_url": f"{self.web_url}/avatars/u/{user.id}", "gravatar_id": "", "url": url, "html_url": html,
                "repos_url": f"{url}/repos", "type": user.type, "user_view_type": "public", "site_admin": False}

    def _full_user_json(self, login: str) -> dict[str, Any]:
        user = self._user(login)
        return {**self._user_json(login), "name": user.name, "company": None, "blog": "", "location": None,
                "email": user.email if user.public_email else None, "hireable": None, "bio": None,
                "twitter_username": None, "public_repos": 0, "public_gists": 0, "followers": 0, "following": 0,
                "created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-01T00:00:00Z"}

    def _app_json(self) -> dict[str, Any]:
        return {"id": self.app.id, "slug": self.app.slug, "node_id": _node_id("Integration", self.app.id),
                "client_id": self.app.client_id, "owner": None, "name": self.app.name,
                "description": "", "external_url": "http://agents.test", "html_url": f"{self.web_url}/apps/{self.app.slug}",
                "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z",
                "permissions": dict(self.app.permissions), "events": list(self.app.events),
                "installations_count": len(self.installations)}

    def _installation_json(self, installation: Installation) -> dict[str, Any]:
        account = installation.account
        settings = (f"{self.web_url}/organizations/{account.login}/settings/installations/{installation.id}"
                    if account.type == "Organization" else f"{self.web_url}/settings/installations/{installation.id}")
        return {"id": installation.id, "client_id": self.app.client_id, "account": self._user_json(account.login),
                "repository_selection": "selected",
                "access_tokens_url": f"{self.api_url}/app/installations/{installation.id}/access_tokens",
                "repositories_url": f"{self.api_url}/installation/repositories", "html_url": settings,
                "app_id": self.app.id, "app_slug": self.app.slug, "target_id": account.id, "target_type": account.type,
                "permissions": dict(installation.permissions), "events": list(self.app.events),
                "created_at": installation.created_at, "updated_at": installation.created_at,
                "single_file_name": None, "has_multiple_single_files": False, "single_file_paths": [],
                "suspended_by": None, "suspended_at": None}

    def _repo_json(self, repo: Repo, caller: _Caller | None = None) -> dict[str, Any]:
        url = f"{self.api_url}/repos/{repo.full_name}"
        data: dict[str, Any] = {
            "id": repo.id, "node_id": _node_id("Repository", repo.id), "name": repo.name, "full_name": repo.full_name,
            "private": repo.private, "visibility": "private" if repo.private else "public",
            "owner": self._user_json(repo.owner), "html_url": f"{self.web_url}/{repo.full_name}", "description": None,
            "fork": False, "url": url, "pulls_url": f"{url}/pulls{{/number}}", "issues_url": f"{url}/issues{{/number}}",
            "branches_url": f"{url}/branches{{/branch}}", "git_url": f"git://{self.host}:{self.port}/{repo.full_name}.git",
            "ssh_url": f"git@{self.host}:{repo.full_name}.git", "clone_url": self.clone_url(repo.owner, repo.name),
            "created_at": repo.created_at, "updated_at": repo.created_at, "pushed_at": repo.created_at,
            "default_branch": repo.default_branch, "archived": False, "disabled": False,
            "allow_merge_commit": True, "allow_squash_merge": True, "allow_rebase_merge": True,
        }
        if caller is not None and caller.kind in ("user", "installation"):
            push = self._can_push(caller, repo)
            data["permissions"] = {"admin": False, "maintain": False, "push": push, "triage": push, "pull": True}
        return data

    def _ref_json(self, repo: Repo, ref: str, sha: str) -> dict[str, Any]:
        return {"label": f"{repo.owner}:{ref}", "ref": ref, "sha": sha, "user": self._user_json(repo.owner),
                "repo": self._repo_json(repo)}

    def _head_sha(self, repo: Repo, pr: PullRequest) -> str:
        if pr.state == "open":
            pr.head_sha = self._rev(repo, pr.head) or pr.head_sha
        return pr.head_sha

    def _association(self, repo: Repo, login: str) -> str:
        if login.lower() == repo.owner.lower():
            return "OWNER"
        if self._user(login).type == "User" and (
                repo.collaborators is None or login.lower() in {c.lower() for c in repo.collaborators}):
            return "COLLABORATOR"
        return "NONE"

    def _pr_json(self, repo: Repo, pr: PullRequest) -> dict[str, Any]:
        url = f"{self.api_url}/repos/{repo.full_name}/pulls/{pr.number}"
        issue_url = f"{self.api_url}/repos/{repo.full_name}/issues/{pr.number}"
        html = f"{self.web_url}/{repo.full_name}/pull/{pr.number}"
        head_sha = self._head_sha(repo, pr)
        if pr.state == "open":
            pr.base_sha = self._rev(repo, pr.base) or pr.base_sha
        return {
            "url": url, "id": pr.id, "node_id": _node_id("PullRequest", pr.id), "html_url": html,
            "diff_url": f"{html}.diff", "patch_url": f"{html}.patch", "issue_url": issue_url,
            "commits_url": f"{url}/commits", "review_comments_url": f"{url}/comments",
            "review_comment_url": f"{self.api_url}/repos/{repo.full_name}/pulls/comments{{/number}}",
            "comments_url": f"{issue_url}/comments",
            "statuses_url": f"{self.api_url}/repos/{repo.full_name}/statuses/{head_sha}",
            "number": pr.number, "state": pr.state, "locked": False, "title": pr.title, "user": self._user_json(pr.user),
            "body": pr.body, "labels": [], "milestone": None, "active_lock_reason": None,
            "created_at": pr.created_at, "updated_at": pr.updated_at, "closed_at": pr.closed_at,
            "merged_at": pr.merged_at, "merge_commit_sha": pr.merge_commit_sha, "assignee": None, "assignees": [],
            "requested_reviewers": [], "requested_teams": [], "draft": pr.draft,
            "head": self._ref_json(repo, pr.head, head_sha), "base": self._ref_json(repo, pr.base, pr.base_sha),
            "_links": {"self": {"href": url}, "html": {"href": html}, "issue": {"href": issue_url},
                       "comments": {"href": f"{issue_url}/comments"}},
            "author_association": self._association(repo, pr.user), "auto_merge": None,
            "merged": pr.merged, "mergeable": None if pr.merged else True, "rebaseable": True,
            "mergeable_state": "clean" if pr.state == "open" else "unknown",
            "merged_by": self._user_json(pr.merged_by) if pr.merged_by else None,
            "comments": sum(1 for c in repo.comments if c.number == pr.number), "review_comments": 0,
            "maintainer_can_modify": False, "commits": 1, "additions": 0, "deletions": 0, "changed_files": 0,
        }

    def _issue_json(self, repo: Repo, pr: PullRequest) -> dict[str, Any]:
        url = f"{self.api_url}/repos/{repo.full_name}/issues/{pr.number}"
        html = f"{self.web_url}/{repo.full_name}/pull/{pr.number}"
        return {
            "url": url, "repository_url": f"{self.api_url}/repos/{repo.full_name}",
            "comments_url": f"{url}/comments", "html_url": html, "id": pr.id + 1,
            "node_id": _node_id("Issue", pr.id + 1), "number": pr.number, "title": pr.title,
            "user": self._user_json(pr.user), "labels": [], "state": pr.state, "locked": False, "assignee": None,
            "assignees": [], "milestone": None, "comments": sum(1 for c in repo.comments if c.number == pr.number),
            "created_at": pr.created_at, "updated_at": pr.updated_at, "closed_at": pr.closed_at,
            "author_association": self._association(repo, pr.user), "body": pr.body, "draft": pr.draft,
            "state_reason": None,
            "pull_request": {"url": f"{self.api_url}/repos/{repo.full_name}/pulls/{pr.number}", "html_url": html,
                             "diff_url": f"{html}.diff", "patch_url": f"{html}.patch", "merged_at": pr.merged_at},
        }

    def _comment_json(self, repo: Repo, comment: Comment) -> dict[str, Any]:
        api = f"{self.api_url}/repos/{repo.full_name}"
        return {"id": comment.id, "node_id": _node_id("IssueComment", comment.id),
                "url": f"{api}/issues/comments/{comment.id}",
                "html_url": f"{self.web_url}/{repo.full_name}/pull/{comment.number}#issuecomment-{comment.id}",
                "issue_url": f"{api}/issues/{comment.number}", "body": comment.body,
                "user": self._user_json(comment.user), "created_at": comment.created_at,
                "updated_at": comment.created_at, "author_association": self._association(repo, comment.user),
                "performed_via_github_app": self._app_json() if comment.via_app else None,
                "reactions": {"url": f"{api}/issues/comments/{comment.id}/reactions", "total_count": 0}}

    def _review_json(self, repo: Repo, pr: PullRequest, review: Review, webhook: bool = False) -> dict[str, Any]:
        html = f"{self.web_url}/{repo.full_name}/pull/{pr.number}#pullrequestreview-{review.id}"
        pull_url = f"{self.api_url}/repos/{repo.full_name}/pulls/{pr.number}"
        return {"id": review.id, "node_id": _node_id("PullRequestReview", review.id),
                "user": self._user_json(review.user), "body": review.body or None,
                "state": review.state.lower() if webhook else review.state, "html_url": html,
                "pull_request_url": pull_url, "submitted_at": review.submitted_at, "commit_id": review.commit_id,
                "author_association": self._association(repo, review.user),
                "_links": {"html": {"href": html}, "pull_request": {"href": pull_url}}}

    # -- API plumbing -------------------------------------------------------------------------

    @web.middleware
    async def _api_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path.removeprefix(API_PREFIX) or "/"
        token = self._credential(request.headers.get("Authorization"))
        body: Any = None
        raw = await request.read() if request.body_exists else b""
        try:
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    self.calls.append(Call(request.method, path, token, raw.decode("utf-8", "replace"),
                                           dict(request.query)))
                    raise _ApiError(400, "Problems parsing JSON") from None
            self.calls.append(Call(request.method, path, token, body, dict(request.query)))
            request[_JSON] = body
            request[_CALLER] = self._authenticate(request.headers.get("Authorization"))
            response: web.StreamResponse = await handler(request)
        except _ApiError as error:
            response = error.response()
        except web.HTTPNotFound:
            response = _ApiError(404, NOT_FOUND).response()
        except web.HTTPMethodNotAllowed:
            response = _ApiError(404, NOT_FOUND).response()
        response.headers.update({
            "X-GitHub-Media-Type": "github.v3; format=json", "X-GitHub-Api-Version-Selected": "2022-11-28",
            "X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "4999", "X-RateLimit-Used": "1",
            "X-RateLimit-Reset": str(int(time.time()) + 3600), "X-RateLimit-Resource": "core",
            "X-GitHub-Request-Id": uuid.uuid4().hex[:20].upper()})
        return response

    def _authenticate(self, header: str | None) -> _Caller:
        if not header:
            return _Caller("none")
        scheme = header.strip().partition(" ")[0].lower()
        value = self._credential(header)
        if value is None:
            raise _ApiError(401, BAD_CREDENTIALS)
        token = self.tokens.get(value)
        if token is not None and token.kind in ("installation", "user"):
            if not token.valid or (token.installation_id is not None and token.installation_id not in self.installations):
                raise _ApiError(401, BAD_CREDENTIALS)
            return _Caller(token.kind, token)
        if value.count(".") == 2 and scheme == "bearer":
            self._verify_jwt(value)
            return _Caller("jwt")
        raise _ApiError(401, BAD_CREDENTIALS)

    def _verify_jwt(self, value: str) -> None:
        try:
            claims = jwt.decode(value, self.app.private_key.public_key(), algorithms=["RS256"], leeway=CLOCK_SKEW,
                                options={"require": ["iat", "exp", "iss"], "verify_iss": False})
        except jwt.ExpiredSignatureError:
            raise _ApiError(401, "'Expiration time' claim ('exp') must be a numeric value representing the future "
                                 "time at which the assertion expires") from None
        except jwt.ImmatureSignatureError:
            raise _ApiError(401, "'Issued at' claim ('iat') must be an Integer representing the time that the "
                                 "assertion was issued") from None
        except jwt.PyJWTError:
            raise _ApiError(401, "A JSON web token could not be decoded") from None
        now = time.time()
        iat, exp = claims["iat"], claims["exp"]
        if exp - now > JWT_MAX_TTL + CLOCK_SKEW or exp - iat > JWT_MAX_TTL + CLOCK_SKEW:
            raise _ApiError(401, "'Expiration time' claim ('exp') is too far in the future")
        if exp <= iat:
            raise _ApiError(401, "'Expiration time' claim ('exp') must be after 'Issued at' claim ('iat')")
        if str(claims["iss"]) not in (str(self.app.id), self.app.client_id):
            raise _ApiError(401, "A JSON web token could not be decoded")

    @staticmethod
    def _need_jwt(request: web.Request) -> None:
        caller: _Caller = request[_CALLER]
        if caller.kind == "none":
            raise _ApiError(401, "A JSON web token is required to access this endpoint.")
        if caller.kind != "jwt":
            raise _ApiError(401, "A JSON web token could not be decoded")

    def _installation_for(self, repo: Repo) -> Installation | None:
        if repo.installation_id is None:
            return None
        return self.installations.get(repo.installation_id)

    def _covers(self, caller: _Caller, repo: Repo) -> bool:
        """Whether the App acts on `repo` with this credential: an installation token of the repo's
        installation (and minted for it), or a user token where the App is installed."""
        if caller.kind == "installation":
            assert caller.token is not None
            repos = caller.token.repos
            return caller.token.installation_id == repo.installation_id and (repos is None or repo.full_name in repos)
        return caller.kind == "user" and self._installation_for(repo) is not None

    def _visible(self, caller: _Caller, repo: Repo) -> bool:
        """Public repos are visible to all; private ones to covering tokens (and, for a user token,
        to a user who may push)."""
        if not repo.private:
            return True
        return self._covers(caller, repo) and (caller.kind != "user" or self._user_may_push(caller, repo))

    def _user_may_push(self, caller: _Caller, repo: Repo) -> bool:
        assert caller.token is not None and caller.token.login is not None
        login = caller.token.login
        return (login.lower() == repo.owner.lower() or repo.collaborators is None
                or login.lower() in {c.lower() for c in repo.collaborators})

    def _permissions(self, caller: _Caller, repo: Repo) -> dict[str, str]:
        """The App's permissions on `repo` through this credential (none if it does not cover it)."""
        if not self._covers(caller, repo):
            return {}
        if caller.kind == "installation":
            assert caller.token is not None
            return caller.token.permissions
        installation = self._installation_for(repo)
        return installation.permissions if caller.kind == "user" and installation is not None else {}

    def _can_push(self, caller: _Caller, repo: Repo) -> bool:
        ok = _level(self._permissions(caller, repo).get("contents")) >= LEVELS["write"]
        return ok and (caller.kind != "user" or self._user_may_push(caller, repo))

    def _repo_for(self, request: web.Request, permission: str | None = None) -> Repo:
        """The repo of the path, if the caller may see it (and has `permission`: write)."""
        caller: _Caller = request[_CALLER]
        repo = self.repos.get(f"{request.match_info['owner']}/{request.match_info['repo']}".lower())
        if caller.kind == "jwt":
            raise _ApiError(403, NOT_ACCESSIBLE)
        if repo is None or not self._visible(caller, repo):
            raise _ApiError(404, NOT_FOUND)
        if permission is not None:
            if caller.kind == "none":
                raise _ApiError(401, "Requires authentication")
            level = _level(self._permissions(caller, repo).get(permission))
            if level < LEVELS["write"] or (caller.kind == "user" and not self._user_may_push(caller, repo)):
                raise _ApiError(403, NOT_ACCESSIBLE, headers={"X-Accepted-GitHub-Permissions": f"{permission}=write"})
        return repo

    def _actor(self, request: web.Request) -> tuple[str, bool]:
        """(login, via_app) of who acts: the user of a user token, the App's bot for an installation token."""
        caller: _Caller = request[_CALLER]
        assert caller.token is not None
        if caller.kind == "user":
            assert caller.token.login is not None
            return caller.token.login, False
        return self.app.bot_login, True

    def _paginate(self, request: web.Request, items: list[Any]) -> web.Response:
        try:
            per_page = max(1, min(100, int(request.query.get("per_page", "30"))))
            page = max(1, int(request.query.get("page", "1")))
        except ValueError:
            raise _ApiError(422, "Validation Failed") from None
        last = max(1, -(-len(items) // per_page))
        headers = {}
        if len(items) > per_page:
            def link(n: int) -> str:
                query = urlencode({**request.query, "page": str(n), "per_page": str(per_page)})
                return f"<{self.api_url}{request.path.removeprefix(API_PREFIX)}?{query}>"

            rels = []
            if page > 1:
                rels += [f'{link(page - 1)}; rel="prev"', f'{link(1)}; rel="first"']
            if page < last:
                rels += [f'{link(page + 1)}; rel="next"', f'{link(last)}; rel="last"']
            if rels:
                headers["Link"] = ", ".join(rels)
        return web.json_response(items[(page - 1) * per_page:page * per_page], headers=headers)

    @staticmethod
    async def _api_not_found(request: web.Request) -> web.Response:
        raise _ApiError(404, NOT_FOUND)

    # -- App endpoints ------------------------------------------------------------------------

    async def _get_app(self, request: web.Request) -> web.Response:
        self._need_jwt(request)
        return web.json_response(self._app_json())

    async def _list_installations(self, request: web.Request) -> web.Response:
        self._need_jwt(request)
        return self._paginate(request, [self._installation_json(i) for i in self.installations.values()])

    async def _get_installation(self, request: web.Request) -> web.Response:
        self._need_jwt(request)
        installation = self.installations.get(int(request.match_info["id"]))
        if installation is None:
            raise _ApiError(404, NOT_FOUND)
        return web.json_response(self._installation_json(installation))

    async def _get_repo_installation(self, request: web.Request) -> web.Response:
        self._need_jwt(request)
        repo = self.repos.get(f"{request.match_info['owner']}/{request.match_info['repo']}".lower())
        if repo is None or repo.installation_id is None or repo.installation_id not in self.installations:
            raise _ApiError(404, NOT_FOUND)
        return web.json_response(self._installation_json(self.installations[repo.installation_id]))

    async def _create_access_token(self, request: web.Request) -> web.Response:
        self._need_jwt(request)
        installation = self.installations.get(int(request.match_info["id"]))
        if installation is None:
            raise _ApiError(404, NOT_FOUND)
        if installation.suspended:
            raise _ApiError(403, "This installation has been suspended")
        body = request[_JSON] or {}
        if not isinstance(body, dict):
            raise _ApiError(400, "Problems parsing JSON")
        permissions = body.get("permissions") or dict(installation.permissions)
        for name, level in permissions.items():
            if level not in LEVELS or _level(level) > _level(installation.permissions.get(name)):
                raise _ApiError(422, "The permissions requested are not granted to this installation.")
        repos: set[str] | None = None
        names = body.get("repositories")
        ids = body.get("repository_ids")
        if names or ids:
            repos = set()
            by_name = {r.name: r for r in self.repos.values() if r.full_name in installation.repos}
            by_id = {r.id: r for r in by_name.values()}
            for name in names or []:
                if name not in by_name:
                    raise _ApiError(422, "There is at least one repository that does not exist or is not accessible "
                                         "to the parent installation.")
                repos.add(by_name[name].full_name)
            for repo_id in ids or []:
                if repo_id not in by_id:
                    raise _ApiError(422, "There is at least one repository that does not exist or is not accessible "
                                         "to the parent installation.")
                repos.add(by_id[repo_id].full_name)
        token = self._mint_installation_token(installation, dict(permissions), repos)
        answer: dict[str, Any] = {"token": token.value, "expires_at": iso(token.expires_at),
                                  "permissions": token.permissions, "repository_selection": "selected"}
        if repos is not None:
            answer["repositories"] = [self._repo_json(self.repos[n.lower()]) for n in sorted(repos)]
        return web.json_response(answer, status=201)

    def _mint_installation_token(self, installation: Installation, permissions: dict[str, str],
                                 repos: set[str] | None) -> Token:
        token = Token(_token("ghs_"), "installation", time.time() + INSTALLATION_TOKEN_TTL,
                      installation_id=installation.id, permissions=permissions, repos=repos)
        self.tokens[token.value] = token
        return token

    async def _installation_repositories(self, request: web.Request) -> web.Response:
        caller: _Caller = request[_CALLER]
        if caller.kind != "installation":
            raise _ApiError(403, "You must authenticate with an installation access token in order to list "
                                 "repositories for an installation.")
        repos = [r for r in self.repos.values() if self._covers(caller, r)]
        return web.json_response({"total_count": len(repos), "repository_selection": "selected",
                                  "repositories": [self._repo_json(r, caller) for r in repos]})

    # -- repository endpoints -----------------------------------------------------------------

    async def _get_repo(self, request: web.Request) -> web.Response:
        repo = self._repo_for(request)
        return web.json_response(self._repo_json(repo, request[_CALLER]))

    async def _get_branch(self, request: web.Request) -> web.Response:
        repo = self._repo_for(request)
        branch = request.match_info["branch"]
        sha = self._rev(repo, branch)
        if sha is None:
            raise _ApiError(404, "Branch not found")
        return web.json_response({"name": branch, "commit": {"sha": sha, "url": f"{self.api_url}/repos/"
                                  f"{repo.full_name}/commits/{sha}"}, "protected": False,
                                  "_links": {"self": f"{self.api_url}/repos/{repo.full_name}/branches/{branch}",
                                             "html": f"{self.web_url}/{repo.full_name}/tree/{branch}"}})

    def _pull_of(self, request: web.Request, permission: str | None = None) -> tuple[Repo, PullRequest]:
        repo = self._repo_for(request, permission)
        pr = repo.pulls.get(int(request.match_info["number"]))
        if pr is None:
            raise _ApiError(404, NOT_FOUND)
        return repo, pr

    async def _list_pulls(self, request: web.Request) -> web.Response:
        repo = self._repo_for(request)
        state = request.query.get("state", "open")
        if state not in ("open", "closed", "all"):
            raise _ApiError(422, "Validation Failed", [{"resource": "Issue", "field": "state", "code": "invalid"}])
        pulls = [p for p in repo.pulls.values() if state == "all" or p.state == state]
        head = request.query.get("head")
        if head and ":" in head:  # GitHub ignores a head filter without its `owner:` part
            owner, _, ref = head.partition(":")
            pulls = [p for p in pulls if owner.lower() == repo.owner.lower() and p.head == ref]
        if base := request.query.get("base"):
            pulls = [p for p in pulls if p.base == base]
        sort = request.query.get("sort", "created")
        key = {"updated": lambda p: p.updated_at}.get(sort, lambda p: (p.created_at, p.number))
        descending = request.query.get("direction", "desc") == "desc"
        pulls.sort(key=key, reverse=descending)
        return self._paginate(request, [self._pr_json(repo, p) for p in pulls])

    async def _create_pull(self, request: web.Request) -> web.Response:
        repo = self._repo_for(request, "pull_requests")
        body = request[_JSON]
        if not isinstance(body, dict):
            raise _ApiError(400, "Problems parsing JSON")
        head, base = body.get("head"), body.get("base")
        for name in ("head", "base"):
            if not isinstance(body.get(name), str) or not body.get(name):
                raise _invalid(field=name, code="missing_field")
        if not isinstance(body.get("title"), str) or not body["title"].strip():
            raise _invalid(field="title", code="missing_field")
        assert isinstance(head, str) and isinstance(base, str)
        if ":" in head:
            owner, _, head = head.partition(":")
            if owner.lower() != repo.owner.lower():
                raise _invalid(field="head", code="invalid")
        login, via_app = self._actor(request)
        pr = self._new_pull(repo, body["title"], body.get("body"), head, base, bool(body.get("draft", False)), login,
                            via_app)
        return web.json_response(self._pr_json(repo, pr), status=201,
                                 headers={"Location": f"{self.api_url}/repos/{repo.full_name}/pulls/{pr.number}"})

    def _new_pull(self, repo: Repo, title: str, body: str | None, head: str, base: str, draft: bool, user: str,
                  via_app: bool) -> PullRequest:
        base_sha = self._rev(repo, base)
        if base_sha is None:
            raise _invalid(field="base", code="invalid")
        head_sha = self._rev(repo, head)
        if head_sha is None:
            raise _invalid(field="head", code="invalid")
        for other in repo.pulls.values():
            if other.state == "open" and other.head == head and other.base == base:
                raise _invalid(code="custom", message=f"A pull request already exists for {repo.owner}:{head}.")
        ahead = subprocess.run(["git", "rev-list", "--count", f"{base_sha}..{head_sha}"], cwd=repo.path,
                               capture_output=True, text=True, check=True).stdout.strip()
        if ahead == "0":
            raise _invalid(code="custom", message=f"No commits between {base} and {head}")
        stamp = self._stamp()
        pr = PullRequest(repo.next_number, next(self._ids), title, body, head, base, user, head_sha, base_sha,
                         stamp, stamp, draft=draft, via_app=via_app)
        repo.pulls[pr.number] = pr
        repo.next_number += 1
        return pr

    async def _get_pull(self, request: web.Request) -> web.Response:
        repo, pr = self._pull_of(request)
        return web.json_response(self._pr_json(repo, pr))

    async def _update_pull(self, request: web.Request) -> web.Response:
        repo, pr = self._pull_of(request, "pull_requests")
        body = request[_JSON] or {}
        if not isinstance(body, dict):
            raise _ApiError(400, "Problems parsing JSON")
        if "state" in body and body["state"] not in ("open", "closed"):
            raise _invalid(field="state", code="invalid")
        if "base" in body and self._rev(repo, str(body["base"])) is None:
            raise _invalid(field="base", code="invalid")
        if body.get("state") == "open" and pr.state == "closed":
            if pr.merged:
                raise _invalid(code="custom", message="state cannot be changed. The pull request cannot be reopened.")
            if self._rev(repo, pr.head) is None:
                raise _invalid(code="custom", message="state cannot be changed. The head branch was deleted.")
            if any(o.state == "open" and o.head == pr.head and o.base == pr.base for o in repo.pulls.values()):
                raise _invalid(code="custom", message=f"A pull request already exists for {repo.owner}:{pr.head}.")
        if "title" in body:
            pr.title = str(body["title"])
        if "body" in body:
            pr.body = body["body"]
        if "base" in body:
            pr.base = str(body["base"])
        stamp = self._stamp()
        if body.get("state") == "closed" and pr.state == "open":
            self._head_sha(repo, pr)
            pr.state, pr.closed_at = "closed", stamp
        elif body.get("state") == "open" and pr.state == "closed":
            pr.state, pr.closed_at = "open", None
        pr.updated_at = stamp
        return web.json_response(self._pr_json(repo, pr))

    async def _is_merged(self, request: web.Request) -> web.Response:
        _, pr = self._pull_of(request)
        if not pr.merged:
            raise _ApiError(404, NOT_FOUND)
        return web.Response(status=204)

    async def _merge_pull(self, request: web.Request) -> web.Response:
        repo, pr = self._pull_of(request, "contents")
        body = request[_JSON] or {}
        if pr.state != "open":
            raise _ApiError(405, "Pull Request is not mergeable")
        if body.get("sha") and body["sha"] != self._head_sha(repo, pr):
            raise _ApiError(409, "Head branch was modified. Review and try the merge again.")
        login, _ = self._actor(request)
        sha = self._do_merge(repo, pr, login, body.get("commit_title"), body.get("commit_message"))
        return web.json_response({"sha": sha, "merged": True, "message": "Pull Request successfully merged"})

    def _do_merge(self, repo: Repo, pr: PullRequest, by: str, title: str | None = None,
                  message: str | None = None) -> str:
        if pr.state != "open":
            raise ValueError(f"{repo.full_name}#{pr.number} is {pr.state}")
        head, base = self._head_sha(repo, pr), self._rev(repo, pr.base)
        assert base is not None
        merged = subprocess.run(["git", "merge-tree", "--write-tree", base, head], cwd=repo.path,
                                capture_output=True, text=True)
        if merged.returncode != 0:
            raise _ApiError(405, "Pull Request is not mergeable")
        tree = merged.stdout.split()[0]
        user = self._user(by)
        text = (title or f"Merge pull request #{pr.number} from {repo.owner}/{pr.head}") + "\n\n" + (message or pr.title)
        env = {"GIT_AUTHOR_NAME": user.name or user.login, "GIT_AUTHOR_EMAIL": f"{user.id}+{user.login}@users.noreply.github.com",
               "GIT_COMMITTER_NAME": "GitHub", "GIT_COMMITTER_EMAIL": "noreply@github.com"}
        sha = self.git(repo.owner, repo.name, "commit-tree", tree, "-p", base, "-p", head, "-m", text, env=env)
        self.git(repo.owner, repo.name, "update-ref", f"refs/heads/{pr.base}", sha, base)
        stamp = self._stamp()
        pr.state, pr.merged, pr.merged_at, pr.closed_at, pr.updated_at = "closed", True, stamp, stamp, stamp
        pr.merged_by, pr.merge_commit_sha, pr.base_sha = user.login, sha, base
        return sha

    async def _list_reviews(self, request: web.Request) -> web.Response:
        repo, pr = self._pull_of(request)
        return self._paginate(request, [self._review_json(repo, pr, r) for r in pr.reviews])

    async def _get_issue(self, request: web.Request) -> web.Response:
        repo, pr = self._pull_of(request)
        return web.json_response(self._issue_json(repo, pr))

    async def _list_comments(self, request: web.Request) -> web.Response:
        repo, pr = self._pull_of(request)
        return self._paginate(request, [self._comment_json(repo, c) for c in repo.comments if c.number == pr.number])

    async def _create_comment(self, request: web.Request) -> web.Response:
        caller: _Caller = request[_CALLER]
        repo = self._repo_for(request)
        if caller.kind == "none":
            raise _ApiError(401, "Requires authentication")
        permissions = self._permissions(caller, repo)
        if max(_level(permissions.get("issues")), _level(permissions.get("pull_requests"))) < LEVELS["write"]:
            raise _ApiError(403, NOT_ACCESSIBLE, headers={"X-Accepted-GitHub-Permissions": "issues=write; pull_requests=write"})
        pr = repo.pulls.get(int(request.match_info["number"]))
        if pr is None:
            raise _ApiError(404, NOT_FOUND)
        body = request[_JSON]
        if not isinstance(body, dict) or not isinstance(body.get("body"), str) or not body["body"]:
            raise _ApiError(422, "Validation Failed", [{"resource": "IssueComment", "field": "body",
                                                        "code": "missing_field"}])
        login, via_app = self._actor(request)
        comment = Comment(next(self._ids), pr.number, login, body["body"], self._stamp(), via_app)
        repo.comments.append(comment)
        pr.updated_at = comment.created_at
        data = self._comment_json(repo, comment)
        return web.json_response(data, status=201, headers={"Location": data["url"]})

    # -- users --------------------------------------------------------------------------------

    def _user_caller(self, request: web.Request) -> str:
        caller: _Caller = request[_CALLER]
        if caller.kind == "none":
            raise _ApiError(401, "Requires authentication")
        if caller.kind != "user":
            raise _ApiError(403, NOT_ACCESSIBLE)
        assert caller.token is not None and caller.token.login is not None
        return caller.token.login

    async def _get_authenticated_user(self, request: web.Request) -> web.Response:
        return web.json_response(self._full_user_json(self._user_caller(request)))

    async def _get_emails(self, request: web.Request) -> web.Response:
        user = self._user(self._user_caller(request))
        emails = [{"email": user.email, "primary": True, "verified": True,
                   "visibility": "public" if user.public_email else "private"}] if user.email else []
        emails.append({"email": f"{user.id}+{user.login}@users.noreply.github.com", "primary": not emails,
                       "verified": True, "visibility": None})
        return self._paginate(request, emails)

    async def _get_user(self, request: web.Request) -> web.Response:
        login = request.match_info["login"]
        if login.lower() not in self.users:
            raise _ApiError(404, NOT_FOUND)
        return web.json_response(self._full_user_json(login))

    # -- OAuth --------------------------------------------------------------------------------

    def _redirect_allowed(self, redirect_uri: str) -> bool:
        if not self.app.callback_urls:
            return True
        target = urlsplit(redirect_uri)
        for callback in self.app.callback_urls:
            allowed = urlsplit(callback)
            if (target.scheme, target.netloc.lower()) == (allowed.scheme, allowed.netloc.lower()) and (
                    target.path == allowed.path or target.path.startswith(allowed.path.rstrip("/") + "/")):
                return True
        return False

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        self.calls.append(Call("GET", "/login/oauth/authorize", None, None, dict(q)))
        if q.get("client_id") != self.app.client_id:
            return web.Response(status=404, text="<html><body>Not Found</body></html>", content_type="text/html")
        state = q.get("state")

        def back(to: str, **params: str) -> web.Response:
            if state is not None:
                params["state"] = state
            return web.Response(status=302, headers={"Location": to + ("&" if "?" in to else "?") + urlencode(params)})

        redirect_uri = q.get("redirect_uri") or (self.app.callback_urls[0] if self.app.callback_urls else None)
        if redirect_uri is None:
            return web.Response(status=400, text="<html><body>No callback URL</body></html>", content_type="text/html")
        if not self._redirect_allowed(redirect_uri):
            return back(self.app.callback_urls[0], error="redirect_uri_mismatch",
                        error_description="The redirect_uri MUST match the registered callback URL for this application.",
                        error_uri="https://docs.github.com/apps/managing-oauth-apps/troubleshooting-authorization-"
                                  "request-errors/#redirect-uri-mismatch")
        challenge, method = q.get("code_challenge"), q.get("code_challenge_method")
        if challenge and method != "S256":
            return back(redirect_uri, error="invalid_request",
                        error_description="code_challenge_method must be S256")
        if self.oauth_deny:
            return back(redirect_uri, error="access_denied",
                        error_description="The user has denied your application access.",
                        error_uri="https://docs.github.com/apps/managing-oauth-apps/troubleshooting-authorization-"
                                  "request-errors/#access-denied")
        if self.oauth_user is None or self.oauth_user.lower() not in self.users:
            return web.Response(status=403, text="<html><body>Nobody is signed in (set oauth_user)</body></html>",
                                content_type="text/html")
        code = secrets.token_hex(10)
        self._grants[code] = _Grant(code, self._user(self.oauth_user).login, self.app.client_id, q.get("redirect_uri"),
                                    challenge, time.time() + CODE_TTL)
        return back(redirect_uri, code=code)

    async def _access_token(self, request: web.Request) -> web.Response:
        params: dict[str, str] = dict(request.query)
        raw = await request.read()
        if raw:
            if "json" in request.headers.get("Content-Type", ""):
                with contextlib.suppress(ValueError):
                    params.update({k: str(v) for k, v in json.loads(raw).items()})
            else:
                params.update(parse_qsl(raw.decode(), keep_blank_values=True))
        self.calls.append(Call("POST", "/login/oauth/access_token", None, params, dict(request.query)))
        wants_json = "json" in request.headers.get("Accept", "")

        def answer(data: dict[str, Any]) -> web.Response:
            if wants_json:
                return web.json_response(data)
            return web.Response(text=urlencode({k: v for k, v in data.items() if v is not None}),
                                content_type="application/x-www-form-urlencoded")

        def error(code: str, description: str, anchor: str) -> web.Response:
            return answer({"error": code, "error_description": description,
                           "error_uri": f"https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-"
                                        f"access-token-request-errors/#{anchor}"})

        if params.get("client_id") != self.app.client_id or not hmac.compare_digest(
                params.get("client_secret", ""), self.app.client_secret):
            return error("incorrect_client_credentials", "The client_id and/or client_secret passed are incorrect.",
                         "incorrect-client-credentials")
        grant_type = params.get("grant_type", "authorization_code")
        if grant_type == "refresh_token":
            old = self.tokens.get(params.get("refresh_token", ""))
            if old is None or old.kind != "refresh" or not old.valid:
                return error("bad_refresh_token", "The refresh token passed is incorrect or expired.", "bad-refresh-token")
            assert old.login is not None
            self.revoke(old.value)
            return answer(self._issue_user_tokens(old.login))
        if grant_type != "authorization_code":
            return error("unsupported_grant_type", "The grant type is not supported.", "unsupported-grant-type")
        grant = self._grants.get(params.get("code", ""))
        if grant is None or grant.expires_at < time.time():
            return error("bad_verification_code", "The code passed is incorrect or expired.", "bad-verification-code")
        redirect_uri = params.get("redirect_uri")
        if redirect_uri and grant.redirect_uri and redirect_uri != grant.redirect_uri:
            return error("redirect_uri_mismatch", "The redirect_uri MUST match the registered callback URL for this "
                         "application.", "redirect-uri-mismatch2")
        if grant.challenge is not None:
            verifier = params.get("code_verifier", "")
            if not verifier or not hmac.compare_digest(s256(verifier), grant.challenge):
                return error("bad_verification_code", "The code passed is incorrect or expired.",
                             "bad-verification-code")
        del self._grants[grant.code]
        return answer(self._issue_user_tokens(grant.login))

    def _issue_user_tokens(self, login: str) -> dict[str, Any]:
        login = self._user(login).login
        now = time.time()
        access = Token(_token("ghu_"), "user", now + USER_TOKEN_TTL, login=login)
        refresh = Token(_token("ghr_", 76), "refresh", now + REFRESH_TOKEN_TTL, login=login, pair=access.value)
        access.pair = refresh.value
        self.tokens[access.value] = access
        self.tokens[refresh.value] = refresh
        return {"access_token": access.value, "expires_in": USER_TOKEN_TTL, "refresh_token": refresh.value,
                "refresh_token_expires_in": REFRESH_TOKEN_TTL, "token_type": "bearer", "scope": ""}

    # -- git over HTTP ------------------------------------------------------------------------

    async def _web(self, request: web.Request) -> web.StreamResponse:
        match = re.fullmatch(r"/([^/]+)/([^/]+?)\.git(/.*)?", request.path)
        if match is None:
            return web.Response(status=404, text="Not Found")
        owner, name, rest = match.group(1), match.group(2), match.group(3) or "/"
        repo = self.repos.get(f"{owner}/{name}".lower())
        push = request.query.get("service") == "git-receive-pack" or rest.endswith("/git-receive-pack")
        header = request.headers.get("Authorization")
        value = self._credential(header)
        self.git_calls.append(Call(request.method, f"/{owner}/{name}.git{rest}", value, None, dict(request.query)))
        challenge = {"WWW-Authenticate": 'Basic realm="GitHub"'}
        if repo is None:
            return web.Response(status=404, text="Repository not found.\n")
        caller = _Caller("none")
        if header:
            token = self.tokens.get(value or "")
            if token is None or token.kind not in ("installation", "user") or not token.valid or (
                    token.installation_id is not None and token.installation_id not in self.installations):
                return web.Response(status=401, headers=challenge, text="Invalid username or token. Password "
                                    "authentication is not supported for Git operations.\n")
            caller = _Caller(token.kind, token)
        elif repo.private or push:
            return web.Response(status=401, headers=challenge, text="Authentication required\n")
        if not self._visible(caller, repo):
            return web.Response(status=404, text="Repository not found.\n")
        if push and not self._can_push(caller, repo):
            return web.Response(status=403, text="Write access to repository not granted.\n")
        if request.method == "POST" and rest.endswith("/git-receive-pack"):
            before = self._refs(repo)
            response = await self._git.handle(request, f"/{repo.owner}/{repo.name}.git{rest}")
            after = self._refs(repo)
            for ref in sorted(before.keys() | after.keys()):
                if before.get(ref) != after.get(ref):
                    self.pushes.append(Push(repo.owner, repo.name, ref, before.get(ref, ZERO_SHA),
                                            after.get(ref, ZERO_SHA), value))
            return response
        return await self._git.handle(request, f"/{repo.owner}/{repo.name}.git{rest}")

    def _credential(self, header: str | None) -> str | None:
        """The token in an `Authorization` header: `token X`, `Bearer X`, or basic auth's password
        (`x-access-token:<token>`) or user name (`<token>:x-oauth-basic`)."""
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except ValueError:
                return None
            if password in self.tokens or user not in self.tokens:
                return password
            return user
        return value.strip() or None if scheme.lower() in ("bearer", "token") else None
