"""Turning a turn into Slack messages: Slack's own Markdown, safe text, and Slack's limits.

Answers go out as standard Markdown in `markdown` blocks (Slack does the rendering, so
`__init__`, `*italic*`, code and links stay as the model wrote them). Everything Slack reads as
mrkdwn (the `text` fallback that notifications show, context blocks) is escaped, because model
and prompt text must never ping `@channel`, a user group, or dress a link up as another URL.
Only mentions of people already in the session pass.

Limits (Slack rejects a call past them): message text 40,000 characters, 50 blocks, section
text 3,000, markdown 12,000 per payload (all `markdown` blocks of a message together). Long
answers are split at line ends into parts that each fit one message, reopening a code fence
that a cut went through; nothing is truncated.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bot.events import PullRequest

TEXT_LIMIT = 40_000
BLOCKS_LIMIT = 50
SECTION_LIMIT = 3_000
MARKDOWN_LIMIT = 12_000
"""Slack's limit for all `markdown` blocks of one payload together (and for streamed `markdown_text`)."""

PART_LIMIT = MARKDOWN_LIMIT - 100
"""What one answer part may hold: below Slack's limit, with room for a fence that is closed or reopened."""
FALLBACK_LIMIT = 3_000
"""The `text` fallback is a notification preview and a screen reader's text, not the answer's home."""
PROMPT_QUOTE = 150

STOP_ACTION = "stop_turn"
CLEAR_QUEUE_ACTION = "clear_queue"
VIEW_ACTION = "view_session"
CREATE_PR_ACTION = "create_pr"
CREATE_PR_AS_APP_ACTION = "create_pr_as_app"
CONNECT_GITHUB_LINK_ACTION = "connect_github_link"

ZWSP = "\u200b"
"""Put after a `<` that would open a Slack token (`<!here>`, `<@U…>`, `<url|text>`) in Markdown:
the text reads the same, code copies the same bar one invisible character, and Slack sees no token."""

Block = dict[str, Any]
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_MENTION = re.compile(r"<@([UW][A-Z0-9]{2,})(?:\|[^<>\n]*)?>")
_TOKEN_START = re.compile(r"<(?=[!@#]|[A-Za-z][A-Za-z0-9+.\-]*:)")
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")
_LOOKS_LIKE_URL = re.compile(
    r"^(?:[a-z][a-z0-9+.\-]*://)?(?:[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?\.)+[a-z]{2,63}(?::\d+)?(?:[/?#]\S*)?$", re.IGNORECASE
)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def is_user_id(value: str | None) -> bool:
    return bool(value) and bool(_USER_ID.match(value or ""))


# -- mrkdwn: escape everything, let through mentions of the session's people -----------------


