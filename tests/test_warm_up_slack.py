"""Warm-up from Slack on the real Docker engine: what is typed in the Home tab warms a container
before *Start* is pressed, and the session takes that very container; the agent pane warms too."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.slack.messages import thread_surface
from bot.store.tables import WarmUpRow
from sandbox.backend import LABEL
from tests.fakes.openai import Reply, ToolCall
from tests.sandbox_fixtures import _docker_client
from tests.slack_threads import all_done
from tests.test_sandbox_sessions import start_service, until

pytestmark = pytest.mark.usefixtures("docker_cleanup")


def sandbox_containers(since: float) -> list[str]:
    """Pool and session containers created since `since` (warm-up's and sessions' own)."""
    client = _docker_client()
    found = client.containers.list(all=True, filters={"label": f"{LABEL}.role"})
    return [c.id for c in found if c.labels.get(f"{LABEL}.role") in ("pool", "session")
            and c.attrs["Created"] >= since_iso(since)]


def since_iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


async def test_typing_in_the_home_tab_warms_the_container_the_session_then_uses(tmp_path, slack, model, git_remote):
    import time

    svc = await start_service(tmp_path, slack, model, git_remote.url)
    try:
        assert svc.sandbox is not None
        pool = svc.sandbox.pool
        started = time.time() - 1
        assert pool.warm_count("acme/api") == 0 and sandbox_containers(started) == []
        await slack.open_home("U0ALICE1")
        await slack.wait_for(lambda: slack.home_views.get("U0ALICE1"), what="the Home tab")
        await slack.type_home("U0ALICE1", "the add fun")

        async def warmed() -> bool:
            return pool.warm_count("acme/api") == 1

        await until(warmed, timeout=30, what="a warm container while the person types")
        container = pool._entries["acme/api"][0].ref.id
        await slack.type_home("U0ALICE1", "the add function is broken, fix it")
        model.add(Reply(tool_calls=[ToolCall("read_file", {"path": "app.py"})]), Reply(text="It subtracts."))
        await slack.click_home("U0ALICE1", "home_start")
        dm = slack.dm_channel("U0ALICE1")
        roots = await slack.wait_for(lambda: [m.ts for m in slack.bot_messages(channel=dm) if "From the Home tab" in m.text])
        await slack.wait_for(lambda: all_done(slack, roots[0], 1, channel=dm), timeout=60, what="the answer in the DM")
        session = await svc.sessions.find_by_surface(thread_surface(dm, roots[0]))
        assert session is not None
        sandbox = svc.sandbox.manager.get(session.id)
        assert sandbox is not None and sandbox.source == "pool" and sandbox.ref is not None
        assert sandbox.ref.id == container, "the session took the container warmed while typing"
        assert sandbox_containers(started) == [container], "and no second one was started"

        async def settled() -> list[WarmUpRow]:
            async with svc.db.session() as s:
                rows = (await s.execute(select(WarmUpRow))).scalars().all()
            return [r for r in rows if r.used is not None]

        rows = await until(settled, what="the warm-up's outcome")
        assert [(r.trigger, r.repo, r.used, r.session_id) for r in rows] == [("app_home", "acme/api", True, session.id)]

        # the agent pane warms too
        await slack.start_assistant_thread("U0BOB001")
        await until(warmed, timeout=30, what="a warm container when the pane opens")
    finally:
        await svc.stop()


async def test_a_container_warmed_for_someone_who_sends_nothing_goes_and_is_counted(tmp_path, slack, model, git_remote):
    svc = await start_service(tmp_path, slack, model, git_remote.url, warm_up_ttl=1)
    try:
        assert svc.sandbox is not None
        pool = svc.sandbox.pool
        await slack.open_home("U0ALICE1")
        await slack.wait_for(lambda: slack.home_views.get("U0ALICE1"), what="the Home tab")
        await slack.type_home("U0ALICE1", "the add fun")

        async def warm(count: int) -> bool:
            return pool.warm_count("acme/api") == count

        await until(lambda: warm(1), timeout=30, what="the warm container")
        await until(lambda: warm(0), timeout=30, what="the unclaimed container removed after WARM_UP_TTL")
        assert pool.unused_warm_ups == 1

        async def unused() -> bool:
            return (await svc.warm_ups.counts()).get("unused") == 1

        await until(unused, timeout=10, what="the warm-up counted as unused")
    finally:
        await svc.stop()
