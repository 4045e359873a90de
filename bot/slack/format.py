"""Turning a turn's state into Slack messages within Block Kit's limits.

The model writes Markdown; Slack reads mrkdwn. A section block holds at most 3,000 characters
and a message at most 50 blocks, so long answers are split into sections, never truncated
mid-code-block without closing the fence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.sessions.projection import SessionView, TurnView

SECTION_LIMIT = 2900
MAX_SECTIONS = 40
FALLBACK_LIMIT = 3000

STOP_ACTION = "stop_turn"
CLEAR_QUEUE_ACTION = "clear_queue"
VIEW_ACTION = "view_session"

_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*|__(.+?)__")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.MULTILINE)
_BULLET = re.compile(r"^(\s*)[-*+]\s+", re.MULTILINE)
_STRIKE = re.compile(r"~~(.+?)~~")


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_to_mrkdwn(text: str) -> str:
    """Convert the Markdown models write; code blocks and inline code are left as they are.

    Only user mentions survive from raw `<...>` syntax: a model cannot ping @channel.
    """
    out: list[str] = []
    for i, part in enumerate(re.split(r"(```.*?(?:```|$))", text, flags=re.DOTALL)):
        if i % 2 == 1:  # fenced code: drop the language tag Slack would print
            out.append(re.sub(r"^```[\w+-]*\n", "```\n", escape(part)))
            continue
        pieces = re.split(r"(`[^`\n]+`)", part)
        for j, piece in enumerate(pieces):
            if j % 2 == 1:
                out.append(escape(piece))
                continue
            piece = escape(piece)
            piece = re.sub(r"&lt;@([UW][A-Z0-9]{2,})&gt;", r"<@\1>", piece)
            piece = _LINK.sub(lambda m: f"<{m.group(2)}|{m.group(1)}>", piece)
            piece = _BOLD.sub(lambda m: f"*{m.group(1) or m.group(2)}*", piece)
            piece = _STRIKE.sub(r"~\1~", piece)
            piece = _HEADING.sub(r"*\1*", piece)
            piece = _BULLET.sub(r"\1• ", piece)
            out.append(piece)
    return "".join(out)


def split_sections(text: str, limit: int = SECTION_LIMIT) -> list[str]:
    """Split at line ends into pieces of at most `limit`, re-opening a code fence that was cut."""
    if len(text) <= limit:
        return [text] if text else []
    parts: list[str] = []
    current = ""
    in_fence = False
    for line in text.splitlines(keepends=True):
        while len(line) > limit - 8:  # a single huge line: hard-wrap it
            head, line = line[: limit - 8], line[limit - 8 :]
            parts, current = _push(parts, current, in_fence), ("```\n" if in_fence else "") + head
        if len(current) + len(line) + 4 > limit:
            parts, current = _push(parts, current, in_fence), ("```\n" if in_fence else "")
        current += line
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
    if current.strip():
        parts.append(current)
    return parts


def _push(parts: list[str], current: str, in_fence: bool) -> list[str]:
    if current.strip():
        parts.append(current + ("\n```" if in_fence else ""))
    return parts


@dataclass
class TurnState:
    """What one turn's status message shows: the turn, and the session's queue."""

    turn: TurnView
    view: SessionView
    session_id: str
    session_url: str

    @property
    def running(self) -> bool:
        return self.turn.running

    @property
    def queued(self) -> int:
        return len(self.view.queue)


def status_line(state: TurnState) -> str:
    turn = state.turn
    queued = f" · {state.queued} more queued" if state.queued and turn.running else ""
    if turn.outcome is None:
        return f":hourglass_flowing_sand: {escape(turn.activity or 'Working…')}{queued}"
    took = f" in {turn.duration_ms / 1000:.1f} s" if turn.duration_ms is not None else ""
    if turn.outcome == "done":
        return f":white_check_mark: Done{took}"
    if turn.outcome == "stopped":
        who = f" by <@{turn.stopped_by}>" if turn.stopped_by else ""
        return f":black_square_for_stop: Stopped{who}{took}"
    if turn.outcome == "interrupted":
        return f":warning: {escape(turn.error or 'Interrupted.')}"
    return f":warning: {escape(turn.error or 'This turn failed.')}"


def render_turn(state: TurnState) -> tuple[str, list[dict]]:
    """The status message of a turn: who asked, the answer so far, its status, its controls."""
    turn = state.turn
    quoted = " ".join(turn.prompt.split())
    quoted = quoted if len(quoted) <= 150 else quoted[:149] + "…"
    blocks: list[dict] = [
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"<@{turn.author.id}> asked: {escape(quoted)}"}]}
    ]
    body = markdown_to_mrkdwn(turn.text) if turn.text else ("_Thinking…_" if state.running else "_No answer._")
    sections = split_sections(body)
    if len(sections) > MAX_SECTIONS:
        sections = sections[:MAX_SECTIONS] + ["_…the rest is in the session view._"]
    blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": s}} for s in sections]
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": status_line(state)}]})
    buttons: list[dict] = [
        {"type": "button", "action_id": VIEW_ACTION, "text": {"type": "plain_text", "text": "View session"}, "url": state.session_url}
    ]
    if state.running:
        buttons.append(
            {"type": "button", "action_id": STOP_ACTION, "style": "danger", "value": state.session_id,
             "text": {"type": "plain_text", "text": "Stop"}}
        )
    if state.queued and state.running:
        buttons.append(
            {"type": "button", "action_id": CLEAR_QUEUE_ACTION, "value": state.session_id,
             "text": {"type": "plain_text", "text": f"Clear queue ({state.queued})"},
             "confirm": {"title": {"type": "plain_text", "text": "Clear the queue?"},
                         "text": {"type": "plain_text", "text": f"{state.queued} queued prompt(s) will not run."},
                         "confirm": {"type": "plain_text", "text": "Clear"},
                         "deny": {"type": "plain_text", "text": "Keep"}}}
        )
    blocks.append({"type": "actions", "block_id": "controls", "elements": buttons})
    fallback = turn.text or status_line(state)
    if len(fallback) > FALLBACK_LIMIT:
        fallback = fallback[: FALLBACK_LIMIT - 1] + "…"
    return fallback, blocks