def escape(text: str) -> str:
    """Slack's own escaping for mrkdwn: after it, no `<...>` token can form."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_mrkdwn(text: str, allowed: Collection[str] = ()) -> str:
    """Escape for a mrkdwn field; `<@U…>` of the people in `allowed` still mention them."""
    out = escape(text)
    if allowed:
        out = re.sub(r"&lt;@([UW][A-Z0-9]{2,})(?:\|[^<>\n]*?)?&gt;",
                     lambda m: f"<@{m.group(1)}>" if m.group(1) in allowed else m.group(0), out)
    return out


def mention(user_id: str | None) -> str:
    """A mention the service itself writes (an author, who stopped a turn), if the id is one."""
    return f"<@{user_id}>" if user_id and is_user_id(user_id) else escape(user_id or "someone")


# -- Markdown: as written, minus Slack tokens and links posing as other URLs -----------------


def sanitize_markdown(text: str, allowed: Collection[str] = ()) -> str:
    """The model's Markdown, safe to hand to Slack, changed as little as possible.

    Line by line, so the result for a text is a prefix of the result for any longer text that
    starts with it at a line end (streaming sends it in pieces)."""
    out: list[str] = []
    fence: tuple[str, str] | None = None
    for line in text.splitlines(keepends=True):
        opened = fence
        fence = fence_after(fence, line)
        safe = _neutralize(line, allowed)
        out.append(safe if opened is not None or fence is not None else _disclose_hosts(safe))
    return "".join(out)


def _neutralize(line: str, allowed: Collection[str]) -> str:
    def repl(m: re.Match[str]) -> str:
        who = _MENTION.match(line, m.start())
        if who is not None and who.group(1) in allowed:
            return "<"
        return "<" + ZWSP

    return _TOKEN_START.sub(repl, line) if "<" in line else line


def _disclose_hosts(line: str) -> str:
    """`[https://good.example](https://evil.example)` → the same, followed by ` (evil.example)`."""
    if "](" not in line:
        return line

    def repl(m: re.Match[str]) -> str:
        label, url = m.group(1).strip("`*_ "), m.group(2)
        if not _LOOKS_LIKE_URL.match(label):
            return m.group(0)
        shown, real = _host(label if "://" in label else "http://" + label), _host(url)
        return m.group(0) if real is None or shown == real else f"{m.group(0)} ({real})"

    return _LINK.sub(repl, line)


def _host(url: str) -> str | None:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.removeprefix("www.") if host else None


# -- splitting: whole answers in parts that fit ----------------------------------------------


def fence_after(fence: tuple[str, str] | None, line: str) -> tuple[str, str] | None:
    """The open code fence (marker, opening line) after `line`, given the one before it."""
    m = _FENCE.match(line)
    if m is None:
        return fence
    marker = m.group(1)
    if fence is None:
        return marker, line.rstrip("\r\n")
    if marker[0] == fence[0][0] and len(marker) >= len(fence[0]) and not line[m.end():].strip():
        return None
    return fence


def fence_at(text: str, end: int | None = None) -> tuple[str, str] | None:
    """The code fence open at `end` (a line start) in `text`."""
    fence: tuple[str, str] | None = None
    for line in text[:end].splitlines(keepends=True):
        fence = fence_after(fence, line)
    return fence


def close_fence(body: str, fence: tuple[str, str] | None) -> str:
    if fence is None:
        return body
    return body + ("" if body.endswith("\n") else "\n") + fence[0]


def reopen_fence(fence: tuple[str, str] | None) -> str:
    return fence[1] + "\n" if fence is not None else ""


def split_markdown(text: str, limit: int = PART_LIMIT) -> list[str]:
    """Parts of at most `limit` characters, cut at line ends (a longer line is wrapped), each
    with its code fences balanced: a fence a cut goes through is closed and opened again."""
    if len(text) <= limit:
        return [text] if text else []
    parts: list[str] = []
    fence: tuple[str, str] | None = None
    body, header = "", 0

    def flush() -> None:
        nonlocal body, header
        if len(body) > header:
            parts.append(close_fence(body, fence))
        body = reopen_fence(fence)
        header = len(body)

    for line in text.splitlines(keepends=True):
        while line:
            after = fence_after(fence, line)
            reserve = len(after[0]) + 1 if after is not None else 0
            if len(body) + len(line) + reserve <= limit:
                body, fence, line = body + line, after, ""
            elif len(body) > header:
                flush()
            else:  # one line longer than a part: wrap it
                room = limit - len(body) - (len(fence[0]) + 1 if fence is not None else 0)
                body, line = body + line[:room], line[room:]
                flush()
    if len(body) > header:
        parts.append(body)
    return parts


def excerpt(text: str, limit: int = FALLBACK_LIMIT) -> str:
    """The start of `text` for a preview, whitespace folded."""
    text = " ".join(text[: limit * 2].split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- messages ---------------------------------------------------------------------------------


@dataclass
class Head:
    """What a turn's own message shows: who asked what, its status, its controls, maybe the answer."""

    author: str
    prompt: str
    session_id: str
    session_url: str
    allowed: frozenset[str] = frozenset()
    answer: str | None = None
    """Sanitized Markdown of the answer's first part, when the answer lives in this message."""
    answer_preview: str = ""
    """Raw start of the answer, for the notification text."""
    activity: str | None = None
    queued: int = 0
    outcome: str | None = None
    detail: str | None = None
    """Who stopped the turn, or what went wrong."""
    duration_ms: float | None = None
    via: str | None = None
    """Where the prompt was sent from when not Slack (`the web`)."""
    footer: str | None = None
    """The finished turn's usage (tokens, cost), after its status."""
    can_open_pr: bool = False
    """The session has a repository and pull requests are set up: offer *Create PR* once the turn is done."""
    trace_url: str | None = None
    """Where a failed turn failed in the session page's trace (`…/s/<token>#e<seq>`)."""

    @property
    def running(self) -> bool:
        return self.outcome is None


