"""The deterministic rules: they decide only when they are sure.

A match is certain when it names exactly one repo; two repos named is ambiguity, which the
rules report as alternatives and leave to the next step (never a guess).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.repos import RepoCatalog

_SLACK_LINK = re.compile(r"<(https?://[^|>]+)(?:\|[^>]*)?>")
_OVERRIDE = re.compile(r"(?:\brepo\s*[=:]\s*|\bin\s+)`?([A-Za-z0-9][\w.-]*/[\w.-]*[\w-])`?", re.IGNORECASE)
_OWNER_REPO = re.compile(r"(?<![\w./-])([A-Za-z0-9][\w-]*/[\w.-]*[\w-])(?![\w/-])")
_GITHUB_URL = re.compile(r"github\.com/([A-Za-z0-9][\w-]*)/([\w.-]+?)(?:\.git)?(?=[/#?\s>|)\]]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class RuleMatch:
    repos: tuple[str, ...]
    """Configured repo names matched, best first; one means certain."""
    source: str
    confidence: float
    reason: str


def normalise(text: str) -> str:
    """Slack's `<url|label>` links become their URL; everything else stays."""
    return _SLACK_LINK.sub(lambda m: m.group(1), text or "")


class Rules:
    def __init__(self, catalog: RepoCatalog):
        self.catalog = catalog
        self._names = {r.name.lower(): r.name for r in catalog.repos}
        self._words: list[tuple[re.Pattern[str], str, str]] = []
        for repo in catalog.repos:
            for kind, words in (("alias", repo.aliases), ("keyword", repo.keywords)):
                for word in words:
                    if word.strip():
                        pattern = re.compile(rf"(?<![\w-]){re.escape(word.strip())}(?![\w-])", re.IGNORECASE)
                        self._words.append((pattern, repo.name, kind))
        self._channels: dict[str, list[str]] = {}
        for repo in catalog.repos:
            for channel in repo.channels:
                self._channels.setdefault(channel.lower(), []).append(repo.name)

    def override(self, text: str) -> RuleMatch | None:
        """`in owner/repo` or `repo=owner/repo`: the person said which; it wins over everything."""
        for match in _OVERRIDE.finditer(normalise(text)):
            name = self._names.get(match.group(1).lower())
            if name:
                return RuleMatch((name,), "override", 1.0, f"the message says {match.group(0).strip()!r}")
        return None

    def explicit(self, text: str) -> RuleMatch | None:
        """`owner/repo`, a GitHub URL of a repo, an alias or a keyword, whole words only."""
        text = normalise(text)
        named: list[str] = []
        for match in _GITHUB_URL.finditer(text):
            name = self._names.get(f"{match.group(1)}/{match.group(2)}".lower())
            if name and name not in named:
                named.append(name)
        for match in _OWNER_REPO.finditer(text):
            name = self._names.get(match.group(1).lower())
            if name and name not in named:
                named.append(name)
        if named:
            return RuleMatch(tuple(named), "explicit", 0.98 if len(named) == 1 else 0.5,
                             f"the message names {', '.join(named)}")
        by_repo: dict[str, list[str]] = {}
        kinds: dict[str, set[str]] = {}
        for pattern, repo, kind in self._words:
            found = pattern.search(text)
            if found:
                by_repo.setdefault(repo, []).append(found.group(0))
                kinds.setdefault(repo, set()).add(kind)
        if not by_repo:
            return None
        ranked = sorted(by_repo, key=lambda r: (-("alias" in kinds[r]), -len(by_repo[r])))
        if len(ranked) == 1:
            repo = ranked[0]
            kind = "alias" if "alias" in kinds[repo] else "keyword"
            words = ", ".join(repr(w) for w in dict.fromkeys(by_repo[repo]))
            return RuleMatch((repo,), kind, 0.9 if kind == "alias" else 0.8, f"{kind} {words} belongs to {repo}")
        hits = "; ".join(f"{r}: {', '.join(dict.fromkeys(by_repo[r]))}" for r in ranked)
        return RuleMatch(tuple(ranked), "ambiguous", 0.3, f"words of several repos ({hits})")

    def channel(self, name: str | None) -> RuleMatch | None:
        repos = self._channels.get((name or "").lower().lstrip("#"))
        if not repos:
            return None
        if len(repos) == 1:
            return RuleMatch((repos[0],), "channel", 0.75, f"#{name} is {repos[0]}'s channel")
        return RuleMatch(tuple(repos), "ambiguous", 0.3, f"#{name} is the channel of several repos")
