"""Rebuild the model's conversation from a session's log, so history survives restarts."""

from __future__ import annotations

from typing import Any

from bot.sessions.events import Event, Kind

HISTORY_KINDS = (Kind.TURN_STARTED, Kind.ASSISTANT_MESSAGE, Kind.TOOL_RESULT)

SYSTEM_PROMPT = """\
You are hosted-agents, a background coding agent that works for an engineering team in Slack.
People ask you things in a Slack thread; several people may take part, and each request says who
asked. Answer in Markdown, concisely: lead with the answer, then the reasoning that matters.
Use the tools you are given when they help; never claim to have done something you did not do."""


def user_text(author_id: str, text: str) -> str:
    return f"From <@{author_id}>:\n{text}"


def messages_from_events(events: list[Event], system: str = SYSTEM_PROMPT) -> list[dict[str, Any]]:
    """Chat messages for the events of HISTORY_KINDS, oldest first.

    A tool call left without a result (a stopped or interrupted turn) gets a placeholder
    result, because the chat API rejects a conversation with a dangling call.
    """
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    pending: dict[str, str] = {}

    def close_pending() -> None:
        for call_id in list(pending):
            messages.append({"role": "tool", "tool_call_id": call_id, "content": "(not run: the turn was stopped)"})
        pending.clear()

    for event in events:
        if event.kind is Kind.TURN_STARTED:
            close_pending()
            author = event.data.get("author", {}).get("id", "someone")
            messages.append({"role": "user", "content": user_text(author, event.data.get("text", ""))})
        elif event.kind is Kind.ASSISTANT_MESSAGE:
            close_pending()
            message: dict[str, Any] = {"role": "assistant", "content": event.data.get("content") or ""}
            calls = event.data.get("tool_calls") or []
            if calls:
                message["tool_calls"] = [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in calls
                ]
                pending.update({c["id"]: c["name"] for c in calls})
            messages.append(message)
        elif event.kind is Kind.TOOL_RESULT and event.data.get("id") in pending:
            pending.pop(event.data["id"])
            messages.append({"role": "tool", "tool_call_id": event.data["id"], "content": event.data.get("output", "")})
    close_pending()
    return messages
