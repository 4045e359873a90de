"""Is it paying off: the figures of the stats page, its CSV/JSON and `hosted-agents stats`, read
from the central database (sessions, their PRs, turns, prompts, warm-ups).

A window is the `days` before `now`; a session belongs to it by when it started, a PR and its
merge go with their session. Percentiles are nearest-rank (p50 of 1, 2, 3, 4 is 2). Every figure
is defined here once; the page, the files and the CLI only present them.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from bot.events import Origin
from bot.store.db import Database
from bot.store.tables import PromptRow, PullRequestRow, SessionRow, TurnRow, WarmUpRow

HUMANS_WINDOW = 300.0
"""Seconds within which a prompt counts toward "humans prompting"."""


def nearest_rank(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


@dataclass
class Split:
    sessions: int = 0
    with_pr: int = 0
    merged: int = 0
    pr_share: float = 0.0
    merged_share: float = 0.0

    def close(self) -> Split:
        self.pr_share, self.merged_share = _share(self.with_pr, self.sessions), _share(self.merged, self.sessions)
        return self


@dataclass
class Stats:
    days: int
    since: str
    until: str
    sessions: int = 0
    with_pr: int = 0
    merged: int = 0
    pr_share: float = 0.0
    merged_share: float = 0.0
    per_day: dict[str, Split] = field(default_factory=dict)
    per_repo: dict[str, Split] = field(default_factory=dict)
    per_person: dict[str, Split] = field(default_factory=dict)
    first_token_ms_p50: float | None = None
    first_token_ms_p95: float | None = None
    infra_ms_p50: float | None = None
    infra_ms_p95: float | None = None
    prs: int = 0
    approved_prs: int = 0
    approval_rate: float = 0.0
    revisions_per_pr: float = 0.0
    to_pr_s_p50: float | None = None
    to_merge_s_p50: float | None = None
    cost_usd: float = 0.0
    cost_per_session: float = 0.0
    cost_per_merged_pr: float = 0.0
    warm_ups: int = 0
    warm_ups_used: int = 0
    warm_ups_unused: int = 0
    warm_up_hit_rate: float = 0.0
    warm_up_saved_ms: float = 0.0
    humans_prompting: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def as_rows(self) -> list[tuple[str, str, str]]:
        """(figure, key, value): the CSV, one row a number."""
        rows: list[tuple[str, str, str]] = []
        for name, value in asdict(self).items():
            if isinstance(value, dict):
                for key, split in value.items():
                    rows += [(f"{name}.{k}", key, _cell(v)) for k, v in split.items()]
            else:
                rows.append((name, "", _cell(value)))
        return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


async def compute(db: Database, days: int = 30, now: float | None = None) -> Stats:
    now = time.time() if now is None else now
    since = now - days * 86400
    start = datetime.fromtimestamp(since, UTC)
    stats = Stats(days, start.isoformat(timespec="seconds"), datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"))
    async with db.session() as s:
        sessions = (await s.execute(select(SessionRow.id, SessionRow.repo, SessionRow.creator, SessionRow.created_at,
                                           SessionRow.origin).where(SessionRow.created_at >= start))).all()
        ids = {row.id for row in sessions}
        # A PR and a turn come after their session started: the window bounds what is read.
        prs = [p for p in (await s.execute(select(PullRequestRow).where(PullRequestRow.created_at >= since)))
               .scalars().all() if p.session_id in ids]
        turns = (await s.execute(select(TurnRow).where(TurnRow.started_at >= since, TurnRow.started_at <= now)))\
            .scalars().all()
        session_cost = (await s.execute(select(TurnRow.session_id, TurnRow.cost_usd)
                                        .where(TurnRow.started_at >= since, TurnRow.cost_usd.is_not(None)))).all()
        warm = (await s.execute(select(WarmUpRow).where(WarmUpRow.created_at >= since))).scalars().all()
        prompters = (await s.execute(select(PromptRow.author).where(
            PromptRow.at > now - HUMANS_WINDOW, PromptRow.at <= now,
            PromptRow.origin != Origin.PARENT_SESSION.value))).scalars().all()
    top_level = [r for r in sessions if r.origin != Origin.PARENT_SESSION.value]  # sub-sessions are the agent's work
    pr_of: dict[str, list[PullRequestRow]] = defaultdict(list)
    for pr in prs:
        pr_of[pr.session_id].append(pr)
    day = _day_splits(start, days)
    for row in top_level:
        has_pr, merged = bool(pr_of[row.id]), any(p.state == "merged" for p in pr_of[row.id])
        created = _aware(row.created_at)
        for split in (day.setdefault(created.date().isoformat(), Split()),
                      stats.per_repo.setdefault(row.repo or "(none)", Split()),
                      stats.per_person.setdefault(row.creator or "(unknown)", Split())):
            split.sessions += 1
            split.with_pr += has_pr
            split.merged += merged
        stats.sessions += 1
        stats.with_pr += has_pr
        stats.merged += merged
    stats.per_day = {k: v.close() for k, v in sorted(day.items())}
    for split in (*stats.per_repo.values(), *stats.per_person.values()):
        split.close()
    stats.pr_share, stats.merged_share = _share(stats.with_pr, stats.sessions), _share(stats.merged, stats.sessions)

    first = [t.first_token_ms for t in turns if t.first_token_ms is not None]
    infra = [t.request_ms for t in turns if t.request_ms is not None]
    stats.first_token_ms_p50, stats.first_token_ms_p95 = nearest_rank(first, 50), nearest_rank(first, 95)
    stats.infra_ms_p50, stats.infra_ms_p95 = nearest_rank(infra, 50), nearest_rank(infra, 95)

    stats.prs = len(prs)
    stats.approved_prs = sum(1 for p in prs if p.approvals > 0)
    stats.approval_rate = _share(stats.approved_prs, stats.prs)
    stats.revisions_per_pr = sum(p.pushes_after_review for p in prs) / stats.prs if prs else 0.0
    created_at = {row.id: _aware(row.created_at).timestamp() for row in sessions}
    stats.to_pr_s_p50 = nearest_rank([p.created_at - created_at[p.session_id] for p in prs], 50)
    stats.to_merge_s_p50 = nearest_rank([p.merged_at - created_at[p.session_id] for p in prs if p.merged_at], 50)

    cost: defaultdict[str, float] = defaultdict(float)
    for session_id, usd in session_cost:
        if session_id in ids and usd:
            cost[session_id] += usd
    stats.cost_usd = sum(cost.values())
    stats.cost_per_session = stats.cost_usd / stats.sessions if stats.sessions else 0.0  # sub-sessions' cost included
    merged_ids = {p.session_id for p in prs if p.state == "merged"}
    stats.cost_per_merged_pr = sum(cost[i] for i in merged_ids) / len(merged_ids) if merged_ids else 0.0

    stats.warm_ups = len(warm)
    stats.warm_ups_used = sum(1 for w in warm if w.used is True)
    stats.warm_ups_unused = sum(1 for w in warm if w.used is False)
    stats.warm_up_hit_rate = _share(stats.warm_ups_used, stats.warm_ups_used + stats.warm_ups_unused)
    stats.warm_up_saved_ms = sum(w.saved_ms or 0.0 for w in warm if w.used)
    stats.humans_prompting = len(set(prompters))
    return stats


async def humans_prompting(db: Database, now: float | None = None) -> int:
    """Distinct people who sent a prompt in the last five minutes (sub-sessions are not people)."""
    now = time.time() if now is None else now
    async with db.session() as s:
        rows = (await s.execute(select(PromptRow.author).where(
            PromptRow.at > now - HUMANS_WINDOW, PromptRow.at <= now,
            PromptRow.origin != Origin.PARENT_SESSION.value).distinct())).scalars().all()
    return len(rows)


def _day_splits(start: datetime, days: int) -> dict[str, Split]:
    """Every day of the window, so a day without sessions shows as zero."""
    first = start.date()
    return {(first + timedelta(days=i)).isoformat(): Split() for i in range(days + 1)}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
