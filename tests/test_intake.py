"""Intake is the one way in: a session opened from the web (no Slack at all) takes the same
classification, held-request and warm-up paths as a Slack mention. Nothing here touches bot/slack."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from bot.events import Author, Origin
from bot.service import Service
from bot.sessions.intake import Held, HeldRequest, Hints, Refused, Request, Started
from bot.sessions.service import Surface
from bot.store.tables import SessionRow
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.slack import FakeSlack

REPOS = Path(__file__).parent / "data" / "acme_repos.yml"
DANA = Author(id="web:dana", name="Dana", email="dana@example.com", origin=Origin.WEB)
ERIN = Author(id="web:erin", name="Erin", origin=Origin.WEB)


def vote(repo: str, confidence: float) -> Reply:
    return Reply(text=json.dumps({"repo": repo, "confidence": confidence, "alternatives": ["acme/web"], "reason": "r"}))


def without_slack(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("SLACK_")}


async def start(tmp_path: Path, slack: FakeSlack, model: FakeOpenAI, **extra: object) -> Service:
    env = service_env(tmp_path / "data", slack, model, **extra)
    svc = Service(make_settings(without_slack(env)))
    await svc.start()
    assert svc.slack is None
    return svc


@pytest.fixture
async def web_only(tmp_path, slack, model) -> AsyncIterator[Service]:
    svc = await start(tmp_path, slack, model, repos_config=REPOS, sandbox_backend="none")
    yield svc
    await svc.stop()


async def answered(svc: Service, session_id: str, turns: int = 1) -> None:
    async def check() -> bool:
        view = await svc.sessions.view(session_id)
        return len(view.turns) >= turns and all(not t.running for t in view.turns.values())

    deadline = time.monotonic() + 10
    while not await check():
        assert time.monotonic() < deadline, "the session never answered"
        await asyncio.sleep(0.05)


async def test_a_web_request_is_classified_by_the_rules_and_answered(web_only: Service, model, slack):
    result = await web_only.intake.submit(Request("in acme/api the VAT on invoices is wrong", DANA))
    assert isinstance(result, Started) and result.created
    assert result.session.repo == "acme/api" and result.session.origin is Origin.WEB and result.session.surfaces == ()
    assert result.classification is not None and result.classification.source == "override"
    await answered(web_only, result.session.id)
    view = await web_only.sessions.view(result.session.id)
    turn = view.turns[result.prompt.id]
    assert turn.author.name == "Dana" and turn.author.origin is Origin.WEB
    assert turn.text.startswith("Answer to:")
    request = model.requests[0].body["messages"]
    assert "Slack" not in request[0]["content"], "no Slack in the agent's prompt of a web session"
    assert request[-1]["content"] == "From Dana:\nin acme/api the VAT on invoices is wrong"
    assert not slack.calls, "nothing went to Slack"


async def test_an_undecided_web_request_is_held_then_picked_by_someone_else(web_only: Service, model):
    model.add(vote("unknown", 0.1))
    held = await web_only.intake.submit(Request("the numbers look odd, can you check?", DANA))
    assert isinstance(held, Held) and held.likely[:1] == ("acme/web",) and "acme/api" in held.repos
    assert len(model.requests) == 1, "nothing runs until someone picks"

    started = await web_only.intake.pick(held.id, "acme/data-pipeline", ERIN)
    assert isinstance(started, Started) and started.session.repo == "acme/data-pipeline"
    await answered(web_only, started.session.id)
    turn = (await web_only.sessions.view(started.session.id)).turns[started.prompt.id]
    assert (turn.author.id, turn.prompt) == ("web:dana", "the numbers look odd, can you check?"), "the asker's own words"
    again = await web_only.intake.pick(held.id, "acme/api", ERIN)
    assert isinstance(again, Refused) and again.message == "Someone already picked acme/data-pipeline for this request."
    assert isinstance(await web_only.intake.pick(held.id, "nope/nope", ERIN), Refused)
    assert isinstance(await web_only.intake.pick("../../etc", "acme/api", ERIN), Refused)


async def test_a_held_request_expires_tells_its_surface_and_refuses_a_late_pick(tmp_path, slack, model):
    svc = await start(tmp_path, slack, model, repos_config=REPOS, sandbox_backend="none", pending_request_ttl=0.5)
    try:
        told: list[HeldRequest] = []

        async def observer(held: HeldRequest) -> None:
            told.append(held)

        svc.intake.on_expired(observer)
        model.add(vote("unknown", 0.1))
        held = await svc.intake.submit(Request("please look into it", DANA))
        assert isinstance(held, Held)
        deadline = time.monotonic() + 5
        while not told:  # the service's scheduled job expires it
            assert time.monotonic() < deadline, "the request never expired"
            await asyncio.sleep(0.05)
        assert told[0].id == held.id and told[0].status == "expired" and told[0].author.name == "Dana"
        late = await svc.intake.pick(held.id, "acme/api", ERIN)
        assert isinstance(late, Refused) and late.reason == "expired"
    finally:
        await svc.stop()


async def test_bad_requests_get_a_clear_refusal_and_nothing_is_queued(web_only: Service, model):
    for request, reason in [
        (Request("   ", DANA), "empty"),
        (Request("x" * 20_001, DANA), "too_long"),
        (Request("fix it", DANA, hints=Hints(repo="evil/repo")), "unknown_repo"),
    ]:
        result = await web_only.intake.submit(request)
        assert isinstance(result, Refused) and result.reason == reason, request.text[:20]
    async with web_only.db.session() as s:
        assert (await s.execute(select(SessionRow))).scalars().all() == []
    assert model.requests == []


async def test_a_sub_session_records_its_parent_and_origin(web_only: Service):
    parent = await web_only.intake.submit(Request("in acme/api find the slow query", DANA))
    assert isinstance(parent, Started)
    agent = Author(id=parent.session.id, origin=Origin.PARENT_SESSION)
    child = await web_only.intake.submit(Request("check the index usage", agent, hints=Hints(repo="acme/data-pipeline"),
                                                 parent_id=parent.session.id))
    assert isinstance(child, Started)
    assert (child.session.parent_id, child.session.origin, child.session.repo) == (
        parent.session.id, Origin.PARENT_SESSION, "acme/data-pipeline")


async def test_the_likeliest_repo_warms_while_the_model_classifies_a_web_request(tmp_path, slack, model, git_remote):
    repos = tmp_path / "two.yml"
    repos.write_text(
        "defaults:\n  pool_size: 0\n  image: {base: 'hosted-agents/base:bookworm'}\n"
        f"repos:\n  - name: acme/api\n    clone_url: {git_remote.url}\n"
        f"  - name: acme/web\n    clone_url: {git_remote.url}\n"
    )
    svc = await start(tmp_path, slack, model, repos_config=repos, sandbox_network="host", image_rebuild_interval=0)
    try:
        assert svc.sandbox is not None
        deadline = time.monotonic() + 120
        while not await svc.sandbox.images.latest("acme/api"):
            assert time.monotonic() < deadline, "no image"
            await asyncio.sleep(0.1)
        first = await svc.intake.submit(Request("in acme/api say hi", DANA))
        assert isinstance(first, Started)
        await answered(svc, first.session.id)
        assert svc.sandbox.pool.warm_count("acme/api") == 0

        model.add(Reply(ttft=3.0, text=json.dumps({"repo": "unknown", "confidence": 0.1, "alternatives": [], "reason": ""})))
        began = time.monotonic()
        vague = asyncio.create_task(svc.intake.submit(Request("the numbers look odd, can you check?", DANA)))
        while svc.sandbox.pool.warm_count("acme/api") < 1:
            assert time.monotonic() - began < 3.0, "it did not warm while the model was still thinking"
            await asyncio.sleep(0.05)
        assert isinstance(await vague, Held)
    finally:
        await svc.stop()


class BrokenTable:
    """The central database loses a table under the running service, then gets it back."""

    def __init__(self, svc: Service, table: str):
        self.db = sqlite3.connect(svc.settings.data_dir / "hosted-agents.db")
        self.table = table

    def __enter__(self) -> None:
        self.db.execute(f"ALTER TABLE {self.table} RENAME TO {self.table}_away")
        self.db.commit()

    def __exit__(self, *_: object) -> None:
        self.db.execute(f"ALTER TABLE {self.table}_away RENAME TO {self.table}")
        self.db.commit()
        self.db.close()


async def test_a_prompt_that_cannot_be_recorded_leaves_the_session_idle_and_the_next_one_runs(web_only: Service):
    first = await web_only.intake.submit(Request("in acme/api hello", DANA))
    assert isinstance(first, Started)
    await answered(web_only, first.session.id)
    with BrokenTable(web_only, "sessions"), pytest.raises(OperationalError):
        await web_only.sessions.submit(first.session.id, "and this?", DANA)
    prompt = await web_only.sessions.submit(first.session.id, "and now?", DANA)
    await answered(web_only, first.session.id, turns=2)
    assert (await web_only.sessions.view(first.session.id)).turns[prompt.id].text.startswith("Answer to:")


async def test_a_pick_whose_session_cannot_start_waits_for_the_next_pick(web_only: Service, model):
    model.add(vote("unknown", 0.1))
    held = await web_only.intake.submit(Request("the numbers look odd", DANA))
    assert isinstance(held, Held)
    with BrokenTable(web_only, "sessions"), pytest.raises(OperationalError):
        await web_only.intake.pick(held.id, "acme/api", ERIN)
    started = await web_only.intake.pick(held.id, "acme/api", ERIN)
    assert isinstance(started, Started) and started.session.repo == "acme/api"


async def test_a_session_can_be_bound_to_more_places(web_only: Service):
    started = await web_only.intake.submit(Request("in acme/api hello", DANA))
    assert isinstance(started, Started)
    page = Surface("web_page", started.session.id)
    bound = await web_only.sessions.bind(started.session.id, page)
    assert bound.surfaces == (page,) and await web_only.sessions.bind(started.session.id, page) == bound  # idempotent
    found = await web_only.sessions.find_by_surface(page)
    assert found is not None and found.id == started.session.id
