"""Settings and the repos file are validated at the edge with messages that name what is wrong."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, load_settings
from bot.repos import load_repos


def test_defaults_are_embedded_and_urls_are_normalised(tmp_path):
    s = load_settings(_env_file=None, data_dir=tmp_path)
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/hosted-agents.db"
    assert s.public_url == "http://127.0.0.1:8000"
    assert not s.slack_enabled and not s.model_configured
    pg = load_settings(_env_file=None, database_url="postgres://u@h/db", public_url="https://agents.example.com/")
    assert pg.database_url == "postgresql+asyncpg://u@h/db"
    assert pg.session_url("tok") == "https://agents.example.com/s/tok"


def test_repos_file_with_defaults(tmp_path):
    path = tmp_path / "repos.yml"
    path.write_text(
        "defaults:\n  image: {base: 'hosted-agents/base:bookworm', setup: ['make deps']}\n  pool_size: 2\n"
        "repos:\n"
        "  - name: acme/api\n    aliases: [api]\n    channels: ['#eng-api']\n    image: {warm: ['pytest -q || true']}\n"
        "  - name: acme/web\n    clone_url: http://127.0.0.1:9418/acme/web.git\n    pool_size: 0\n"
    )
    catalog = load_repos(path, "https://github.com/{repo}.git")
    api, web = catalog.repos
    assert api.clone_url == "https://github.com/acme/api.git" and api.pool_size == 2
    assert api.image.setup == ["make deps"] and api.image.warm == ["pytest -q || true"]
    assert api.channels == ["eng-api"]
    assert web.clone_url == "http://127.0.0.1:9418/acme/web.git" and web.pool_size == 0
    assert catalog.get("ACME/API") is api


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("repos:\n  - name: acme/api\n    image: {bsae: x}\n", "repo 'acme/api': unknown field 'image.bsae'"),
        ("repos:\n  - name: not-a-repo\n", "repo 'not-a-repo': field 'name': must be owner/repo"),
        ("repos:\n  - name: acme/api\n    pool_size: -1\n", "repo 'acme/api': field 'pool_size'"),
        ("repos:\n  - name: acme/api\n  - name: ACME/api\n", "listed twice"),
        ("repos:\n  - description: nameless\n", "repo '#1': field 'name': Field required"),
        ("repos: [\n", "is not valid YAML"),
        ("- just a list\n", "must be a mapping"),
        ("repos:\n  - name: acme/api\nextra_top: 1\n", "unknown field 'extra_top'"),
        ("repos:\n  - name: acme/api\n    clone_url: https://x-access-token:ghs_123@github.com/acme/api.git\n",
         "repo 'acme/api': field 'clone_url': must not contain credentials"),
        (
            "repos:\n  - name: acme/api\n    clone_url: https://ghp_secret@github.com/acme/api.git\n",
            "must not contain credentials",
        ),
        # git arguments from the file can never be options or other transports
        ("repos:\n  - name: acme/api\n    clone_url: --upload-pack=touch /tmp/pwned\n", "field 'clone_url': must be an https://"),
        ("repos:\n  - name: acme/api\n    clone_url: 'ext::sh -c touch% /tmp/pwned'\n", "field 'clone_url'"),
        ("repos:\n  - name: acme/api\n    clone_url: file:///etc\n", "field 'clone_url': must be an https://"),
        ("repos:\n  - name: acme/api\n    default_branch: --orphan\n", "'--orphan' is not a valid branch"),
        ("repos:\n  - name: acme/api\n    default_branch: a..b\n", "is not a valid branch name"),
        ("repos:\n  - name: acme/api\n    users: [alice]\n", "field 'users': alice: not Slack user ids"),
    ],
)
def test_bad_repos_files_name_the_repo_and_field(tmp_path, yaml_text, message):
    path = tmp_path / "repos.yml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_repos(path, "https://github.com/{repo}.git")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_clone_url_template_that_is_not_a_url_is_refused(tmp_path):
    path = tmp_path / "repos.yml"
    path.write_text("repos:\n  - name: acme/api\n")
    with pytest.raises(ConfigError, match="GIT_CLONE_URL: must be an https://"):
        load_repos(path, "-c core.sshCommand=x {repo}")


def test_access_lists_are_slack_ids(tmp_path):
    from bot.config import load_settings

    settings = load_settings(_env_file=None, allow_users="U0ALICE1, W0BOB0001", admin_users="U0ADMIN1",
                             allow_usergroups="S0DEVS01")
    assert settings.allow_users == {"U0ALICE1", "W0BOB0001"} and settings.allow_usergroups == {"S0DEVS01"}
    with pytest.raises(ConfigError, match=r"ALLOW_USERS: alice@example\.com: not Slack ids"):
        load_settings(_env_file=None, allow_users="alice@example.com")
    with pytest.raises(ConfigError, match="SESSION_PROMPTERS"):
        load_settings(_env_file=None, session_prompters="everyone")
    assert load_settings(_env_file=None, sandbox_memory="2g", max_sandboxes=0).sandbox_slots >= 1


def test_context_windows_come_from_the_table_the_setting_and_a_default(tmp_path):
    s = load_settings(_env_file=None, data_dir=tmp_path, model_context_windows='{"my-model": 32000, "gpt-5": 100000}')
    assert s.context_window("my-model") == 32000 and s.context_window("gpt-5") == 100000
    assert s.context_window("gpt-5-mini") == 272_000, "the longest known prefix, not gpt-5's override"
    assert s.context_window("gpt-4o-2024-08-06") == 128_000 and s.context_window("llama-3") == 128_000
    file = tmp_path / "windows.yml"
    file.write_text("my-model: 8000\n")
    assert load_settings(_env_file=None, data_dir=tmp_path, model_context_windows=str(file)).context_window("my-model") == 8000
    with pytest.raises(ConfigError, match=r"MODEL_CONTEXT_WINDOWS: .*my-model: give the context window in tokens"):
        load_settings(_env_file=None, data_dir=tmp_path, model_context_windows='{"my-model": "big"}')
    with pytest.raises(ConfigError, match="CONTEXT_BUDGET"):
        load_settings(_env_file=None, data_dir=tmp_path, context_budget=1.5)
