"""Service settings: one typed object read from the environment and an optional `.env`.

The names are the deployment contract (DESIGN.md, issue 2); keep them stable. Problems are
reported as one line per setting by `describe_errors`, never as a traceback.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SLACK_API_URL = "https://slack.com/api/"
log = logging.getLogger(__name__)


def _http_url(v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return v


_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
MIN_DISK = 16 * 1024**2
"""ext4 with a journal needs a few MiB for itself; below this a sandbox disk is of no use."""


def parse_size(text: str) -> int:
    """`10g`, `512m`, `64M`, `1073741824` → bytes (binary units, as Docker's `memory`)."""
    match = re.fullmatch(r"\s*(\d+)\s*([bkmgt]?)i?b?\s*", text.lower())
    if not match:
        raise ValueError(f"{text!r} is not a size like 10g or 512m")
    return int(match.group(1)) * _UNITS[match.group(2)]


_SLACK_ID = re.compile(r"^[A-Z0-9]{2,32}$")


def _id_list(v: Any) -> Any:
    """`U1,U2` (or a list) as a set of Slack ids; anything that is not an id is an error naming it."""
    if isinstance(v, str):
        v = [part.strip() for part in v.split(",") if part.strip()]
    if isinstance(v, list | tuple | set | frozenset):
        bad = [str(item) for item in v if not _SLACK_ID.match(str(item))]
        if bad:
            raise ValueError(f"{', '.join(bad)}: not Slack ids (comma-separated, like U0123ABCD or S0123ABCD)")
        return frozenset(str(item) for item in v)
    return v


SlackIds = Annotated[frozenset[str], NoDecode, BeforeValidator(_id_list)]
"""A comma-separated list of Slack ids in the environment."""


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    slack_bot_token: SecretStr | None = None
    """Bot token (`xoxb-...`). Without it and SLACK_APP_TOKEN, Slack is off."""
    slack_app_token: SecretStr | None = None
    """App-level token (`xapp-...`) with `connections:write`, for Socket Mode."""
    slack_api_url: str = SLACK_API_URL
    """Base of the Slack Web API; tests point it at the fake."""

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    """Any OpenAI-compatible server; the key may then be omitted."""
    agent_model: str = "gpt-5"
    classifier_model: str = "gpt-5-mini"
    model_timeout: float = Field(60.0, gt=0)
    """Seconds the model may stay silent (connect, or between two streamed chunks)."""
    model_max_retries: int = Field(2, ge=0, le=10)
    classifier_timeout: float = Field(3.0, gt=0)
    """Seconds the classifier model may take before the bot asks the person instead."""
    classifier_min_confidence: float = Field(0.6, ge=0, le=1)
    pending_request_ttl: float = Field(3600.0, gt=0)
    """Seconds a request waits for someone to pick its repository."""
    model_prices: str = ""
    """USD per million tokens by model, as YAML/JSON (or a file of it):
    `{"gpt-5": {"input": 1.25, "cached_input": 0.125, "output": 10}}`; a model without one gets tokens only."""
    usage_footer: bool = True
    """End each turn's Slack message with its duration, tokens and cost."""
    model_context_windows: str = ""
    """Input tokens a request may hold, by model, as YAML/JSON (or a file of it), e.g. `{"my-model": 32000}`;
    merged over the built-in table of known models (unknown ones: 128,000)."""
    context_budget: float = Field(0.8, ge=0.1, le=0.95)
    """Share of the agent model's context window a request may use; past it, older tool results become
    stubs, then older turns are summarised by CLASSIFIER_MODEL (the fast model)."""
    max_tool_steps: int = Field(40, ge=1, le=500)
    """Model calls one turn may make before it is ended, so a looping model cannot run forever."""
    max_prompt_chars: int = Field(20_000, ge=100)
    """Longer prompts get a clear reply instead of a session."""

    database_url: str = ""
    """SQLAlchemy URL; unset: a SQLite file under DATA_DIR. `postgresql://` is accepted, and makes this
    process one of N equal instances sharing that database."""
    data_dir: Path = Path("./data")
    instance_id: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    """This instance's name among several (PostgreSQL); unset: the host name and a random suffix, new
    at every start. Its containers carry it as a label."""
    session_lease_ttl: float = Field(10.0, ge=1.0, le=300.0)
    """Seconds a session's owner may go without a heartbeat before another instance takes it over."""

    web_host: str = "127.0.0.1"
    web_port: int = Field(8000, ge=0, le=65535)
    public_url: str = ""
    """Base of session links; unset: http://WEB_HOST:WEB_PORT."""
    secret_key: SecretStr | None = None
    """Signs the web's sign-in cookies; unset: generated once and kept in DATA_DIR/secret_key."""
    slack_oidc_client_id: str = ""
    """The Slack app's client id, for "Sign in with Slack" on the web (OpenID Connect); unset: sign in
    from the App Home only."""
    slack_oidc_client_secret: SecretStr | None = None
    slack_oidc_authorize_url: str = "https://slack.com/openid/connect/authorize"

    github_api_url: str = "https://api.github.com"
    """GitHub's REST API; GitHub Enterprise: https://HOST/api/v3."""
    github_web_url: str = "https://github.com"
    """GitHub's web pages (OAuth lives there); remotes on its host authenticate with GitHub tokens."""
    github_app_id: str = ""
    github_app_private_key: SecretStr | None = None
    """The GitHub App's private key: the PEM text, or the path of a file holding it."""
    github_client_id: str = ""
    """The GitHub App's OAuth client id (people link their GitHub account with it)."""
    github_client_secret: SecretStr | None = None
    github_webhook_secret: SecretStr | None = None
    """Checks `X-Hub-Signature-256` on `POST /webhooks/github`; unset: webhooks are refused."""
    github_app_mention: str = "hosted-agents"
    """What a PR comment says to address the agent (`@hosted-agents please ...`): it becomes a prompt."""

    repos_config: Path | None = None
    """YAML file of repositories (format in DESIGN.md)."""
    git_clone_url: str = "https://github.com/{repo}.git"

    sandbox_backend: Literal["docker", "none"] = "docker"
    """`none` runs without sandboxes: sessions keep their repo but the agent cannot touch code."""
    sandbox_network: Literal["proxy", "none", "host", "bridge"] = "proxy"
    """`proxy`: no network of its own, the way out is the service's egress proxy (SANDBOX_EGRESS_ALLOW);
    `none`: no way out; `host`: the host's network, every service on it included; `bridge`: Docker's bridge."""
    sandbox_egress_allow: str = ""
    """Hosts the egress proxy lets sandboxes reach, comma-separated `host`, `host:port`, `host:*` or
    `*.example.com` (no port: 80 and 443). Empty: the repositories' git hosts, PyPI, npm and the Debian
    mirrors of the base images. Loopback and private addresses only through a pattern naming that IP."""
    sandbox_memory: str = "2g"
    sandbox_cpus: float = Field(2.0, gt=0)
    sandbox_pids: int = Field(1024, ge=16)
    sandbox_runtime: str = ""
    """OCI runtime of sandboxes, e.g. `runsc` (gVisor, the stronger isolation for untrusted
    prompts); empty: the engine's default. Checked against `docker info` at start."""
    sandbox_disk: str = "10g"
    """Disk quota of each sandbox (its workspace, HOME, /tmp and /var/tmp, on an ext4 image of this
    size on a loop device under DATA_DIR). Empty or `0`: no quota."""
    sandbox_idle_timeout: float = Field(900.0, gt=0)
    """Seconds a session's container may sit idle before it is stopped (its snapshot stays)."""
    sandbox_command_timeout: float = Field(600.0, gt=0)
    """The longest a single command the agent runs may take."""
    image_rebuild_interval: float = Field(1800.0, ge=0)
    """Seconds between scheduled image builds of every repo (0 turns the schedule off)."""
    images_keep: int = Field(3, ge=1)
    warm_up_ttl: float = Field(300.0, gt=0)
    """Seconds a container warmed because someone started typing waits for their session; then it is
    removed and the warm-up counted as unused."""
    pool_entry_ttl: float = Field(3600.0, gt=0)
    """Seconds an unclaimed warm container lives before it is replaced."""
    snapshot_retention: float = Field(7 * 86400.0, ge=0)
    """Seconds a session's snapshot is kept after its last activity."""
    snapshots_max: int = Field(50, ge=1)
    """Most session snapshots (image and disk) kept; past it the oldest of idle sessions are evicted."""
    plugins: str = ""
    """Extra plugins, comma-separated `module:attribute` (plugins also load from the `hosted_agents` entry-point group)."""

    allow_guests: bool = False
    """Let Slack guests (multi- and single-channel) use the bot."""
    allow_external: bool = False
    """Let people from other organisations (Slack Connect) use the bot."""
    allow_users: SlackIds = frozenset()
    """When set (with or without ALLOW_USERGROUPS), only these Slack users may use the bot."""
    allow_usergroups: SlackIds = frozenset()
    """When set, members of these Slack user groups (ids like S0123ABCD) may use the bot."""
    admin_users: SlackIds = frozenset()
    """May stop any session or clear any queue."""
    session_prompters: Literal["repo", "participants"] = "repo"
    """Who may prompt in a session: anyone allowed on its repository, or its participants only."""
    max_sessions_per_user: int = Field(3, ge=1)
    """Sessions one person may have running at once; more wait their turn."""
    max_prompts_per_minute: int = Field(20, ge=1)
    """Prompts one person may send in a minute."""
    max_sandboxes: int = Field(0, ge=0)
    """Sessions with a sandbox running at once, service-wide; 0: machine memory / SANDBOX_MEMORY."""
    max_spawn_depth: int = Field(2, ge=0)
    """How deep sub-sessions nest: 1, a session's children may not start their own; 0, none are started."""
    max_children_per_session: int = Field(5, ge=0)
    """Sub-sessions one session may start (in all, not at once)."""
    max_sessions_per_tree: int = Field(15, ge=1)
    """Sessions in one tree of sub-sessions, its first session included."""

    slack_update_interval: float = Field(1.0, ge=0.2)
    """Least seconds between two updates of one Slack message (Slack allows about one a second)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token_shape(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and v.get_secret_value() and not v.get_secret_value().startswith("xoxb-"):
            raise ValueError("must be a bot token starting with xoxb-")
        return v or None

    @field_validator("slack_app_token")
    @classmethod
    def _app_token_shape(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and v.get_secret_value() and not v.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token starting with xapp- (Socket Mode)")
        return v or None

    @field_validator("secret_key", "slack_oidc_client_secret", "github_app_private_key", "github_client_secret",
                     "github_webhook_secret")
    @classmethod
    def _blank_is_unset(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value().strip() else None

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters "
                             "(e.g. from `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        return v

    @field_validator("model_prices")
    @classmethod
    def _prices(cls, v: str) -> str:
        parse_prices(v)
        return v

    @field_validator("model_context_windows")
    @classmethod
    def _windows(cls, v: str) -> str:
        parse_context_windows(v)
        return v

    @field_validator("github_app_id")
    @classmethod
    def _app_id(cls, v: str) -> str:
        if v.strip() and not v.strip().isdigit():
            raise ValueError("must be the GitHub App's numeric id (App settings → About → App ID)")
        return v.strip()

    @field_validator("github_app_private_key")
    @classmethod
    def _private_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return None
        text = v.get_secret_value().strip()
        if "-----BEGIN" not in text:
            path = Path(text).expanduser()
            if not path.is_file():
                raise ValueError("must be the PEM text of the App's private key or the path of a file holding it")
            text = path.read_text().strip()
            if "-----BEGIN" not in text:
                raise ValueError("the file does not hold a PEM private key")
        return SecretStr(text)

    @field_validator("slack_api_url", "public_url", "slack_oidc_authorize_url", "github_api_url", "github_web_url")
    @classmethod
    def _http_url_or_unset(cls, v: str) -> str:
        return _http_url(v) if v else ""

    @field_validator("openai_base_url")
    @classmethod
    def _optional_http_url(cls, v: str | None) -> str | None:
        return _http_url(v) if v else None

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str) -> str:
        return normalise_database_url(v) if v else ""

    @field_validator("sandbox_memory")
    @classmethod
    def _size(cls, v: str) -> str:
        parse_size(v)
        return v

    @field_validator("sandbox_egress_allow")
    @classmethod
    def _egress_patterns(cls, v: str) -> str:
        return ",".join(egress_patterns(v))

    @field_validator("sandbox_disk")
    @classmethod
    def _disk_size(cls, v: str) -> str:
        v = v.strip()
        if v in ("", "0"):
            return ""
        if parse_size(v) < MIN_DISK:
            raise ValueError("must be at least 16m (or 0 for no quota)")
        return v

    @field_validator("git_clone_url")
    @classmethod
    def _clone_template(cls, v: str) -> str:
        if "{repo}" not in v:
            raise ValueError("must contain {repo}, e.g. https://github.com/{repo}.git")
        return v

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        if not self.slack_api_url:
            self.slack_api_url = SLACK_API_URL
        if not self.slack_api_url.endswith("/"):
            self.slack_api_url += "/"
        if (self.slack_bot_token is None) != (self.slack_app_token is None):
            missing = "SLACK_APP_TOKEN" if self.slack_app_token is None else "SLACK_BOT_TOKEN"
            raise ValueError(f"{missing} is missing: Slack needs both SLACK_BOT_TOKEN and SLACK_APP_TOKEN")
        if bool(self.slack_oidc_client_id) != (self.slack_oidc_client_secret is not None):
            raise ValueError("Sign in with Slack needs both SLACK_OIDC_CLIENT_ID and SLACK_OIDC_CLIENT_SECRET")
        if bool(self.github_app_id) != (self.github_app_private_key is not None):
            raise ValueError("the GitHub App needs both GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY")
        if bool(self.github_client_id) != (self.github_client_secret is not None):
            raise ValueError("linking GitHub accounts needs both GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET")
        self.github_api_url = self.github_api_url.rstrip("/")
        self.github_web_url = self.github_web_url.rstrip("/")
        if not self.public_url:
            self.public_url = f"http://{self.web_host}:{self.web_port}"
        self.public_url = self.public_url.rstrip("/")
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{(self.data_dir / 'hosted-agents.db').resolve()}"
        return self

    @property
    def sandbox_slots(self) -> int:
        """MAX_SANDBOXES, or as many sandboxes as the machine's memory holds at SANDBOX_MEMORY each."""
        if self.max_sandboxes:
            return self.max_sandboxes
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return max(1, total // parse_size(self.sandbox_memory))

    @property
    def github_app_enabled(self) -> bool:
        return bool(self.github_app_id) and self.github_app_private_key is not None

    @property
    def github_linking_enabled(self) -> bool:
        return bool(self.github_client_id) and self.github_client_secret is not None

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.slack_oidc_client_id) and self.slack_oidc_client_secret is not None

    @property
    def slack_enabled(self) -> bool:
        return self.slack_bot_token is not None and self.slack_app_token is not None

    @property
    def model_configured(self) -> bool:
        return self.openai_api_key is not None or self.openai_base_url is not None

    def context_window(self, model: str) -> int:
        """The model's context window in tokens: MODEL_CONTEXT_WINDOWS, the built-in table, or 128,000."""
        windows = {**CONTEXT_WINDOWS, **parse_context_windows(self.model_context_windows)}
        if model in windows:
            return windows[model]
        prefixes = [name for name in windows if model.startswith(name)]  # dated or point releases: gpt-5-2025-08-07
        return windows[max(prefixes, key=len)] if prefixes else DEFAULT_CONTEXT_WINDOW

    def session_url(self, share_token: str) -> str:
        """The link format of a session's page; the web view serves it."""
        return f"{self.public_url}/s/{share_token}"


def normalise_database_url(url: str) -> str:
    """Pick the async driver for plain URLs so operators can paste what they have."""
    for plain, driver in (
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    raise ValueError("must be a postgresql:// or sqlite:/// URL")


_HOSTNAME = re.compile(r"(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
DEFAULT_PORTS = frozenset({80, 443})


def egress_pattern(text: str) -> tuple[str, frozenset[int] | None]:
    """One SANDBOX_EGRESS_ALLOW pattern as (host, ports): host is a lower-case name, `*.suffix`, `*`
    or a normalised IP literal; ports None means any. Raises ValueError saying what is wrong.
    Lives here so settings are checked at load; sandbox/egress.py matches with it."""
    raw = text.strip().lower()
    host, port = raw, ""
    if raw.startswith("["):  # [v6] or [v6]:port
        end = raw.find("]")
        if end < 0 or (raw[end + 1 :] and not raw[end + 1 :].startswith(":")):
            raise ValueError(f"{text!r}: an IPv6 pattern is [address] or [address]:port")
        host, port = raw[1:end], raw[end + 2 :]
    elif raw.count(":") == 1:
        host, port = raw.split(":")
    elif ":" in raw:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, [address]:port")
    ports: frozenset[int] | None = DEFAULT_PORTS
    if port == "*":
        ports = None
    elif port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r}: the port must be 1-65535 or *")
        ports = frozenset({int(port)})
    elif raw.endswith(":"):
        raise ValueError(f"{text!r}: a port is missing after the colon")
    host = host.rstrip(".")
    try:
        return ipaddress.ip_address(host).compressed, ports
    except ValueError:
        pass
    if host != "*" and (len(host) > 253 or not _HOSTNAME.fullmatch(host)):
        raise ValueError(f"{text!r}: not a host name, `*.domain` wildcard or IP address")
    return host, ports


def egress_patterns(text: str) -> list[str]:
    """The comma-separated patterns, checked and normalised (lower case, no blanks)."""
    patterns = []
    for item in text.split(","):
        if item.strip():
            egress_pattern(item)
            patterns.append(item.strip().lower())
    return patterns


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None

    def cost(self, prompt: int, cached: int, completion: int) -> float:
        cached_rate = self.cached_input if self.cached_input is not None else self.input
        return ((prompt - cached) * self.input + cached * cached_rate + completion * self.output) / 1_000_000


def _model_map(text: str, example: str) -> dict[Any, Any]:
    """A setting that maps model names to values: YAML or JSON text, or the path of a file holding it."""
    text = text.strip()
    if not text:
        return {}
    if not text.startswith(("{", "-")) and "\n" not in text and Path(text).expanduser().is_file():
        text = Path(text).expanduser().read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"is not YAML or JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"must map model names to {example}")
    return raw


CONTEXT_WINDOWS = {
    "gpt-5": 272_000, "gpt-5-mini": 272_000, "gpt-5-nano": 272_000,
    "gpt-4.1": 1_047_576, "gpt-4.1-mini": 1_047_576, "gpt-4.1-nano": 1_047_576,
    "gpt-4o": 128_000, "gpt-4o-mini": 128_000, "o3": 200_000, "o4-mini": 200_000,
}
"""Input tokens per request of known models (OpenAI's model pages; gpt-5's 400k includes 128k of output)."""
DEFAULT_CONTEXT_WINDOW = 128_000


def parse_context_windows(text: str) -> dict[str, int]:
    """MODEL_CONTEXT_WINDOWS: model name to input tokens."""
    windows = {}
    for model, tokens in _model_map(text, 'token counts, e.g. {"my-model": 32000}').items():
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1000:
            raise ValueError(f"{model}: give the context window in tokens, a whole number of at least 1000")
        windows[str(model)] = tokens
    return windows


def parse_prices(text: str) -> dict[str, Price]:
    """MODEL_PRICES: YAML or JSON text, or the path of a file holding it."""
    raw = _model_map(text, 'prices, e.g. {"gpt-5": {"input": 1.25, "output": 10}}')
    prices = {}
    for model, price in raw.items():
        if not isinstance(price, dict) or not {"input", "output"} <= set(price) <= {"input", "output", "cached_input"}:
            raise ValueError(f"{model}: give input, output and optionally cached_input (USD per million tokens)")
        try:
            values = {k: float(v) for k, v in price.items()}
        except (TypeError, ValueError):
            raise ValueError(f"{model}: prices must be numbers") from None
        if any(v < 0 for v in values.values()):
            raise ValueError(f"{model}: prices cannot be negative")
        prices[str(model)] = Price(**values)
    return prices


def secret_key(settings: Settings) -> bytes:
    """SECRET_KEY, or the key generated on first start and kept in DATA_DIR (mode 0600): signs the
    web's cookies and, derived per purpose, encrypts stored tokens."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = settings.data_dir / "secret_key"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_urlsafe(48).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    log.info("generated a SECRET_KEY in %s (set SECRET_KEY to manage it yourself)", path.resolve())
    return key


class ConfigError(Exception):
    """A setting or the repos file is wrong; the message is one line per problem, for people."""


def describe_errors(exc: ValidationError) -> str:
    """Turn pydantic's report into `SETTING: problem` lines without echoing secret values."""
    lines = []
    for err in exc.errors():
        name = ".".join(str(part) for part in err["loc"]).upper() or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        shown = err.get("input")
        secret = "TOKEN" in name or "KEY" in name
        if err["loc"] and isinstance(shown, str) and not secret and len(shown) < 200:
            lines.append(f"{name}: {msg} (got {shown!r})")
        else:
            lines.append(f"{name}: {msg}" if err["loc"] else msg)
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read settings (`overrides` are field values, or pydantic-settings' `_env_file` and the
    like), raising ConfigError with a readable message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None
