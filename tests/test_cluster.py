"""Two instances on one PostgreSQL and one Slack app (issue 16), in one process for speed: sessions
are driven by their lease's owner wherever their prompts arrive; a viewer on either instance
follows any session live; a delivery to both connections is handled once; a stopped
instance's sessions are taken over. tests/test_instances.py runs real `serve` processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bot.config import normalise_database_url
from bot.service import Service
from bot.sessions.service import SessionInfo
from bot.slack.messages import thread_surface
from bot.store.db import Database
from bot.store.job_runs import JobRuns
from tests.conftest import make_settings, service_env
from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.slack import FakeSlack
from tests.instances import owners
from tests.slack_threads import all_done, turns
from tests.test_web import read_events


async def start(tmp_path: Path, name: str, pg_url: str, slack: FakeSlack, model: FakeOpenAI, **extra: Any) -> Service:
    env = service_env(tmp_path / name, slack, model, database_url=pg_url, instance_id=name, session_lease_ttl=1.5,
                      **extra)
    svc = Service(make_settings(env))
    await svc.start()
    return svc


@asynccontextmanager
async def two_instances(tmp_path: Path, pg_url: str, slack: FakeSlack, model: FakeOpenAI,
                        **extra: Any) -> AsyncIterator[list[Service]]:
    """Instances a and b, both connected to Slack (a's connection first, so events go to b's unless
    spread); those still in the list are stopped afterwards (a test that stops one removes it)."""
    running = [await start(tmp_path, "a", pg_url, slack, model, **extra)]
    try:
        running.append(await start(tmp_path, "b", pg_url, slack, model, **extra))
        await slack.wait_for(lambda: slack.socket_count == 2, what="both instances connected")
        yield running
    finally:
        await asyncio.gather(*(svc.stop() for svc in running))


def prompted(model: FakeOpenAI) -> list[str]:
    """What people asked, request by request (without the "From <person>:" line)."""
    return [r.last_user_text.split("\n", 1)[-1] for r in model.requests]


async def session_of(svc: Service, root: str) -> SessionInfo:
    info = await svc.sessions.find_by_surface(thread_surface("C0000001", root))
    assert info is not None
    return info


async def test_sessions_spread_over_two_instances_are_each_answered_once_wherever_their_prompts_arrive(
        tmp_path, pg_url, slack: FakeSlack, model: FakeOpenAI):
    async with two_instances(tmp_path, pg_url, slack, model):
        slack.spread = True
        roots = [await slack.mention("U0ALICE1", f"task {i}") for i in range(6)]
        for root in roots:
            await slack.wait_for(lambda root=root: all_done(slack, root, 1), timeout=20, what="every mention answered")
        by_owner = await owners(pg_url)
        assert set(by_owner.values()) == {"a", "b"}, "both instances own sessions"
        for i, root in enumerate(roots):  # replies are dealt to both connections: half reach the other instance
            await slack.user_message("U0ALICE1", f"more {i}", thread_ts=root)
        for i, root in enumerate(roots):
            await slack.wait_for(lambda root=root: all_done(slack, root, 2), timeout=20, what="every reply answered")
            assert [t.answer() for t in turns(slack, root)] == [f"Answer to: task {i}", f"Answer to: more {i}"]
        assert await owners(pg_url) == by_owner, "a session stays with its owner"
        assert sorted(prompted(model)) == sorted([f"task {i}" for i in range(6)] + [f"more {i}" for i in range(6)])

        event = slack.mention_event("U0BOB001", "only once")  # delivered on both connections (a retry elsewhere)
        ts = event["ts"]
        await asyncio.gather(slack.send_event(event, event_id="Ev0TWICE01", to=0),
                             slack.send_event(event, event_id="Ev0TWICE01", to=1))
        await slack.wait_for(lambda: all_done(slack, ts, 1), timeout=20)
        await asyncio.sleep(1)
        assert len(turns(slack, ts)) == 1
        assert prompted(model).count("only once") == 1


async def test_a_viewer_on_one_instance_follows_a_session_driven_by_the_other_live(
        tmp_path, pg_url, slack: FakeSlack, model: FakeOpenAI):
    async with two_instances(tmp_path, pg_url, slack, model) as running:
        a, b = running
        model.add(Reply(text="first"))
        root = await slack.mention("U0ALICE1", "hello")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=20)
        info = await session_of(a, root)
        owner, other = (a, b) if (await owners(pg_url))[info.id] == "a" else (b, a)
        base = f"http://127.0.0.1:{other.web_port}"
        model.add(Reply(text="slow " * 40, chunk_delay=0.05, chunk_chars=5))
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"{base}/s/{info.share_token}/ws?after=0", headers={"Origin": base}) as ws:
            history = await read_events(ws, lambda evs: any(e["kind"] == "status" and e["data"]["state"] == "idle"
                                                            for e in evs))
            await slack.user_message("U0ALICE1", "again", thread_ts=root)
            live = await read_events(ws, lambda evs: sum(e["kind"] == "text_delta" for e in evs) >= 3, timeout=20)
            assert not owner.sessions.cached(info.id) or owner.sessions.working(info.id), "seen while it runs"
            rest = await read_events(ws, lambda evs: any(e["kind"] == "turn_ended" for e in evs), timeout=20)
        seqs = [e["seq"] for e in history + live + rest]
        assert seqs == list(range(1, len(seqs) + 1)), "every event once, in order, across instances"
        assert "".join(e["data"]["text"] for e in live + rest if e["kind"] == "text_delta") == "slow " * 40
        await slack.wait_for(lambda: all_done(slack, root, 2), timeout=20)


async def test_a_stopped_instances_sessions_are_taken_over_the_running_turn_interrupted_the_queue_answered_once(
        tmp_path, pg_url, slack: FakeSlack, model: FakeOpenAI):
    async with two_instances(tmp_path, pg_url, slack, model, model_timeout=60) as running:
        a, b = running
        model.add_for("long job", Reply(text="never finished", hang=True))
        root = await slack.mention("U0ALICE1", "long job")
        await slack.wait_for(lambda: prompted(model)[-1:] == ["long job"])
        info = await session_of(a, root)
        owner, other = (a, b) if (await owners(pg_url))[info.id] == "a" else (b, a)
        await slack.user_message("U0BOB001", "queued behind it", thread_ts=root)
        await slack.wait_for(lambda: any("1 more queued" in t.rendered() for t in turns(slack, root)),
                             what="the queued prompt shown")
        running.remove(owner)  # stopped here, not again on the way out
        await owner.stop()
        await slack.wait_for(lambda: all_done(slack, root, 2), timeout=30, what="the takeover")
        first, second = turns(slack, root)
        assert "interrupted" in first.rendered()
        assert second.answer() == "Answer to: queued behind it"
        assert (await owners(pg_url))[info.id] == other.instance_id
        assert prompted(model).count("queued behind it") == 1


async def test_a_housekeeping_job_fired_by_three_instances_at_once_runs_once_per_interval(pg_url):
    dbs = [Database(normalise_database_url(pg_url)) for _ in range(3)]
    await dbs[0].upgrade()
    runs: list[int] = []
    try:
        jobs = [JobRuns(db).once("prune", 1.0, lambda n=n: _record(runs, n)) for n, db in enumerate(dbs)]
        await asyncio.gather(*(job() for job in jobs))
        assert len(runs) == 1, "fired three times, ran once"
        await asyncio.gather(*(job() for job in jobs))
        assert len(runs) == 1, "not again within the interval"
        await asyncio.sleep(1.0)
        await asyncio.gather(*(job() for job in jobs))
        assert len(runs) == 2, "once more in the next interval"
    finally:
        for db in dbs:
            await db.close()


async def _record(runs: list[int], n: int) -> None:
    runs.append(n)


async def test_stop_pressed_on_another_instance_stops_the_turn_for_its_prompter_only(
        tmp_path, pg_url, slack: FakeSlack, model: FakeOpenAI):
    async with two_instances(tmp_path, pg_url, slack, model, model_timeout=60) as running:  # events reach b
        a = running[0]
        root = await slack.mention("U0ALICE1", "hello")
        await slack.wait_for(lambda: all_done(slack, root, 1), timeout=20)
        assert (await owners(pg_url))[(await session_of(a, root)).id] == "b"
        model.add_for("long one", Reply(text="never finished", hang=True))
        await slack.user_message("U0BOB001", "long one", thread_ts=root)
        await slack.wait_for(lambda: len(turns(slack, root)) == 2 and "stop_turn" in turns(slack, root)[1].head.buttons())
        status = turns(slack, root)[1].head

        await slack.click("U0CAROL1", status, "stop_turn", to=0)  # pressed on a, which does not drive the session
        refusal = await slack.wait_for(lambda: slack.calls_to("chat.postEphemeral"), what="Carol's refusal")
        assert refusal[0].params["user"] == "U0CAROL1" and "Only the person whose request is running" in refusal[0].params["text"]
        await slack.click("U0BOB001", status, "stop_turn", to=0)  # Bob's own turn, known on a from the shared log
        await slack.wait_for(lambda: "Stopped by <@U0BOB001>" in turns(slack, root)[1].rendered(), timeout=10)


async def test_the_prompt_rate_limit_counts_a_persons_prompts_on_every_instance(
        tmp_path, pg_url, slack: FakeSlack, model: FakeOpenAI):
    async with two_instances(tmp_path, pg_url, slack, model, max_prompts_per_minute=3):
        for n in range(3):  # two reach a, one reaches b: neither instance alone sees three
            event = slack.mention_event("U0ALICE1", f"task {n}")
            ts = event["ts"]
            await slack.send_event(event, to=n % 2)
            await slack.wait_for(lambda ts=ts: all_done(slack, ts, 1), timeout=20)
        event = slack.mention_event("U0ALICE1", "one more")
        await slack.send_event(event, to=1)  # b has seen only one of hers
        refusal = await slack.wait_for(lambda: slack.calls_to("chat.postEphemeral"), what="the refusal")
        assert refusal[0].params["user"] == "U0ALICE1"
        assert "You've sent 3 requests in the last minute" in refusal[0].params["text"]
        assert "one more" not in prompted(model)