def status_line(head: Head) -> str:
    """The status, as mrkdwn (escaped)."""
    queued = f" · {head.queued} more queued" if head.queued else ""
    if head.outcome is not None and head.footer:
        queued = f" · {escape(head.footer)}{queued}"
    if head.outcome is None:
        return f":hourglass_flowing_sand: {escape(head.activity or 'Working…')}{queued}"
    took = f" in {head.duration_ms / 1000:.1f} s" if head.duration_ms is not None else ""
    if head.outcome == "done":
        return f":white_check_mark: Done{took}{queued}"
    if head.outcome == "stopped":
        who = f" by {mention(head.detail)}" if head.detail else ""
        return f":black_square_for_stop: Stopped{who}{took}{queued}"
    trace = f" {link(head.trace_url, 'See where in the trace')}" if head.trace_url else ""
    if head.outcome == "interrupted":
        return f":warning: {escape(_one_line(head.detail or 'Interrupted.'))}{trace}{queued}"
    return f":warning: {escape(_one_line(head.detail or 'This turn failed.'))}{trace}{queued}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def link(url: str, label: str) -> str:
    """A mrkdwn link to one of our own pages (`url` is ours, never a user's or the model's)."""
    return f"<{escape(url).replace('|', '%7C')}|{escape(label)}>"


def render_head(head: Head) -> tuple[str, list[Block]]:
    """The turn's message: `<@author> asked: …`, the answer (if it lives here), status, buttons."""
    quoted = " ".join(head.prompt.split())
    quoted = quoted if len(quoted) <= PROMPT_QUOTE else quoted[: PROMPT_QUOTE - 1] + "…"
    via = f" (from {head.via})" if head.via else ""
    asked = f"{mention(head.author)} asked{via}: {escape_mrkdwn(quoted, head.allowed)}"
    blocks: list[Block] = [_context(asked)]
    if head.answer:
        blocks.append(markdown_block(head.answer))
    elif head.outcome == "done" and head.answer is not None:
        blocks.append(markdown_block("_No answer._"))
    status = status_line(head)
    blocks.append(_context(status))
    blocks.append({"type": "actions", "block_id": "controls", "elements": _buttons(head)})
    preview = head.answer_preview if head.answer else ""
    text = escape_mrkdwn(excerpt(preview), head.allowed) if preview.strip() else f"{asked} · {status}"
    return text, blocks


def render_part(markdown: str, preview: str, allowed: Collection[str] = ()) -> tuple[str, list[Block]]:
    """A message holding one part of an answer (`markdown` is already sanitized)."""
    return escape_mrkdwn(excerpt(preview), allowed) or "…", [markdown_block(markdown)]


def render_note(text: str, allowed: Collection[str] = ()) -> list[tuple[str, list[Block]]]:
    """A milestone the agent posts (plan, PR opened), in as many messages as it needs."""
    parts = split_markdown(sanitize_markdown(text, allowed), PART_LIMIT - 10) or ["_(empty note)_"]
    return [(escape_mrkdwn(excerpt(":memo: " + text), allowed), [markdown_block((":memo: " if i == 0 else "") + part)])
            for i, part in enumerate(parts)]


