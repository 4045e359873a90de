"""`hosted-agents`: the one console script."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from bot.config import ConfigError, load_settings


def _logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for noisy in ("slack_bolt", "slack_sdk", "httpx", "httpcore", "openai", "aiohttp.access", "alembic"):
        logging.getLogger(noisy).setLevel(quiet)


def _serve(_: argparse.Namespace) -> int:
    from bot.service import serve

    settings = load_settings()
    _logging(settings.log_level)
    asyncio.run(serve(settings))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hosted-agents", description="A Slack-first background coding agent.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the service (web server, Slack, sessions)").set_defaults(run=_serve)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"hosted-agents: configuration error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
