"""The model's conversation is rebuilt from the log, and stays valid for the chat API."""

from __future__ import annotations

from bot.agent.conversation import messages_from_events
from bot.sessions.events import Event, Kind


def ev(seq: int, kind: Kind, **data) -> Event:  # type: ignore[no-untyped-def]
    return Event(seq, 0.0, kind, 1, data)


def test_a_tool_call_left_without_result_gets_a_placeholder():
    events = [
        ev(1, Kind.TURN_STARTED, text="fix it", author={"id": "U1"}),
        ev(2, Kind.ASSISTANT_MESSAGE, content="", tool_calls=[{"id": "c1", "name": "post_note", "arguments": "{}"},
                                                              {"id": "c2", "name": "post_note", "arguments": "{}"}]),
        ev(3, Kind.TOOL_RESULT, id="c1", name="post_note", ok=True, output="Posted."),
        ev(4, Kind.TURN_STARTED, text="again", author={"id": "U2"}),
    ]
    messages = messages_from_events(events)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert messages[4] == {"role": "tool", "tool_call_id": "c2", "content": "(not run: the turn was stopped)"}
    assert messages[5]["content"] == "From <@U2>:\nagain"
