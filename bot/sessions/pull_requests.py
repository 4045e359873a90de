"""From a session's changes to a pull request in the prompting person's name, and what GitHub
says happens to it afterwards.

Opening (the agent's `open_pull_request` tool, the *Create PR* buttons): whatever is uncommitted
is committed, authored by the person (their GitHub name and noreply address when linked, else
their Slack name), with every other person who prompted as a `Co-authored-by:` trailer and the
App as committer; the branch `agent/<short id>-<slug>` is pushed with an installation token given
to that one git command; the PR is opened with the person's own user token, so they cannot
approve it themselves. Without a linked account the PR is opened as the App, marked as such,
only when asked to. A later push to the same branch is reported as such.

Webhooks move the PR's row forward (never back: `updated_at` decides) and become
`pull_request` events; a comment that mentions the App is a prompt on the session.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from github import Auth, Github, GithubException

from bot.agent.hookspecs import hookimpl
from bot.config import Settings
from bot.events import Author, Note, Origin, PullRequest
from bot.github.accounts import GitHubAccounts, LinkedAccount, NotLinked
from bot.github.app import AppTokens, AppUnavailable, BotIdentity
from bot.github.webhooks import CommentAdded, PullRequestChanged, ReviewSubmitted, WebhookEvent
from bot.repos import Repo
from bot.sessions.service import SessionService
from bot.store.pull_requests import PullRequestRecords
from bot.store.tables import PullRequestRow
from bot.util.keyed_locks import KeyedLocks
from sandbox.gitrefs import check_branch
from sandbox.sessions import SessionSandbox

log = logging.getLogger(__name__)

ORIGIN_NAMES = {Origin.WEB: "the web view", Origin.SLACK_THREAD: "Slack", Origin.SLACK_DM: "Slack",
                Origin.APP_HOME: "Slack", Origin.SHORTCUT: "Slack", Origin.GITHUB: "GitHub",
                Origin.PARENT_SESSION: "a parent session"}


class PullRequestRefused(Exception):
    """The pull request was not opened; the message says why and what to do, for the person."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True, slots=True)
class Opened:
    number: int
    url: str
    created: bool
    """False when the session's PR existed and this pushed to it."""
    as_app: bool


