"""A long session stays under the model's context window: old tool results become stubs, old turns
a summary by the fast model that keeps every prompt and its author; the log keeps everything."""

from __future__ import annotations

import asyncio
import json

from bot.agent.context import Budget, ContextBudget, TokenCounter
from bot.agent.conversation import HISTORY_KINDS, build
from bot.events import (
    AssistantMessage,
    Author,
    ContextCompacted,
    Event,
    EventData,
    Overheard,
    ToolCallSpec,
    ToolResult,
    TurnStarted,
)
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


class _Log:
    """A session's history as the runner hands it to the agent: appended events, read back."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, data: EventData) -> Event:
        event = Event(len(self.events) + 1, 0.0, 1, data)
        self.events.append(event)
        return event


async def test_one_step_over_the_budget_is_cut_for_that_request_only_and_overheard_text_is_kept():
    log = _Log()
    alice = Author(id="U0ALICE1")
    log.emit(Overheard(author=Author(id="U0BOB001"), text="<@U0ALICE1> it is the login test"))
    log.emit(TurnStarted(prompt_id=1, text="look at the log", author=alice))
    log.emit(AssistantMessage(content="", tool_calls=[ToolCallSpec(id="c1", name="dump", arguments="{}")]))
    log.emit(ToolResult(id="c1", name="dump", ok=True, output="HEAD" + "x" * 90_000 + "TAIL"))

    async def never(transcript: str, emit: object) -> str:
        raise AssertionError("one turn is never summarised")

    budget = ContextBudget(Budget(20_000, 0.8), TokenCounter("not-a-known-model"), never, 20_000)
    messages = build(log.events).messages
    fitted = await budget.fit("s", messages, [], lambda: log.events, log.emit)
    assert budget.measure("s", fitted, []) <= 16_000 < budget.measure("s", messages, [])
    assert fitted[-1]["content"].startswith("HEAD") and fitted[-1]["content"].endswith("TAIL")
    assert "characters left out to fit the context window" in fitted[-1]["content"]
    assert "it is the login test" in fitted[1]["content"], "what was overheard is not cut"
    assert len(log.events) == 4 and build(log.events).messages == messages, "nothing recorded: the log is whole"


async def test_an_old_call_with_huge_arguments_is_compacted_with_its_result_without_a_summary():
    """A 600,000-character write in turn 1 would be resent with every request: once its result is
    stubbed its arguments shrink too, still valid JSON naming the file, and no turn is summarised."""
    log = _Log()
    alice = Author(id="U0ALICE1")
    write = json.dumps({"path": "data/big.csv", "content": "x," * 300_000})
    log.emit(TurnStarted(prompt_id=1, text="write the big file", author=alice))
    log.emit(AssistantMessage(content="", tool_calls=[ToolCallSpec(id="w1", name="write_file", arguments=write)]))
    log.emit(ToolResult(id="w1", name="write_file", ok=True, output="Wrote 600,000 bytes to data/big.csv."))
    log.emit(AssistantMessage(content="Written."))
    log.emit(TurnStarted(prompt_id=2, text="now count the rows", author=alice))

    async def never(transcript: str, emit: object) -> str:
        raise AssertionError("shrinking the call is enough: no summary")

    budget = ContextBudget(Budget(50_000, 0.8), TokenCounter("not-a-known-model"), never, 50_000)
    messages = build(log.events).messages
    fitted = await budget.fit("s", messages, [], lambda: log.events, log.emit)
    assert budget.measure("s", fitted, []) <= budget.budget.limit < budget.measure("s", messages, [])
    call = fitted[2]["tool_calls"][0]["function"]
    assert json.loads(call["arguments"]) == {"path": "data/big.csv", "content": "[600,000 characters left out to save context]"}
    assert fitted[3]["content"].startswith("[Result of write_file(")
    assert [m["content"] for m in fitted if m["role"] == "user"][-1].endswith("now count the rows")
    compacted = [e.data for e in log.events if isinstance(e.data, ContextCompacted)]
    assert len(compacted) == 1 and compacted[0].stubbed == ["w1"] and compacted[0].turns == 0
    assert build(log.events).messages == fitted, "the view rebuilt from the log is the request sent"
