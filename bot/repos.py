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
    def _no_credentials(cls, v: str | None) -> str | None:
        # A token in the URL would land in build logs and in every sandbox's .git/config.
        # (`ssh://git@host/...` names a user, not a secret.)
        parts = urlsplit(v or "")
        if parts.password or (parts.scheme in ("http", "https") and parts.username):
            raise ValueError("must not contain credentials (they would be readable inside every sandbox)")
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
            repo.clone_url = clone_url_template.format(repo=repo.name)
    return RepoCatalog(parsed.repos)
