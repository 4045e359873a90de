"""Three real `hosted-agents serve` processes on one PostgreSQL and one Slack app (issue 16)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp

from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.slack import FakeSlack
from tests.instances import Instance, owners, session_by_thread, start_instances, wait_for_ref
from tests.slack_threads import all_done, turns
from tests.test_web import read_events


def prompted(model: FakeOpenAI) -> list[str]:
    return [r.last_user_text.split("\n", 1)[-1] for r in model.requests]


async def test_three_instances_answer_fifty_sessions_once_follow_each_other_and_survive_a_kill_9(
        tmp_path, pg_url, slack: FakeSlack, model: FakeOpenAI):
    instances = await start_instances(3, tmp_path, pg_url, slack, model, session_lease_ttl=3, model_timeout=120,
                                      max_prompts_per_minute=1000)
    by_name = {i.name: i for i in instances}
    try:
        await slack.wait_for(lambda: slack.socket_count == 3, timeout=20, what="three Socket Mode connections")
        slack.spread = True

        # 50 sessions, dealt over the three connections: each answered, once
        roots = []
        for batch in range(5):
            roots += await asyncio.gather(*(slack.mention("U0ALICE1", f"task {batch * 10 + i}") for i in range(10)))
        for root in roots:
            await slack.wait_for(lambda root=root: all_done(slack, root, 1), timeout=60, what="all 50 answered")
        for n, root in enumerate(roots):
            assert [t.answer() for t in turns(slack, root)] == [f"Answer to: task {n}"]
        assert Counter(prompted(model)) == Counter(f"task {n}" for n in range(50)), "each prompt ran once"
        spread = Counter((await owners(pg_url)).values())
        assert set(spread) == {"i1", "i2", "i3"}, spread

        # one event delivered on two instances' connections (Slack retried it onto another one): handled once
        event = slack.mention_event("U0BOB001", "just once")
        ts = event["ts"]
        await asyncio.gather(slack.send_event(event, event_id="Ev0TWICE16", to=0),
                             slack.send_event(event, event_id="Ev0TWICE16", to=1, retry_attempt=1))
        await slack.wait_for(lambda: all_done(slack, ts, 1), timeout=30)
        await asyncio.sleep(1)
        assert len(turns(slack, ts)) == 1 and prompted(model).count("just once") == 1

        # a viewer on one instance follows, live, a session another one drives
        session_id, token = await session_by_thread(pg_url, roots[0])
        owner = by_name[(await owners(pg_url))[session_id]]
        viewer = next(i for i in instances if i is not owner)
        model.add_for("stream it", Reply(text="live " * 30, chunk_delay=0.05, chunk_chars=5))
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"{viewer.base}/s/{token}/ws?after=0", headers={"Origin": viewer.base}) as ws:
            await read_events(ws, lambda evs: any(e["kind"] == "turn_ended" for e in evs))
            await slack.user_message("U0ALICE1", "stream it", thread_ts=roots[0])
            live = await read_events(ws, lambda evs: any(e["kind"] == "turn_ended" for e in evs), timeout=30)
        assert "".join(e["data"]["text"] for e in live if e["kind"] == "text_delta") == "live " * 30
        assert sum(e["kind"] == "text_delta" for e in live) > 5, "streamed, not in one piece at the end"

        # kill -9 the owner of a session mid-turn, with a prompt queued behind the turn
        model.add_for("long job", Reply(text="never finished", hang=True))
        root = await slack.mention("U0BOB001", "long job")
        await slack.wait_for(lambda: "long job" in prompted(model), timeout=20)
        session_id, _ = await session_by_thread(pg_url, root)
        victim = by_name[(await owners(pg_url))[session_id]]
        await slack.user_message("U0BOB001", "queued behind it", thread_ts=root)
        await slack.wait_for(lambda: any("1 more queued" in t.rendered() for t in turns(slack, root)), timeout=20)
        # the owner's last writes reach PostgreSQL milliseconds after it acts: kill it once the Slack
        # message it posted is recorded there (a kill inside that window costs a message posted again)
        await wait_for_ref(pg_url, session_id)
        victim.kill()
        killed = time.monotonic()
        try:
            await slack.wait_for(lambda: all_done(slack, root, 2), timeout=30, what="the takeover")
        except AssertionError as exc:
            thread = "\n---\n".join(m.rendered() for m in slack.bot_messages(thread_ts=root))
            raise AssertionError(f"{exc}; the thread:\n{thread}") from None
        took = time.monotonic() - killed
        first, second = turns(slack, root)
        assert "interrupted" in first.rendered()
        assert second.answer() == "Answer to: queued behind it"
        assert prompted(model).count("queued behind it") == 1
        assert prompted(model).count("long job") == 1, "the interrupted turn is not run again"
        new_owner = (await owners(pg_url))[session_id]
        assert new_owner != victim.name
        assert took < 15, f"taken over in {took:.1f} s"
        survivors: list[Instance] = [i for i in instances if i is not victim]

        # the dead instance's other sessions go on with the living
        theirs = [r for r in roots if (await owners(pg_url)).get((await session_by_thread(pg_url, r))[0]) == victim.name]
        for r in theirs[:3]:
            await slack.user_message("U0ALICE1", f"after the kill {r}", thread_ts=r)
        for r in theirs[:3]:
            await slack.wait_for(lambda r=r: all_done(slack, r, 2), timeout=30)
        assert all(prompted(model).count(f"after the kill {r}") == 1 for r in theirs[:3])
        assert slack.socket_count == 2
        assert all(s.process.returncode is None for s in survivors)
    finally:
        await asyncio.gather(*(i.stop() for i in instances))
