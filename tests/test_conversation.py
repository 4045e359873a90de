"""The model's conversation is rebuilt from the log, and stays valid for the chat API."""

from __future__ import annotations

from bot.agent.conversation import messages_from_events
from bot.events import AssistantMessage, Author, Event, EventData, ToolCallSpec, ToolResult, TurnStarted


def ev(seq: int, data: EventData) -> Event:
    return Event(seq, 0.0, 1, data)


def test_a_tool_call_left_without_result_gets_a_placeholder():
    events = [
        ev(1, TurnStarted(prompt_id=1, text="fix it", author=Author(id="U1"))),
        ev(2, AssistantMessage(content="", tool_calls=[ToolCallSpec(id="c1", name="post_note", arguments="{}"),
                                                       ToolCallSpec(id="c2", name="post_note", arguments="{}")])),
        ev(3, ToolResult(id="c1", name="post_note", ok=True, output="Posted.")),
        ev(4, TurnStarted(prompt_id=2, text="again", author=Author(id="U2"))),
    ]
    messages = messages_from_events(events)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert messages[4] == {"role": "tool", "tool_call_id": "c2", "content": "(not run: the turn was stopped)"}
    assert messages[5]["content"] == "From <@U2>:\nagain"


def test_people_from_outside_slack_are_named_not_mentioned():
    github = Author(id="gh:7", name="Dana", origin="github")
    messages = messages_from_events([ev(1, TurnStarted(prompt_id=1, text="hi", author=github))])
    assert messages[1]["content"] == "From Dana:\nhi"
    assert "Slack" not in messages[0]["content"], "the agent's own prompt names no surface"


def test_people_on_the_web_are_slack_users_and_mentioned_as_such():
    web = Author(id="U0DANA01", name="Dana", origin="web")  # signed in with Slack
    messages = messages_from_events([ev(1, TurnStarted(prompt_id=1, text="hi", author=web))])
    assert messages[1]["content"] == "From <@U0DANA01>:\nhi"
