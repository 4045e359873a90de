"""A long session stays under the model's context window: old tool results become stubs, old turns
a summary by the fast model that keeps every prompt and its author; the log keeps everything."""

from __future__ import annotations

import asyncio
import json

from bot.agent.context import TokenCounter
from bot.agent.conversation import HISTORY_KINDS, build
from bot.events import ContextCompacted, ToolResult
from bot.service import Service
from tests.conftest import make_settings, service_env
from tests.fakes.openai import Reply, Request, ToolCall
from tests.slack_threads import all_done

WINDOW = 50_000
TURNS = 60
PEOPLE = ("U0ALICE1", "U0BOB001")


def scripted(req: Request) -> Reply:
    """The agent model dumps a long output each turn, then answers at length; the fast model summarises."""
    if req.body["model"] == "gpt-5-mini":
        return Reply(text="Summary: the dump tool was run once per task and each answer explained it.")
    messages = req.body["messages"]
    if messages[-1]["role"] == "tool":
        return Reply(text="Done. " + "The dump shows the expected pattern of a and b. " * 30, chunk_chars=400)
    return Reply(tool_calls=[ToolCall("dump", {})])


async def test_sixty_turns_with_ten_windows_of_output_stay_under_the_budget(tmp_path, slack, model):
    env = service_env(tmp_path / "data", slack, model, plugins="tests.plugins:LongOutput",
                      model_context_windows=json.dumps({"gpt-5": WINDOW}), max_prompts_per_minute=1000,
                      usage_footer="false")
    model.default = scripted
    svc = Service(make_settings(env))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        root = await slack.mention(PEOPLE[0], "task number 1")
        await slack.wait_for(lambda: all_done(slack, root, 1))
        for i in range(2, TURNS + 1):
            await slack.user_message(PEOPLE[(i - 1) % 2], f"task number {i}", thread_ts=root)
            await slack.wait_for(lambda i=i: all_done(slack, root, i), timeout=30)

        counter, limit = TokenCounter("gpt-5"), int(WINDOW * 0.8)
        agent_requests = [r.body for r in model.requests if r.body["model"] == "gpt-5"]
        assert len(agent_requests) == 2 * TURNS
        for body in agent_requests:
            measured = counter.messages(body["messages"]) + counter.text(json.dumps(body["tools"]))
            assert measured <= limit, f"a request of {measured} tokens, over the budget of {limit}"
            assert len(json.dumps(body)) < 3 * WINDOW, "under the window at three characters a token"

        session_id = next(iter(svc.sessions._by_id))
        events = svc.sessions.log_of(session_id).read_kinds(HISTORY_KINDS)
        outputs = sum(len(e.data.output) for e in events if isinstance(e.data, ToolResult))
        assert outputs // 3 >= 10 * WINDOW, "the tool outputs add up to ten windows"
        compactions = [e.data for e in events if isinstance(e.data, ContextCompacted)]
        assert any(c.stubbed for c in compactions) and any(c.turns for c in compactions)
        assert all(c.tokens_before > limit and c.window == WINDOW for c in compactions)
        assert any(r.body["model"] == "gpt-5-mini" and not r.body.get("stream") for r in model.requests)

        last = agent_requests[-1]["messages"]
        text = "\n".join(m["content"] or "" for m in last)
        for i in range(1, TURNS + 1):  # every prompt, with its author, word for word
            assert f"From <@{PEOPLE[(i - 1) % 2]}>:\ntask number {i}\n" in text + "\n", f"prompt {i} is missing"
        assert "Summary: the dump tool was run" in text
        stubs = [m for m in last if m["role"] == "tool" and m["content"].startswith("[Result of dump({})")]
        assert stubs and "characters; run the tool again if you need it." in stubs[0]["content"]

        # The view rebuilt from the log (as after a restart) is the one the agent last used.
        rebuilt = build(svc.sessions.log_of(session_id).read_kinds(HISTORY_KINDS), last[0]["content"]).messages
        assert rebuilt[: len(last)] == last
    finally:
        await svc.stop()
