"""Wires the layers together and runs them: database, sessions, agent, web server, Slack."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import socket

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from openai import AsyncOpenAI
from slack_sdk.errors import SlackApiError
from sqlalchemy import text

from bot.agent.context import Budget
from bot.agent.loop import Agent
from bot.agent.model import ModelNotConfigured, make_client
from bot.agent.plugins import BuiltinTools, GitSyncGate, SandboxContext, plugin_manager, tool_registry
from bot.agent.pull_request_tool import PullRequestPlugin
from bot.agent.subsession_tools import SubSessionCalls, SubSessionPlugin
from bot.agent.tools import ToolError
from bot.config import ConfigError, Settings, parse_prices, secret_key
from bot.events import Event, ModelCall, Origin, Outcome, SandboxReady, TurnEnded
from bot.github.accounts import GitHubAccounts
from bot.github.app import AppTokens
from bot.github.crypto import TokenCipher
from bot.github.git import app_credentials
from bot.github.oauth import GitHubOAuth
from bot.repos import RepoCatalog, load_repos
from bot.sessions.access import Access, SignedIn
from bot.sessions.children import SubSessions
from bot.sessions.cluster import Cluster
from bot.sessions.intake import Intake, Refused
from bot.sessions.pull_requests import FollowUpPush, PullRequests
from bot.sessions.service import SessionService
from bot.slack.app import SlackClient, SlackContext
from bot.store.batch import BatchWriter
from bot.store.db import Database
from bot.store.job_runs import Job, JobRuns
from bot.store.pending import PendingRequests
from bot.store.processed_events import ProcessedEvents
from bot.store.pull_requests import PullRequestRecords
from bot.store.signin_links import SignInLinks
from bot.store.warm_ups import RepoDefaults, WarmUps
from bot.util.metrics import Metrics
from bot.web.server import Check, build_app
from classifier.classify import Classifier
from classifier.model import ModelClassifier
from sandbox.gitauth import no_credentials
from sandbox.ownership import single_instance
from sandbox.stack import SandboxStack

log = logging.getLogger("hosted_agents")


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.catalog: RepoCatalog = load_repos(settings.repos_config, settings.git_clone_url)
        self.db = Database(settings.database_url)
        self.instance_id = settings.instance_id or f"{socket.gethostname()[:40]}-{secrets.token_hex(3)}"
        self.cluster = (Cluster(self.db, self.instance_id, settings.session_lease_ttl)
                        if self.db.engine.dialect.name == "postgresql" else None)
        with_sandboxes = len(self.catalog) > 0 and settings.sandbox_backend == "docker"
        self.app_tokens = AppTokens(settings) if settings.github_app_enabled else None
        credentials = app_credentials(self.app_tokens, settings.github_web_url) if self.app_tokens else no_credentials
        # The sandbox layer labels containers with our id and reaps those of instances not alive.
        live = self.cluster.live_instances if self.cluster is not None else single_instance
        self.sandbox: SandboxStack | None = (SandboxStack(settings, self.db, self.catalog, credentials,
                                                          instance_id=self.instance_id, live_instances=live)
                                             if with_sandboxes else None)
        manager = self.sandbox.manager if self.sandbox else None
        builtins: list[object] = [BuiltinTools(settings.sandbox_command_timeout), GitSyncGate(), SandboxContext(manager)]
        if self.app_tokens is not None:
            builtins.append(PullRequestPlugin(self._agent_opens_pull_request))
        if len(self.catalog):  # sub-sessions work on repositories; `subsessions` is made below, with intake
            builtins.append(SubSessionPlugin(SubSessionCalls(
                spawn=lambda session, repo, prompt, title: self.subsessions.spawn(session, repo, prompt, title),
                status=lambda session, child, wait: self.subsessions.status(session, child, wait),
                send=lambda session, child, prompt: self.subsessions.send(session, child, prompt),
                cancel=lambda session, child: self.subsessions.cancel(session, child),
                context=lambda session: self.subsessions.context(session))))
        self.hooks = plugin_manager(settings.plugins, builtins=builtins)
        self._model: AsyncOpenAI | None = make_client(settings) if settings.model_configured else None
        tools = tool_registry(self.hooks)
        self.agent = Agent(self._model_client, settings.agent_model, tools, settings.max_tool_steps,
                           parse_prices(settings.model_prices),
                           Budget(settings.context_window(settings.agent_model), settings.context_budget),
                           settings.classifier_model, settings.context_window(settings.classifier_model))
        self.writer = BatchWriter(self.db)
        self.sessions = SessionService(settings, self.db, self.agent, self.catalog, manager, self.hooks, self.writer,
                                       self.cluster)
        self.metrics = Metrics()
        self.sessions.add_listener(self._count_event)
        self.metrics.refreshers.append(self._read_gauges)
        if self.sandbox is not None:
            self.sandbox.pool.metrics = self.metrics
        self.processed = ProcessedEvents(self.db, self.writer)
        if self.sandbox is not None and self.sandbox.egress is not None:
            self.sandbox.egress.observe(self.sessions.egress)
        self.classifier = self._classifier() if len(self.catalog) else None
        self.access = Access(settings, self.catalog)
        self.access.add_directory([Origin.WEB, Origin.PARENT_SESSION], SignedIn())
        oauth = GitHubOAuth(settings) if settings.github_linking_enabled else None
        self.github_accounts = GitHubAccounts(self.db, oauth, TokenCipher(secret_key(settings)))
        self.pull_requests = PullRequests(settings, self.sessions, PullRequestRecords(self.db), self.app_tokens,
                                          self.github_accounts)
        if self.app_tokens is not None:
            self.hooks.register(FollowUpPush(self.pull_requests))
        self.warm_ups = WarmUps(self.db, settings.warm_up_ttl)
        self.sessions.warm_ups = self.warm_ups
        self.intake = Intake(self.sessions, self.classifier, PendingRequests(self.db, settings.pending_request_ttl),
                             settings, self.access, self.pull_requests, self.warm_ups, RepoDefaults(self.db))
        self.signin_links = SignInLinks(self.db)
        self.subsessions = SubSessions(settings, self.sessions, self.intake)
        self.scheduler = AsyncIOScheduler()
        self.slack: SlackClient | None = None
        self._web: web.AppRunner | None = None
        self.web_port: int | None = None
        self._tokenizer: asyncio.Task[None] | None = None
        self._lag: asyncio.Task[None] | None = None

    # -- metrics and readiness ------------------------------------------------------------

    def _count_event(self, _session_id: str, event: Event) -> None:
        data = event.data
        if isinstance(data, TurnEnded):
            self.metrics.turns.labels(data.outcome.value).inc()
            if data.duration_ms is not None:
                self.metrics.turn_seconds.labels(data.outcome.value).observe(data.duration_ms / 1000)
            if data.outcome is Outcome.ERROR:
                self.metrics.model_errors.labels(_error_kind(data.error or "")).inc()
        elif isinstance(data, SandboxReady):
            self.metrics.sandbox_starts.labels(data.source).inc()
        elif isinstance(data, ModelCall):
            self.metrics.model_calls.labels("estimated" if data.estimated else "reported").inc()
            self.metrics.model_tokens.labels("prompt").inc(data.prompt_tokens - data.cached_tokens)
            self.metrics.model_tokens.labels("cached").inc(data.cached_tokens)
            self.metrics.model_tokens.labels("completion").inc(data.completion_tokens)
            if data.cost_usd:
                self.metrics.model_cost.inc(data.cost_usd)

    async def _read_gauges(self) -> None:
        self.metrics.queue_depth.set(self.sessions.queue_depth())
        if self.sandbox is not None:
            self.metrics.pool_size.set(self.sandbox.pool.total_warm())
        counts = await asyncio.wait_for(self.sessions.count_by_status(), 5)
        self.metrics.sessions.clear()  # a status no session has any more is not reported at its old count
        for status, count in counts.items():
            self.metrics.sessions.labels(status).set(count)

    def readiness_checks(self) -> dict[str, Check]:
        """What `/readyz` checks: the database; Slack's Socket Mode when Slack is on; Docker when sandboxes are."""
        checks: dict[str, Check] = {"database": self._check_database}
        if self.settings.slack_enabled:
            checks["slack"] = self._check_slack
        if self.sandbox is not None:
            checks["docker"] = self._check_docker
        return checks

    async def _check_database(self) -> str | None:
        async with self.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return None

    async def _check_slack(self) -> str | None:
        if self.slack is None:
            return "not started"
        return None if await self.slack.connected() else "Socket Mode is not connected"

    async def _check_docker(self) -> str | None:
        assert self.sandbox is not None
        await asyncio.to_thread(self.sandbox.backend.ping)
        return None

    async def _agent_opens_pull_request(self, session_id: str, title: str, body: str) -> str:
        """The agent's `open_pull_request`: in the name of the person whose prompt is running."""
        by = self.sessions.running_prompter(session_id)
        if by is None:
            raise ToolError("No prompt is running in this session.")
        result = await self.intake.open_pull_request(session_id, by, title, body)
        if isinstance(result, Refused):
            raise ToolError(result.message)
        if not result.created:
            return f"Pushed the new commits to the session's pull request #{result.number}: {result.url}"
        marked = " (opened as the GitHub App: the person has no linked account)" if result.as_app else ""
        return f"Opened pull request #{result.number}{marked}: {result.url}"

    def _classifier(self) -> Classifier:
        vote = ModelClassifier(self._model_client, self.settings.classifier_model, self.catalog, self.settings.classifier_timeout)
        return Classifier(self.catalog, vote, self.settings.classifier_min_confidence)

    def _model_client(self) -> AsyncOpenAI:
        if self._model is None:
            raise ModelNotConfigured()
        return self._model

    async def start(self) -> None:
        # Sessions and prompts live here: for the service's user only (`serve` sets the umask so new
        # files are 0600; the directory's 0700 covers what an older version left readable).
        self.settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.settings.data_dir.chmod(0o700)
        try:
            await self.db.upgrade()
        except Exception as exc:  # unreachable server, bad credentials, unwritable file
            raise ConfigError(f"DATABASE_URL: cannot open the database ({_first_line(exc)})") from None
        await self.processed.prune()
        if self.cluster is not None:
            await self.sessions.start_cluster()
        self._lag = asyncio.create_task(self.metrics.watch_loop_lag(), name="event-loop lag")
        self._tokenizer = asyncio.create_task(asyncio.to_thread(self.agent.load_tokenizer), name="load tiktoken")
        if self.sandbox is not None:
            await self.sandbox.start()
        await self._start_web()
        if self.settings.slack_enabled:
            self.hooks.register(SlackContext())
            self.slack = SlackClient(self.settings, self.sessions, self.intake, self.processed, self.signin_links,
                                     metrics=self.metrics)
        self._schedule()
        await self.sessions.recover()  # after the Slack renderer observes, so it reports interruptions
        if self.slack is not None:
            await self._connect_slack()

    def _schedule(self) -> None:
        """Housekeeping: held requests expire on time; the processed-events table stays small. With
        several instances each job runs once per interval among them (bot/store/job_runs.py)."""
        runs = JobRuns(self.db)
        every = max(0.2, min(60.0, self.settings.pending_request_ttl / 4))
        jobs: list[tuple[str, float, Job]] = [
            ("expire held requests", every, self.intake.expire_due),
            ("prune processed Slack events", 3600, self.processed.prune),
            ("prune expired sign-in links", 3600, self.signin_links.prune),
            ("count unused warm-ups", max(1.0, min(60.0, self.settings.warm_up_ttl / 4)), self.warm_ups.expire),
        ]
        if self.cluster is not None:
            jobs.append(("forget instances gone for an hour", 600, self.cluster.forget_lapsed))
        for name, seconds, job in jobs:
            self.scheduler.add_job(runs.once(name, seconds, job), "interval", seconds=seconds, max_instances=1,
                                   coalesce=True, name=name)
        self.scheduler.start()

    async def _start_web(self) -> None:
        app = build_app(self.settings, self.sessions, self.intake, self.signin_links, self.settings.slack_enabled,
                        self.github_accounts, metrics=self.metrics, checks=self.readiness_checks())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.web_host, self.settings.web_port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"WEB_PORT: cannot listen on {self.settings.web_host}:{self.settings.web_port} ({exc.strerror})"
            ) from None
        self._web = runner
        sockets = getattr(site._server, "sockets", None) or []  # the real port when WEB_PORT=0
        self.web_port = sockets[0].getsockname()[1] if sockets else self.settings.web_port

    async def _connect_slack(self) -> None:
        assert self.slack is not None
        try:
            await self.slack.web.auth_test()
        except SlackApiError as exc:
            raise ConfigError(f"SLACK_BOT_TOKEN: Slack refused it ({exc.response.get('error')})") from None
        except Exception as exc:
            log.warning("Slack is not reachable yet (%s); Socket Mode keeps retrying", _first_line(exc))
        try:
            await self.slack.start()
        except SlackApiError as exc:
            raise ConfigError(f"SLACK_APP_TOKEN: Slack refused it ({exc.response.get('error')})") from None

    async def stop(self) -> None:
        if self._lag is not None:
            self._lag.cancel()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.slack is not None:
            await self.slack.close()
        await self.sessions.close()
        if self.sandbox is not None:
            await self.sandbox.close()
        if self._web is not None:
            await self._web.cleanup()
        if self._model is not None:
            await self._model.close()
        await self.db.close()


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM."""
    service = Service(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
        slack = "on (Socket Mode)" if service.slack else "off (set SLACK_BOT_TOKEN and SLACK_APP_TOKEN to turn it on)"
        model = settings.agent_model if settings.model_configured else "not configured (set OPENAI_API_KEY)"
        log.info(
            "hosted-agents is up: web on http://%s:%s · Slack %s · model %s · %d repo(s)",
            settings.web_host, service.web_port, slack, model, len(service.catalog),
        )
        await stop.wait()
        log.info("shutting down")
    finally:
        await service.stop()


_ERROR_KINDS = (("timed out", "timeout"), ("rate", "rate_limited"), ("malformed", "malformed"),
                ("not configured", "not_configured"), ("step", "step_limit"), ("sandbox", "sandbox"))


def _error_kind(message: str) -> str:
    """A bounded label for a failed turn's one-line reason."""
    lowered = message.lower()
    return next((kind for word, kind in _ERROR_KINDS if word in lowered), "other")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
