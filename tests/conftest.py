"""Fixtures: the protocol fakes, settings that point at them, and the real service in-process."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings, load_settings
from bot.service import Service
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


def service_env(data_dir: Path, slack: FakeSlack, model: FakeOpenAI, **extra: Any) -> dict[str, str]:
    """The environment a deployment would set, pointed at the fakes."""
    env = {
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_APP_TOKEN": slack.app_token,
        "SLACK_API_URL": slack.api_url,
        "OPENAI_API_KEY": "sk-test-not-a-real-key",
        "OPENAI_BASE_URL": model.base_url,
        "DATA_DIR": str(data_dir),
        "WEB_PORT": "0",
        "PUBLIC_URL": "http://agents.test",
        "MODEL_TIMEOUT": "5",
        "MODEL_MAX_RETRIES": "0",
    }
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env


def make_settings(env: dict[str, str]) -> Settings:
    return load_settings(_env_file=None, **{k.lower(): v for k, v in env.items()})


@pytest.fixture
def settings_env(tmp_path: Path, slack: FakeSlack, model: FakeOpenAI) -> dict[str, str]:
    return service_env(tmp_path / "data", slack, model)


@pytest.fixture
async def service(settings_env: dict[str, str], slack: FakeSlack) -> AsyncIterator[Service]:
    svc = Service(make_settings(settings_env))
    await svc.start()
    await asyncio.wait_for(slack.connected.wait(), 10)
    yield svc
    await svc.stop()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import asyncpg

    name = f"ha_test_{uuid.uuid4().hex[:10]}"
    admin_dsn = PG_ADMIN_URL
    try:
        conn = await asyncpg.connect(admin_dsn)
    except OSError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {admin_dsn}: {exc}")
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    yield admin_dsn.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


from tests.sandbox_fixtures import docker_cleanup, docker_engine, git_remote, slow_git  # noqa: E402,F401
