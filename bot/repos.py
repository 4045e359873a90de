"""The repositories file (`REPOS_CONFIG`): parsed and validated once, at start-up.

Format in DESIGN.md. Unknown fields are errors naming the repo and the field, so a typo in
`pool_sise` is caught before anyone waits on a pool that never fills.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.config import ConfigError

REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+$")
_SCP_URL = re.compile(r"^(?P<user>[A-Za-z0-9._-]+@)?(?P<host>[A-Za-z0-9.-]+):(?!/)(?P<path>[^\s]+)$")
"""`git@github.com:owner/repo.git`, the short ssh form git accepts."""
_BRANCH = re.compile(r"^(?!-)(?!/)(?!.*\.\.)(?!.*//)(?!.*@\{)[^\x00-\x20\x7f~^:?*\[\\]{1,200}(?<![/.])$")
"""A branch name git accepts (the rules of `git check-ref-format --branch`), never an option."""
_USER_ID = re.compile(r"^[UW][A-Z0-9]{1,31}$")


def clone_url_host(url: str) -> str | None:
    """The host of an https/http/ssh clone URL (or scp-like `git@host:path`), else None."""
    parts = urlsplit(url)
    if parts.scheme in ("https", "http", "ssh") and parts.hostname:
        return parts.hostname
    scp = _SCP_URL.match(url) if "://" not in url else None
    return scp.group("host") if scp else None


def check_clone_url(url: str) -> str:
    """A clone URL git gets as an argument: https, http or ssh only (no `ext::`, `file://` or an
    option in disguise), and no credentials (they would be readable inside every sandbox)."""
    if url.startswith("-") or any(c.isspace() for c in url):
        raise ValueError("must be an https://, http:// or ssh:// URL (no spaces, not starting with '-')")
    if clone_url_host(url) is None:
        raise ValueError("must be an https://, http:// or ssh:// URL, or git@host:owner/repo.git")
    parts = urlsplit(url)
    if parts.password or (parts.scheme in ("http", "https") and parts.username):
        raise ValueError("must not contain credentials (they would be readable inside every sandbox)")
    return url


def _branch_name(v: str) -> str:
    if not _BRANCH.match(v) or v.endswith(".lock") or "/." in v or v.startswith(".") or v == "@":
        raise ValueError(f"{v[:100]!r} is not a valid branch name")
    return v


class ImageRecipe(BaseModel):
    """How a repo's sandbox image is built (used by the sandbox layer)."""

    model_config = ConfigDict(extra="forbid")

    base: str = "hosted-agents/base:bookworm"
    """Image the checkout is put in."""
    setup: list[str] = Field(default_factory=list)
    """Run once per image build, in the checkout."""
    warm: list[str] = Field(default_factory=list)
    """Fill caches (e.g. run the tests once); failures are logged, not fatal."""


class RepoDefaults(BaseModel):
    """Values applied to every repo unless it sets its own."""

    model_config = ConfigDict(extra="forbid")

    image: ImageRecipe | None = None
    pool_size: int | None = Field(None, ge=0, le=50)
    default_branch: str | None = None


class Repo(BaseModel):
    """One repository the agent may work on."""

    model_config = ConfigDict(extra="forbid")

    name: str
    """`owner/repo`."""
    description: str = ""
    clone_url: str | None = None
    """Default: GIT_CLONE_URL with {repo} filled in."""
    default_branch: str = "main"
    aliases: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    channels: list[str] = Field(default_factory=list)
    """Channels (names or ids) whose requests go to this repo; when set, the only channels it may be used from."""
    users: list[str] = Field(default_factory=list)
    """When set, the only Slack users (ids) who may use this repo."""
    examples: list[str] = Field(default_factory=list)
    image: ImageRecipe = Field(default_factory=ImageRecipe)
    pool_size: int = Field(1, ge=0, le=50)

    @field_validator("name")
    @classmethod
    def _owner_repo(cls, v: str) -> str:
        if not REPO_NAME.match(v):
            raise ValueError("must be owner/repo")
        return v

    @field_validator("clone_url")
    @classmethod
    def _clone_url(cls, v: str | None) -> str | None:
        return check_clone_url(v) if v is not None else None

    @field_validator("default_branch")
    @classmethod
    def _branch(cls, v: str) -> str:
        return _branch_name(v)

    @field_validator("users")
    @classmethod
    def _user_ids(cls, v: list[str]) -> list[str]:
        bad = [u for u in v if not _USER_ID.match(u)]
        if bad:
            raise ValueError(f"{', '.join(bad)}: not Slack user ids (like U0123ABCD)")
        return v

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, v: list[str]) -> list[str]:
        return [c.removeprefix("#") for c in v]


class ReposFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: RepoDefaults = Field(default_factory=RepoDefaults)
    repos: list[Repo] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ReposFile:
        seen: set[str] = set()
        for repo in self.repos:
            if repo.name.lower() in seen:
                raise ValueError(f"repo {repo.name!r} is listed twice")
            seen.add(repo.name.lower())
        return self


class RepoCatalog:
    """The configured repositories, with their clone URLs resolved."""

    def __init__(self, repos: list[Repo]):
        self.repos = repos
        self._by_name = {r.name.lower(): r for r in repos}

    def get(self, name: str) -> Repo | None:
        return self._by_name.get(name.lower())

    def __len__(self) -> int:
        return len(self.repos)


def _apply_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        return raw
    repos = raw.get("repos")
    if not isinstance(repos, list):
        return raw
    merged = []
    for entry in repos:
        if isinstance(entry, dict):
            base = {k: v for k, v in defaults.items() if v is not None}
            if isinstance(base.get("image"), dict) and isinstance(entry.get("image"), dict):
                entry = {**entry, "image": {**base["image"], **entry["image"]}}
            entry = {**base, **entry}
        merged.append(entry)
    return {**raw, "repos": merged}


def _describe(exc: ValidationError, raw: dict[str, Any]) -> str:
    repos = raw.get("repos")
    if not isinstance(repos, list):
        repos = []
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "repos" and isinstance(loc[1], int):
            entry = repos[loc[1]] if loc[1] < len(repos) else None
            label = entry.get("name") if isinstance(entry, dict) and entry.get("name") else f"#{loc[1] + 1}"
            where = f"repo {label!r}: "
            loc = loc[2:]
        field = ".".join(str(p) for p in loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}unknown field {field!r}")
        elif field:
            lines.append(f"{where}field {field!r}: {msg}")
        else:
            lines.append(f"{where}{msg}")
    return "; ".join(lines)


def load_repos(path: Path | None, clone_url_template: str) -> RepoCatalog:
    """Read and validate the repos file; an absent setting means an empty catalog."""
    if path is None:
        return RepoCatalog([])
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"REPOS_CONFIG: cannot read {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"REPOS_CONFIG: {path} is not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"REPOS_CONFIG: {path} must be a mapping with a 'repos' list")
    try:
        parsed = ReposFile.model_validate(_apply_defaults(raw))
    except ValidationError as exc:
        raise ConfigError(f"REPOS_CONFIG: {path}: {_describe(exc, raw)}") from None
    for repo in parsed.repos:
        if repo.clone_url is None:
            try:
                repo.clone_url = check_clone_url(clone_url_template.format(repo=repo.name))
            except ValueError as exc:
                raise ConfigError(f"GIT_CLONE_URL: {exc}") from None
    return RepoCatalog(parsed.repos)
