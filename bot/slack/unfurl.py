"""Unfurling session links posted in Slack (`link_shared` → `chat.unfurl`): title, repository,
status and who started it. Only links to this service's session pages are unfurled; the share
token in the link is what lets its readers watch, so the unfurl shows no more than the page."""

from __future__ import annotations

from typing import Any

from bot.sessions.service import SessionSummary
from bot.slack.format import escape, mention


def session_token(url: str, public_url: str) -> str | None:
    """The share token of a link to one of our session pages."""
    prefix = public_url.rstrip("/") + "/s/"
    if not url.startswith(prefix):
        return None
    token = url[len(prefix):].split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return token if token and "/" not in token else None


def unfurl(row: SessionSummary) -> dict[str, Any]:
    """The attachment shown under a session link."""
    title = row.title or f"Session {row.id}"
    who = mention(row.creator) if row.creator else "someone"
    return {"blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{escape(title[:200])}*"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": (
            f"{escape(row.repo or 'no repository')} · {row.status} · started by {who}")}]},
    ]}
