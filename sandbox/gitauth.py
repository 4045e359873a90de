"""Credentials for the one git command that talks to a repository's remote.

The sandbox layer knows nothing of GitHub: whoever wires it hands in `GitCredentials`, which
gives the environment for a command that fetches from or pushes to a repo (a token carried as an
`http.extraHeader` through GIT_CONFIG_COUNT/KEY/VALUE, so it is in that process's environment
only: never in the container's environment or files, the image, the snapshot or the git config).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable

from bot.repos import Repo

GitCredentials = Callable[[Repo], Awaitable[dict[str, str]]]


async def no_credentials(_: Repo) -> dict[str, str]:
    return {}


def token_env(token: str) -> dict[str, str]:
    """HTTP basic auth `x-access-token:<token>` (what GitHub accepts for App and user tokens) for
    every HTTP request of one git command, and no prompt if it is refused."""
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}", "GIT_TERMINAL_PROMPT": "0"}
