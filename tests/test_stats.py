"""The stats: every figure on /stats, /stats.json and /stats.csv against a hand count, an empty
database, and the edges of the five-minute window of humans prompting."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from datetime import UTC, datetime

import aiohttp
import pytest

from bot.service import Service
from bot.sessions.stats import compute
from bot.store.tables import PromptRow, PullRequestRow, SessionRow, TurnRow, WarmUpRow
from tests.conftest import make_settings, service_env
from tests.web_client import signed_in

DAY = 86400


@pytest.fixture
async def svc(tmp_path, slack, model):  # type: ignore[no-untyped-def]
    service = Service(make_settings(service_env(tmp_path / "data", slack, model)))
    await service.start()
    await asyncio.wait_for(slack.connected.wait(), 10)
    yield service
    await service.stop()


async def seed(svc: Service, now: float) -> None:
    def at(ts: float) -> datetime:
        return datetime.fromtimestamp(ts, UTC)

    sessions = [("s1", "acme/api", "U1", now - 1 * DAY, "slack_thread"), ("s2", "acme/api", "U2", now - 2 * DAY, "web"),
                ("s3", "acme/web", "U1", now - 10 * DAY, "slack_thread"), ("s4", "acme/web", "U1", now - 1 * DAY,
                                                                          "parent_session")]
    async with svc.db.session() as s, s.begin():
        for sid, repo, creator, created, origin in sessions:
            s.add(SessionRow(id=sid.ljust(16, "0"), share_token=sid * 10, status="idle", repo=repo, creator=creator,
                             origin=origin, created_at=at(created), updated_at=at(created)))
        await s.flush()
        s.add(PullRequestRow(session_id="s1".ljust(16, "0"), repo="acme/api", number=1, url="u1", branch="b1",
                             author="U1", opened_as="user", state="merged", approvals=1, changes_requested=0,
                             first_review_at=now - DAY + 700, pushes_after_review=2, created_at=now - DAY + 600,
                             merged_at=now - DAY + 3600))
        s.add(PullRequestRow(session_id="s3".ljust(16, "0"), repo="acme/web", number=2, url="u2", branch="b2",
                             author="U1", opened_as="user", state="open", approvals=0, changes_requested=1,
                             pushes_after_review=0, created_at=now - 10 * DAY + 60))
        for sid, first, request, cost in (("s1", 100.0, 10.0, 0.5), ("s2", 300.0, 30.0, 0.25), ("s3", 200.0, 20.0, None)):
            start = {"s1": now - DAY, "s2": now - 2 * DAY, "s3": now - 10 * DAY}[sid] + 1
            s.add(TurnRow(session_id=sid.ljust(16, "0"), prompt_id=1, author="U1", started_at=start, ended_at=start + 5,
                          first_token_ms=first, request_ms=request, outcome="done", tokens=100, cost_usd=cost))
        for author, ago, origin in (("U1", 10, "slack_thread"), ("U2", 299, "web"), ("U3", 300, "slack_thread"),
                                    ("U4", 301, "slack_thread"), ("U1", 20, "slack_thread"), ("U5", 5, "parent_session")):
            s.add(PromptRow(session_id="s1".ljust(16, "0"), author=author, origin=origin, at=now - ago))
        for used, saved in ((True, 1000.0), (False, None), (None, None)):
            s.add(WarmUpRow(trigger="app_home", repo="acme/api", user_id="U1", created_at=now - 100, used=used,
                            saved_ms=saved))


async def test_an_empty_database_gives_zeros(svc):
    stats = await compute(svc.db, 30)
    assert (stats.sessions, stats.with_pr, stats.merged, stats.pr_share, stats.humans_prompting) == (0, 0, 0, 0.0, 0)
    assert stats.first_token_ms_p50 is None and stats.cost_per_merged_pr == 0.0 and len(stats.per_day) == 31


async def test_every_figure_matches_a_hand_count(svc):
    now = time.time()
    await seed(svc, now)
    s = await compute(svc.db, 30, now=now)
    assert (s.sessions, s.with_pr, s.merged) == (3, 2, 1), "the sub-session is the agent's work, not a session"
    assert s.pr_share == pytest.approx(2 / 3) and s.merged_share == pytest.approx(1 / 3)
    assert s.per_repo["acme/api"].sessions == 2 and s.per_repo["acme/api"].merged == 1
    assert s.per_repo["acme/web"].with_pr == 1 and s.per_repo["acme/web"].merged == 0
    assert s.per_person["U1"].sessions == 2 and s.per_person["U2"].with_pr == 0
    assert sum(d.sessions for d in s.per_day.values()) == 3
    assert (s.first_token_ms_p50, s.first_token_ms_p95, s.infra_ms_p50, s.infra_ms_p95) == (200.0, 300.0, 20.0, 30.0)
    assert (s.prs, s.approved_prs, s.approval_rate, s.revisions_per_pr) == (2, 1, 0.5, 1.0)
    assert s.to_pr_s_p50 == pytest.approx(60.0) and s.to_merge_s_p50 == pytest.approx(3600.0)
    assert s.cost_usd == pytest.approx(0.75) and s.cost_per_session == pytest.approx(0.25)
    assert s.cost_per_merged_pr == pytest.approx(0.5)
    assert (s.warm_ups, s.warm_ups_used, s.warm_ups_unused, s.warm_up_hit_rate, s.warm_up_saved_ms) == (3, 1, 1, 0.5, 1000.0)
    assert s.humans_prompting == 2, "U1 (twice) and U2 at 299 s; not U3 at exactly 300 s, U4 at 301 s or a sub-session"
    week = await compute(svc.db, 7, now=now)
    assert (week.sessions, week.with_pr, week.merged, week.prs) == (2, 1, 1, 1)


async def test_the_page_and_its_files_show_the_same_numbers(svc, slack):
    now = time.time()
    await seed(svc, now)
    alice = await signed_in(svc, slack, "U0ALICE1")
    try:
        status, html = await alice.get("/stats")
        assert status == 200 and "<svg" in html and "Humans prompting now" in html
        assert '<strong id="humans">2</strong>' in html and "67%" in html and "33%" in html
        status, body = await alice.get("/stats.json?days=30")
        data = json.loads(body)
        assert (data["sessions"], data["with_pr"], data["merged"], data["humans_prompting"]) == (3, 2, 1, 2)
        status, text = await alice.get("/stats.csv?days=7")
        rows = {(r[0], r[1]): r[2] for r in csv.reader(io.StringIO(text))}
        assert rows[("sessions", "")] == "2" and rows[("merged", "")] == "1"
        assert rows[("per_repo.sessions", "acme/api")] == "2"
        status, _ = await alice.get("/stats.json?days=0")
        assert status == 400
    finally:
        await alice.close()
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{svc.web_port}/stats.json") as resp:
        assert resp.status == 401, "signed in only"


async def test_humans_prompting_goes_from_0_to_2_when_two_people_prompt(svc, slack, model):
    from tests.fakes.openai import Reply
    from tests.slack_threads import all_done

    alice = await signed_in(svc, slack, "U0ALICE1")
    try:
        _, body = await alice.get("/stats/humans.json")
        assert body == '{"humans_prompting": 0}'
        model.add(Reply(text="one"), Reply(text="two"))
        first = await slack.mention("U0ALICE1", "first")
        second = await slack.mention("U0BOB001", "second")
        await slack.wait_for(lambda: all_done(slack, first, 1) and all_done(slack, second, 1))

        async def humans() -> str:
            return (await alice.get("/stats/humans.json"))[1]

        deadline = time.monotonic() + 5
        while await humans() != '{"humans_prompting": 2}':
            assert time.monotonic() < deadline, await humans()
            await asyncio.sleep(0.05)
        turns = await compute(svc.db, 1)
        assert turns.first_token_ms_p50 is not None and turns.infra_ms_p50 is not None
    finally:
        await alice.close()


async def test_a_pr_merged_through_a_signed_webhook_counts_as_a_merged_session(tmp_path, slack, model):
    from tests.fakes.openai import Reply
    from tests.slack_threads import all_done
    from tests.test_github_webhooks import SECRET, deliver, pr_payload

    service = Service(make_settings(service_env(tmp_path / "data", slack, model, github_webhook_secret=SECRET)))
    await service.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        model.add(Reply(text="Fixed."))
        root = await slack.mention("U0ALICE1", "fix it")
        await slack.wait_for(lambda: all_done(slack, root, 1))
        (row,) = await service.sessions.list_sessions()
        await service.pull_requests.records.add(session_id=row.id, repo="acme/api", number=7, url="u", branch="b",
                                                author="U0ALICE1", opened_as="user")
        assert (await compute(service.db, 1)).merged == 0
        merged = pr_payload("closed", 7, "2026-12-04T10:00:05Z", merged=True, state="closed")
        assert await deliver(service, "pull_request", merged) == 200
        stats = await compute(service.db, 1)
        assert (stats.sessions, stats.with_pr, stats.merged, stats.merged_share) == (1, 1, 1, 1.0)
        assert stats.to_merge_s_p50 is not None and stats.to_merge_s_p50 >= 0
    finally:
        await service.stop()
