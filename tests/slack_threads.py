"""Reading a Slack thread the way a person does: turn by turn, whatever the messages' layout.

A turn is its own message (the one with the *View session* button: who asked, the status, the
controls) and the messages after it up to the next turn's (a streamed answer, its
continuations, notes). Tests look at turns so they hold whether an answer was streamed below
the turn's message or edited into it.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from tests.fakes.slack import FakeSlack, Message

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


@dataclass
class Turn:
    head: Message
    after: list[Message] = field(default_factory=list)

    @property
    def messages(self) -> list[Message]:
        return [self.head, *self.after]

    def rendered(self) -> str:
        return "\n".join(m.rendered() for m in self.messages)

    @property
    def done(self) -> bool:
        """Finished, one way or another (done, stopped, failed, interrupted)."""
        text = self.head.rendered()
        finished = "stop_turn" not in self.head.buttons() and any(w in text for w in ("Done", "Stopped", ":warning:"))
        return finished and not any(m.streaming for m in self.after)

    def answer(self) -> str:
        """The answer's Markdown, in order: the head's `markdown` block, then the messages after it
        (each part ends at a line end, or with the fence a cut closed)."""
        return "".join(b["text"] for m in self.messages for b in m.blocks if b.get("type") == "markdown")


def turns(slack: FakeSlack, thread_ts: str, channel: str = "C0000001") -> list[Turn]:
    out: list[Turn] = []
    for message in slack.bot_messages(channel=channel, thread_ts=thread_ts):
        if "view_session" in message.buttons():
            out.append(Turn(message))
        elif out:
            out[-1].after.append(message)
    return out


def all_done(slack: FakeSlack, thread_ts: str, count: int, channel: str = "C0000001") -> bool:
    found = turns(slack, thread_ts, channel)
    return len(found) == count and all(t.done for t in found)


def content_lines(markdown: str) -> list[str]:
    """The lines of an answer without its fence lines (a split closes and reopens fences)."""
    return [line for line in markdown.splitlines() if not _FENCE.match(line)]


def pace_breaks(times: list[float], interval: float = 1.0, burst: int = 2, slack: float = 0.1) -> list[str]:
    """How writes to one message (times, in order, the last one the final state) break the
    outbox's pace: interim writes `interval` apart, and never `burst + 1` writes within one
    `interval` (so the final one may follow the one before at once). `slack` absorbs timer jitter."""
    breaks = [f"interim writes {b - a:.2f} s apart" for a, b in itertools.pairwise(times[:-1]) if b - a < interval - slack]
    breaks += [f"{burst + 1} writes within {times[i + burst] - times[i]:.2f} s"
               for i in range(len(times) - burst) if times[i + burst] - times[i] < interval - slack]
    return breaks
