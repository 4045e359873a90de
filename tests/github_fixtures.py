"""The service with a GitHub App, pointed at the GitHub fake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.github import FakeGitHub


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    fake = FakeGitHub()
    await fake.start()
    yield fake
    await fake.stop()


def github_env(fake: FakeGitHub) -> dict[str, Any]:
    """The settings an operator sets for their GitHub App (service_env's extras)."""
    return {"github_api_url": fake.api_url, "github_web_url": fake.web_url, "github_app_id": str(fake.app.id),
            "github_app_private_key": fake.app.private_key_pem, "github_client_id": fake.app.client_id,
            "github_client_secret": fake.app.client_secret, "github_webhook_secret": fake.app.webhook_secret}