class PullRequests:
    def __init__(self, settings: Settings, sessions: SessionService, records: PullRequestRecords,
                 app: AppTokens | None, accounts: GitHubAccounts | None):
        self.settings = settings
        self.sessions = sessions
        self.records = records
        self.app = app
        self.accounts = accounts
        self._locks = KeyedLocks()
        self.not_linked_observers: list[Callable[[str, Author], Coroutine[Any, Any, None]]] = []
        """Told (session id, person) when a PR waits for the person to link GitHub: a surface
        offers them, privately, the link and opening it as the App instead."""

    def connect_url(self) -> str:
        return f"{self.settings.public_url}/github/connect"

    async def open(self, session_id: str, by: Author, title: str | None = None, body: str | None = None,
                   as_app: bool = False, only_changes: bool = False) -> Opened:
        """Commit, push and open (or update) the session's PR; raises PullRequestRefused.
        `only_changes`: push to an existing PR only when there was something to commit."""
        async with self._locks.hold(session_id):  # a button and the agent at once: one PR
            return await self._open(session_id, by, title, body, as_app, only_changes)

    async def after_turn(self, session_id: str, prompt_id: int) -> None:
        """A follow-up prompt's changes go to the session's open PR, and the thread says so."""
        row = await self.records.of_session(session_id)
        if row is None or row.state != "open":
            return
        turn = (await self.sessions.view(session_id)).turns.get(prompt_id)
        if turn is None:
            return
        try:
            await self.open(session_id, turn.author, title=_subject(turn.prompt), as_app=True, only_changes=True)
        except PullRequestRefused as exc:
            self.sessions.emit(session_id, Note(text=f"The changes could not be pushed to PR #{row.number}: {exc.message}"))

    async def _open(self, session_id: str, by: Author, title: str | None, body: str | None, as_app: bool,
                    only_changes: bool = False) -> Opened:
        info = await self.sessions.get(session_id)
        repo = self.sessions.catalog.get(info.repo) if info and info.repo else None
        if info is None or repo is None:
            raise PullRequestRefused("no_repo", "This session has no repository, so there is nothing to open a PR for.")
        if self.app is None or self.sessions.sandboxes is None:
            raise PullRequestRefused("not_configured", "Pull requests need the GitHub App: an admin sets GITHUB_APP_ID and "
                                                       "GITHUB_APP_PRIVATE_KEY (see the README).")
        account = await self.accounts.get(by.id) if self.accounts else None
        existing = await self.records.of_session(session_id)
        if account is None and not as_app and existing is None:
            for observer in self.not_linked_observers:
                self.sessions.background(observer(session_id, by))
            raise PullRequestRefused("not_linked", f"{by.handle} has not linked a GitHub account, so the PR cannot be "
                                                   "opened in their name yet; they have been sent the link to connect "
                                                   "(or they can have it opened as the GitHub App).")
        try:
            bot = await self.app.identity(repo.name)
            sandbox = await self._sandbox(session_id, repo)
            title = (title or info.title or f"Changes from session {session_id}").strip()[:250]
            committed = await self._commit(sandbox, session_id, by, account, bot, title)
            if existing is not None and existing.state == "open" and committed is None and only_changes:
                return Opened(existing.number, existing.url, False, existing.opened_as == "app")
            branch = existing.branch if existing else _branch(session_id, title)
            await self._push(sandbox, repo, branch)
            if existing is not None and existing.state == "open":
                await self.records.pushed(existing.id)
                self.sessions.emit(session_id, PullRequest(repo=repo.name, number=existing.number, url=existing.url,
                                                           action="pushed", by=by.id, text=committed))
                return Opened(existing.number, existing.url, False, existing.opened_as == "app")
            token = await self.app.token(repo.name) if account is None else await self._user_token(by)
            number, url = await self._create(repo, token, branch, title, self._body(body, by, info.share_token))
        except (AppUnavailable, NotLinked) as exc:
            raise PullRequestRefused("github_refused", str(exc) or "Your GitHub link has lapsed; connect again: "
                                     + self.connect_url()) from None
        await self.records.add(session_id=session_id, repo=repo.name, number=number, url=url, branch=branch,
                               author=by.id, opened_as="app" if account is None else "user")
        self.sessions.emit(session_id, PullRequest(repo=repo.name, number=number, url=url, action="opened", by=by.id,
                                                   as_app=account is None))
        return Opened(number, url, True, account is None)

    async def _user_token(self, by: Author) -> str:
        assert self.accounts is not None
        return await self.accounts.token(by.id)

    async def _sandbox(self, session_id: str, repo: Repo) -> SessionSandbox:
        manager = self.sessions.sandboxes
        assert manager is not None
        sandbox = manager.get(session_id)
        if sandbox is None or sandbox.failed:
            manager.prepare(session_id, repo.name, "pull_request")
            sandbox = manager.get(session_id)
        assert sandbox is not None
        await sandbox.executor()
        await sandbox.wait_synced()
        return sandbox

    async def _commit(self, sandbox: SessionSandbox, session_id: str, by: Author, account: LinkedAccount | None,
                      bot: BotIdentity, title: str) -> str | None:
        """Commit what is uncommitted; returns the commit's subject, or None when there was nothing."""
        await _git(sandbox, ["add", "-A"])
        if (await sandbox.git(["diff", "--cached", "--quiet"])).exit_code == 0:
            return None
        name, email = _person(by, account)
        trailers = [f"Co-authored-by: {n} <{e}>" for n, e in await self._co_authors(session_id, by) if e != email]
        message = title + ("\n\n" + "\n".join(trailers) if trailers else "")
        env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": bot.name,
               "GIT_COMMITTER_EMAIL": bot.email}
        await _git(sandbox, ["commit", "--quiet", "--no-verify", "-m", message], env)
        return title

    async def _co_authors(self, session_id: str, by: Author) -> list[tuple[str, str]]:
        view = await self.sessions.view(session_id)
        people: dict[str, Author] = {}
        for turn in view.turns.values():
            if turn.author.id != by.id:
                people.setdefault(turn.author.id, turn.author)
        out = []
        for person in people.values():
            account = await self.accounts.get(person.id) if self.accounts else None
            out.append(_person(person, account))
        return out

    async def _push(self, sandbox: SessionSandbox, repo: Repo, branch: str) -> None:
        manager = self.sessions.sandboxes
        assert manager is not None
        env = await manager.credentials(repo)
        result = await sandbox.git(["push", "--quiet", "origin", f"HEAD:refs/heads/{check_branch(branch)}"], env)
        if result.exit_code != 0:
            line = (result.output.strip().splitlines() or ["unknown error"])[-1][:300]
            raise PullRequestRefused("push_failed", f"Pushing the branch failed: {line}")

    async def _create(self, repo: Repo, token: str, branch: str, title: str, body: str) -> tuple[int, str]:
        def create() -> tuple[int, str]:
            gh = Github(base_url=self.settings.github_api_url, auth=Auth.Token(token), seconds_between_requests=None,
                        seconds_between_writes=None)
            remote = gh.get_repo(repo.name)
            try:
                pr = remote.create_pull(base=repo.default_branch, head=branch, title=title, body=body)
            except GithubException as exc:
                if exc.status != 422:
                    raise
                owner = repo.name.split("/")[0]
                found = list(remote.get_pulls(state="open", head=f"{owner}:{branch}"))
                if not found:
                    raise
                pr = found[0]
            return pr.number, pr.html_url

        try:
            return await asyncio.to_thread(create)
        except GithubException as exc:
            message = exc.data.get("message") if isinstance(exc.data, dict) else None
            raise PullRequestRefused("github_refused", f"GitHub refused the pull request ({exc.status}: {message}).") from None

    def _body(self, body: str | None, by: Author, share_token: str) -> str:
        who = by.name or by.id
        where = ORIGIN_NAMES.get(by.origin, "Slack")
        footer = f"Asked by {who} from {where} · [the session]({self.settings.session_url(share_token)})"
        return f"{(body or '').strip()}\n\n---\n{footer}".strip()

    # -- webhooks -------------------------------------------------------------------------

    async def linked(self, user_id: str) -> str | None:
        """The GitHub login this person is linked as, if any."""
        account = await self.accounts.get(user_id) if self.accounts else None
        return account.login if account else None

    async def slack_user(self, github_id: int) -> str | None:
        """The Slack id of the person linked to this GitHub account, if anyone is."""
        return await self.accounts.by_github_id(github_id) if self.accounts else None

    async def apply(self, event: WebhookEvent) -> PullRequestRow | None:
        """A webhook on one of our PRs: its row moves forward and the session hears of it."""
        row = await self.records.find(event.repo, event.number)
        if row is None:
            return None
        match event:
            case PullRequestChanged():
                before = row.state
                if await self.records.move(event.repo, event.number, event.state, event.updated_at) and event.state != before:
                    action = "reopened" if event.state == "open" else event.state
                    self._tell(row, action, None)
            case ReviewSubmitted():
                await self.records.reviewed(event.repo, event.number, event.state)
                self._tell(row, event.state, event.reviewer)
            case CommentAdded():
                self._tell(row, "commented", event.author, event.body[:1000])
        return row

    def _tell(self, row: PullRequestRow, action: str, by: str | None, text: str | None = None) -> None:
        self.sessions.emit(row.session_id, PullRequest(repo=row.repo, number=row.number, url=row.url, action=action,
                                                       by=by, text=text))


def _person(author: Author, account: LinkedAccount | None) -> tuple[str, str]:
    if account is not None:
        return account.name or account.login, account.noreply_email
    return author.name or author.id, author.email or f"{author.id.lower()}@users.noreply.slack"


async def _git(sandbox: SessionSandbox, argv: list[str], env: dict[str, str] | None = None) -> None:
    result = await sandbox.git(argv, env)
    if result.exit_code != 0:
        line = (result.output.strip().splitlines() or ["unknown error"])[-1][:300]
        raise PullRequestRefused("git_failed", f"git {argv[0]} failed: {line}")


def _subject(prompt: str) -> str:
    line = " ".join(prompt.split())
    return line if len(line) <= 72 else line[:71] + "…"


class FollowUpPush:
    """A plugin: when a turn ends in a session with an open PR, its changes are pushed to it."""

    def __init__(self, pull_requests: PullRequests):
        self.pull_requests = pull_requests

    @hookimpl
    def turn_ended(self, session_id: str, prompt_id: int) -> Awaitable[None]:
        return self.pull_requests.after_turn(session_id, prompt_id)


def _branch(session_id: str, title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40].strip("-") or "changes"
    return f"agent/{session_id[:8]}-{slug}"