def github_offer_blocks(connect_url: str, session_id: str) -> tuple[str, list[Block]]:
    """Privately, to someone who needs a PR but has no linked GitHub account."""
    text = ("To open the pull request in your name, connect your GitHub account (the link works once, for "
            "10 minutes). Or open it as the GitHub App: it is marked as such, and you can review it.")
    return text, [
        {"type": "section", "text": {"type": "mrkdwn", "text": escape(text)}},
        {"type": "actions", "block_id": "github_offer", "elements": [
            {"type": "button", "action_id": CONNECT_GITHUB_LINK_ACTION, "style": "primary", "url": connect_url,
             "text": {"type": "plain_text", "text": "Connect GitHub"}},
            {"type": "button", "action_id": CREATE_PR_AS_APP_ACTION, "value": session_id,
             "text": {"type": "plain_text", "text": "Open as the App"}}]},
    ]


def pull_request_text(pr: PullRequest) -> str:
    """What happened to the session's pull request, as a note in its thread."""
    ref = f"[PR #{pr.number}]({pr.url})"
    who = mention(pr.by) if pr.by and is_user_id(pr.by) else (pr.by or "someone")
    match pr.action:
        case "opened":
            how = " as the GitHub App (no linked GitHub account)" if pr.as_app else ""
            return f"{who} opened {ref}{how}."
        case "pushed":
            return f"Pushed new commits to {ref}" + (f": {pr.text}" if pr.text else ".")
        case "approved":
            return f"{ref} was approved by {who}."
        case "changes_requested":
            return f"{who} requested changes on {ref}."
        case "commented":
            return f"{who} commented on {ref}: " + " ".join((pr.text or "").split())[:300]
        case "merged":
            return f"{ref} was merged. :tada:"
        case "closed":
            return f"{ref} was closed without merging."
        case "reopened":
            return f"{ref} was reopened."
    return f"{ref}: {pr.action}."


def usage_text(tokens: int, estimated: bool, cost_usd: float | None) -> str:
    """`1,234 tokens · $0.0123` (`~` when the server sent no counts; no cost without a price)."""
    text = f"{'~' if estimated else ''}{tokens:,} tokens"
    return text + (f" · ${cost_usd:.4f}" if cost_usd is not None else "")


def markdown_block(text: str) -> Block:
    return {"type": "markdown", "text": text}


def _context(mrkdwn: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn[:SECTION_LIMIT]}]}


def _buttons(head: Head) -> list[Block]:
    buttons: list[Block] = [
        {"type": "button", "action_id": VIEW_ACTION, "text": {"type": "plain_text", "text": "View session"},
         "url": head.session_url, "value": head.session_id}
    ]
    if head.running:
        buttons.append({"type": "button", "action_id": STOP_ACTION, "style": "danger", "value": head.session_id,
                        "text": {"type": "plain_text", "text": "Stop"}})
    elif head.can_open_pr:
        buttons.append({"type": "button", "action_id": CREATE_PR_ACTION, "value": head.session_id,
                        "text": {"type": "plain_text", "text": "Create PR"}})
    if head.queued:
        buttons.append(
            {"type": "button", "action_id": CLEAR_QUEUE_ACTION, "value": head.session_id,
             "text": {"type": "plain_text", "text": f"Clear queue ({head.queued})"},
             "confirm": {"title": {"type": "plain_text", "text": "Clear the queue?"},
                         "text": {"type": "plain_text", "text": f"{head.queued} queued prompt(s) will not run."},
                         "confirm": {"type": "plain_text", "text": "Clear"},
                         "deny": {"type": "plain_text", "text": "Keep"}}}
        )
    return buttons
