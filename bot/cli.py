"""`hosted-agents`: the one console script."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import uvloop

from bot.config import ConfigError, load_settings

if TYPE_CHECKING:  # the subcommands import what they need when they run, to keep `--help` fast
    from openai import AsyncOpenAI

    from bot.repos import RepoCatalog
    from bot.sessions.cluster import Cluster
    from sandbox.stack import SandboxStack

    StackAction = Callable[[SandboxStack, RepoCatalog], Awaitable[int]]


def _logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for noisy in ("slack_bolt", "slack_sdk", "httpx", "httpx2", "httpcore", "openai", "aiohttp.access", "alembic", "apscheduler"):
        logging.getLogger(noisy).setLevel(quiet)


def _serve(_: argparse.Namespace) -> int:
    from bot.service import serve

    settings = load_settings()
    _logging(settings.log_level)
    # uvloop: the same asyncio, with a faster loop; a burst of sessions is mostly loop work
    # (sockets to Slack and the model, thread hand-offs of the databases).
    os.umask(0o077)  # the data directory's files (sessions, prompts) are the service user's alone
    uvloop.run(serve(settings))
    return 0


async def _with_sandboxes(action: StackAction) -> int:
    """Run `action(stack)` against the configured repos, database and Docker engine."""
    import secrets
    import socket

    from bot.repos import load_repos
    from bot.sessions.cluster import Cluster
    from bot.store.db import Database
    from sandbox.stack import SandboxStack

    settings = load_settings()
    _logging(settings.log_level)
    catalog = load_repos(settings.repos_config, settings.git_clone_url)
    if not len(catalog):
        raise ConfigError("REPOS_CONFIG: no repositories are configured")
    db = Database(settings.database_url)
    # An instance of its own: with PostgreSQL it is registered while it runs, so the serving
    # instances on this engine do not take its build containers for a dead instance's.
    instance = f"{settings.instance_id or socket.gethostname()[:40]}-cli-{secrets.token_hex(3)}"[-64:]
    member: Cluster | None = None
    beating: asyncio.Task[None] | None = None
    try:
        await db.upgrade()
        if db.engine.dialect.name == "postgresql":
            member = Cluster(db, instance, settings.session_lease_ttl)
            await member.join()
            beating = asyncio.create_task(_heartbeat(member))
        stack = SandboxStack(settings, db, catalog, instance_id=instance)
        stack.images.on_new_image.clear()  # a running `serve` refreshes its own pool
        return await action(stack, catalog)
    finally:
        if beating is not None:
            beating.cancel()
        if member is not None:
            await member.leave()
        await db.close()


async def _heartbeat(member: Cluster) -> None:
    while True:
        await asyncio.sleep(member.lease_ttl / 3)
        try:
            await member.heartbeat()
        except Exception as exc:
            logging.getLogger(__name__).warning("heartbeat failed: %s", exc)


def _images_build(args: argparse.Namespace) -> int:
    from sandbox.images import BuildFailed

    async def build(stack: SandboxStack, catalog: RepoCatalog) -> int:
        names = [args.repo] if args.repo else [r.name for r in catalog.repos]
        failed = 0
        for name in names:
            repo = catalog.get(name)
            if repo is None:
                raise ConfigError(f"unknown repo {name!r}; configured: {', '.join(r.name for r in catalog.repos)}")
            try:
                print(f"{repo.name}: built {await stack.images.build(repo)}")
            except BuildFailed as exc:
                failed += 1
                print(f"{repo.name}: FAILED at {exc.step}; the previous image stays in service\n{exc.log[-3000:]}")
        return 1 if failed else 0

    return asyncio.run(_with_sandboxes(build))


def _images_list(args: argparse.Namespace) -> int:
    async def show(stack: SandboxStack, catalog: RepoCatalog) -> int:
        for row in await stack.images.history(args.repo):
            took = f"{row.duration_s:.1f} s" if row.duration_s is not None else "-"
            print(f"{row.repo:30} {row.status:9} {took:>8}  {row.tag or ''}")
        return 0

    return asyncio.run(_with_sandboxes(show))


def _pool_status(_: argparse.Namespace) -> int:
    async def show(stack: SandboxStack, catalog: RepoCatalog) -> int:
        rows = await stack.pool.status()
        for repo in catalog.repos:
            mine = [r for r in rows if r.repo == repo.name]
            warm = sum(r.status == "warm" for r in mine)
            print(f"{repo.name:30} warm {warm}/{repo.pool_size}   latest image: {await stack.images.latest(repo.name) or 'none'}")
            for r in mine:
                print(f"    {r.container_id[:12]} {r.status:8} {r.image}")
        return 0

    return asyncio.run(_with_sandboxes(show))


def _stats(_: argparse.Namespace) -> int:
    """The headline figures for the last 7 and 30 days."""
    from bot.sessions.stats import compute
    from bot.store.db import Database

    settings = load_settings()
    _logging("WARNING")

    async def show() -> int:
        db = Database(settings.database_url)
        try:
            await db.upgrade()
            for days in (7, 30):
                s = await compute(db, days)
                first = f"{s.first_token_ms_p50:.0f} ms" if s.first_token_ms_p50 is not None else "none"
                print(f"last {days} days: {s.sessions} sessions, {s.pr_share:.0%} with a PR, {s.merged_share:.0%} merged "
                      f"({s.merged} PRs merged); first token p50 {first}; PR approval {s.approval_rate:.0%}; "
                      f"cost ${s.cost_usd:.2f} (${s.cost_per_merged_pr:.2f} per merged PR); "
                      f"warm-up hit rate {s.warm_up_hit_rate:.0%}; humans prompting now {s.humans_prompting}")
        finally:
            await db.close()
        return 0

    return asyncio.run(show())


def _classify(args: argparse.Namespace) -> int:
    """For operators tuning the catalog: the decision alone on the first line, then why."""
    from bot.agent.model import ModelNotConfigured, make_client
    from bot.repos import load_repos
    from classifier.classify import Classifier, RequestContext
    from classifier.model import ModelClassifier

    settings = load_settings()
    _logging("WARNING")
    catalog = load_repos(settings.repos_config, settings.git_clone_url)
    if not len(catalog):
        raise ConfigError("REPOS_CONFIG: no repositories are configured")

    async def run() -> int:
        client = make_client(settings) if settings.model_configured else None

        def model_client() -> AsyncOpenAI:
            if client is None:
                raise ModelNotConfigured()
            return client

        vote = ModelClassifier(model_client, settings.classifier_model, catalog, settings.classifier_timeout)
        classifier = Classifier(catalog, vote if client else None, settings.classifier_min_confidence)
        result = await classifier.classify(
            RequestContext(args.text, args.thread or [], args.channel.lstrip("#") if args.channel else None, args.topic)
        )
        if client is not None:
            await client.close()
        print(result.repo or "unknown")
        print(f"source: {result.source}")
        print(f"confidence: {result.confidence:.2f}")
        print(f"alternatives: {', '.join(result.alternatives) or '-'}")
        print(f"reason: {result.reason}")
        print(f"took: {result.elapsed_ms:.1f} ms")
        return 0

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hosted-agents", description="A Slack-first background coding agent.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the service (web server, Slack, sessions)").set_defaults(run=_serve)
    images = commands.add_parser("images", help="sandbox images").add_subparsers(dest="images_command", required=True)
    build = images.add_parser("build", help="build images now (all repos, or one)")
    build.add_argument("repo", nargs="?", help="owner/repo")
    build.set_defaults(run=_images_build)
    listing = images.add_parser("list", help="recent image builds")
    listing.add_argument("repo", nargs="?", help="owner/repo")
    listing.set_defaults(run=_images_list)
    classify = commands.add_parser("classify", help="which repository a request is about (first line: the decision)")
    classify.add_argument("text")
    classify.add_argument("--channel", help="channel name, e.g. eng-api")
    classify.add_argument("--topic", help="channel topic")
    classify.add_argument("--thread", action="append", help="an earlier message of the thread (repeatable)")
    classify.set_defaults(run=_classify)
    commands.add_parser("stats", help="headline figures for the last 7 and 30 days").set_defaults(run=_stats)
    pool = commands.add_parser("pool", help="warm pool").add_subparsers(dest="pool_command", required=True)
    pool.add_parser("status", help="warm containers per repo").set_defaults(run=_pool_status)
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"hosted-agents: configuration error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
