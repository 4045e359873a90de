"""What a session's event log holds. Every client renders these; the log is the source of truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    PROMPT_QUEUED = "prompt_queued"  # {prompt_id, text, author, source, queued_ahead}
    TURN_STARTED = "turn_started"  # {prompt_id, text, author}
    TEXT_DELTA = "text_delta"  # {text}
    ASSISTANT_MESSAGE = "assistant_message"  # {content, tool_calls: [{id, name, arguments}]}
    TOOL_CALL = "tool_call"  # {id, name, arguments}
    TOOL_RESULT = "tool_result"  # {id, name, ok, output}
    FILE_CHANGED = "file_changed"  # {path, action}
    NOTE = "note"  # {text}: a milestone the agent posts to the thread
    TURN_ENDED = "turn_ended"  # {prompt_id, outcome, error?, first_token_ms, duration_ms, by?}
    QUEUE_CLEARED = "queue_cleared"  # {count, by}
    SESSION_IDLE = "session_idle"  # {}: the queue is empty; followers of a working period stop here


class Outcome(StrEnum):
    DONE = "done"
    STOPPED = "stopped"
    ERROR = "error"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    ts: float
    kind: Kind
    turn: int | None
    """The prompt id of the turn this event belongs to, if any."""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Author:
    """Who asked: an id in the origin's namespace (a Slack user id) and how to show them."""

    id: str
    name: str | None = None
    source: str = "slack"


@dataclass(frozen=True, slots=True)
class Prompt:
    id: int
    text: str
    author: Author
    status: str
    order_key: float
