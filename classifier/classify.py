"""`classify`: the rules in order, then the model, else ask the person.

1. an override (`in owner/repo`, `repo=owner/repo`), then an explicit reference in the message
   (`owner/repo`, a GitHub URL, an alias, a keyword; two repos named is not certainty, and
   neither is a keyword of one repo said in another repo's channel);
2. a repo already bound to the thread;
3. an explicit `owner/repo` or URL earlier in the thread;
4. the channel's configured repo;
5. the fast model, when it is confident enough;
6. otherwise no repo: the caller asks, offering the alternatives gathered on the way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bot.repos import RepoCatalog
from classifier.model import ModelClassifier
from classifier.rules import RuleMatch, Rules


@dataclass(frozen=True)
class RequestContext:
    message: str
    thread: list[str] = field(default_factory=list)
    """Earlier messages of the thread, oldest first."""
    channel: str | None = None
    topic: str | None = None
    recent_repos: list[str] = field(default_factory=list)
    """The person's recent repos, most recent first."""
    thread_repo: str | None = None


@dataclass(frozen=True)
class Classification:
    repo: str | None
    confidence: float
    alternatives: tuple[str, ...]
    reason: str
    source: str
    """override, explicit, alias, keyword, thread, thread-message, channel, only-repo, model, or ask."""
    elapsed_ms: float = 0.0


class Classifier:
    def __init__(self, catalog: RepoCatalog, model: ModelClassifier | None, min_confidence: float = 0.6):
        self.catalog = catalog
        self.rules = Rules(catalog)
        self.model = model
        self.min_confidence = min_confidence

    def likeliest(self, ctx: RequestContext) -> str | None:
        """A cheap guess, when the rules cannot decide, to warm a sandbox while the model thinks:
        the channel's repo, else the person's last one."""
        channel = self.rules.channel(ctx.channel)
        if channel and len(channel.repos) == 1:
            return channel.repos[0]
        return next((r for r in ctx.recent_repos if self.catalog.get(r)), None)

    def decide_by_rules(self, ctx: RequestContext) -> Classification | None:
        """What the rules decide with certainty, or None."""
        if len(self.catalog) == 1:
            return Classification(self.catalog.repos[0].name, 1.0, (), "the only configured repository", "only-repo")
        override = self.rules.override(ctx.message)
        if override is not None:
            return _decided(override)
        explicit = self.rules.explicit(ctx.message)
        channel = self.rules.channel(ctx.channel)
        if explicit is not None and len(explicit.repos) == 1:
            # A keyword is a topic, not a name: against another repo's channel it is no certainty.
            conflict = explicit.source == "keyword" and channel is not None and explicit.repos[0] not in channel.repos
            if not conflict:
                return _decided(explicit)
        if ctx.thread_repo and self.catalog.get(ctx.thread_repo):
            return Classification(ctx.thread_repo, 0.95, (), "this thread already works on it", "thread")
        for earlier in reversed(ctx.thread):
            match = self.rules.explicit(earlier)
            if match is not None and match.source == "explicit" and len(match.repos) == 1:
                return Classification(match.repos[0], 0.85, (), f"earlier in the thread: {match.reason}", "thread-message")
        if explicit is None and channel is not None and len(channel.repos) == 1:
            return _decided(channel)  # a channel default never overrides words of another repo
        return None

    async def classify(self, ctx: RequestContext) -> Classification:
        started = time.monotonic()
        decided = self.decide_by_rules(ctx)
        if decided is not None:
            return _timed(decided, started)
        hints = self._hints(ctx)
        if self.model is not None and len(self.catalog):
            vote = await self.model.vote(ctx.message, ctx.thread, ctx.channel, ctx.topic)
            if vote is not None and vote.repo is not None and vote.confidence >= self.min_confidence:
                return _timed(Classification(vote.repo, vote.confidence, vote.alternatives, vote.reason, "model"), started)
            if vote is not None:
                hints = _merge(([vote.repo] if vote.repo else []) + list(vote.alternatives), hints)
                reason = f"the model was unsure ({vote.confidence:.2f}): {vote.reason}"
            else:
                reason = "the model gave no usable answer"
        else:
            reason = "no rule decided and no model is configured"
        return _timed(Classification(None, 0.0, tuple(hints[:5]), reason, "ask"), started)

    def _hints(self, ctx: RequestContext) -> list[str]:
        hints: list[str] = []
        for match in (self.rules.explicit(ctx.message), self.rules.channel(ctx.channel)):
            if match is not None:
                hints = _merge(hints, list(match.repos))
        return _merge(hints, [r for r in ctx.recent_repos if self.catalog.get(r)])


def _decided(match: RuleMatch) -> Classification:
    return Classification(match.repos[0], match.confidence, (), match.reason, match.source)


def _timed(c: Classification, started: float) -> Classification:
    return Classification(c.repo, c.confidence, c.alternatives, c.reason, c.source, (time.monotonic() - started) * 1000)


def _merge(first: list[str], second: list[str]) -> list[str]:
    return list(dict.fromkeys([*first, *second]))
