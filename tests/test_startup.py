"""`hosted-agents serve` as an operator runs it: clear one-line errors, and a useful service without Slack."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest import service_env

BASE_ENV = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}


def run_serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "serve"], cwd=tmp_path, env={**BASE_ENV, "WEB_PORT": "0", **env},
        capture_output=True, text=True, timeout=60,
    )


def assert_config_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "configuration error" in line]
    assert lines, result.stderr
    for needle in needles:
        assert any(needle in line for line in lines), (needle, result.stderr)


def test_malformed_settings_name_the_setting(tmp_path):
    assert_config_error(run_serve(tmp_path, WEB_PORT="eighty"), "WEB_PORT: Input should be a valid integer", "'eighty'")
    assert_config_error(run_serve(tmp_path, SLACK_BOT_TOKEN="xoxb-1"), "SLACK_APP_TOKEN is missing")
    assert_config_error(
        run_serve(tmp_path, SLACK_BOT_TOKEN="xapp-oops", SLACK_APP_TOKEN="xapp-1"), "SLACK_BOT_TOKEN: must be a bot token"
    )
    assert_config_error(
        run_serve(tmp_path, DATABASE_URL="mysql://x/y"), "DATABASE_URL: must be a postgresql:// or sqlite:/// URL"
    )
    assert_config_error(run_serve(tmp_path, MODEL_TIMEOUT="-1"), "MODEL_TIMEOUT")


def test_secrets_are_not_echoed_in_errors(tmp_path):
    result = run_serve(tmp_path, SLACK_BOT_TOKEN="very-secret-value", SLACK_APP_TOKEN="xapp-1")
    assert_config_error(result, "SLACK_BOT_TOKEN")
    assert "very-secret-value" not in result.stderr


def test_a_bad_repos_file_names_the_repo_and_the_field(tmp_path):
    repos = tmp_path / "repos.yml"
    repos.write_text("repos:\n  - name: acme/api\n    pool_sise: 2\n")
    assert_config_error(run_serve(tmp_path, REPOS_CONFIG=str(repos)), "repo 'acme/api': unknown field 'pool_sise'")
    assert_config_error(run_serve(tmp_path, REPOS_CONFIG=str(tmp_path / "missing.yml")), "REPOS_CONFIG: cannot read")


def test_an_unreachable_database_and_a_busy_port_are_explained(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    assert_config_error(run_serve(tmp_path, DATABASE_URL=f"postgresql://nobody@127.0.0.1:{free_port}/x"),
                        "DATABASE_URL: cannot open the database")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert_config_error(run_serve(tmp_path, WEB_PORT=port), f"WEB_PORT: cannot listen on 127.0.0.1:{port}")


async def test_a_refused_slack_token_is_a_clear_error(tmp_path, slack, model):
    env = service_env(tmp_path / "data", slack, model, slack_bot_token="xoxb-revoked")
    result = await asyncio.to_thread(run_serve, tmp_path, **env)
    assert_config_error(result, "SLACK_BOT_TOKEN: Slack refused it (invalid_auth)")


async def test_without_slack_tokens_the_web_server_runs_and_says_slack_is_off(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "serve", cwd=tmp_path, env={**BASE_ENV, "WEB_PORT": str(port)},
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = b""
        while b"is up" not in line:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)  # type: ignore[union-attr]
            assert line, "serve exited early"
        assert b"Slack off" in line and b"model not configured" in line
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert await resp.json() == {"ok": True, "slack": "off"}
        assert (tmp_path / "data" / "hosted-agents.db").exists(), "the embedded default: SQLite under ./data"
        assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700, "the data directory is the service's alone"
        assert (tmp_path / "data" / "hosted-agents.db").stat().st_mode & 0o777 == 0o600
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
