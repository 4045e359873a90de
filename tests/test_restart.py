"""Nothing is lost when the real `hosted-agents serve` process is killed with SIGKILL mid-turn."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.conftest import service_env
from tests.fakes.openai import FakeOpenAI, Reply
from tests.fakes.slack import FakeSlack
from tests.slack_threads import turns


async def start_serve(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    out = log.open("ab")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "serve",
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env},
        stdout=out, stderr=out, start_new_session=True,
    )


async def test_kill_9_mid_turn_then_restart_reports_the_interruption_and_answers_the_queue(
        tmp_path: Path, slack: FakeSlack, model: FakeOpenAI):
    env = service_env(tmp_path / "data", slack, model)
    log = tmp_path / "serve.log"
    model.add(Reply(text="partial " * 500, chunk_delay=0.02))
    proc = await start_serve(env, log)
    try:
        await asyncio.wait_for(slack.connected.wait(), 30)
        root = await slack.mention("U0ALICE1", "a long job")
        status = (await slack.wait_for(lambda: slack.bot_messages(thread_ts=root), what="the status message"))[0]
        await slack.wait_for(lambda: "partial" in turns(slack, root)[0].rendered(), what="streaming to start")
        await slack.user_message("U0BOB001", "follow-up one", thread_ts=root)
        await slack.user_message("U0CAROL1", "follow-up two", thread_ts=root)
        await slack.wait_for(lambda: "2 more queued" in status.rendered(), what="both follow-ups queued")

        proc.kill()  # SIGKILL: no shutdown code runs
        await proc.wait()
        await slack.wait_for(lambda: not slack.connected.is_set(), what="the socket to drop")
        assert ":hourglass_flowing_sand:" in status.rendered()

        proc = await start_serve(env, log)
        await asyncio.wait_for(slack.connected.wait(), 30)
        await slack.wait_for(lambda: "interrupted" in status.rendered(), timeout=15, what="the interruption to be reported")
        assert "The service restarted while this was running" in status.rendered()
        assert "partial" in turns(slack, root)[0].rendered(), "the text streamed before the kill is kept"
        assert "Stop" not in status.rendered()

        def answered() -> bool:
            found = turns(slack, root)
            return len(found) == 3 and all("Done" in t.head.rendered() for t in found[1:])

        await slack.wait_for(answered, timeout=20, what="the queued prompts to be answered")
        _, one, two = turns(slack, root)
        assert "<@U0BOB001> asked: follow-up one" in one.rendered() and "Answer to: follow-up one" in one.rendered()
        assert "<@U0CAROL1> asked: follow-up two" in two.rendered() and "Answer to: follow-up two" in two.rendered()
        # the resumed turns still know the conversation, including the interrupted partial answer
        history = model.requests[-1].body["messages"]
        assert any(m["role"] == "assistant" and "partial" in (m["content"] or "") for m in history)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
    assert "Traceback" not in log.read_text()
