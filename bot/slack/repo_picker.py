"""Asking in the thread which repository a request is about, when the classifier cannot tell."""

from __future__ import annotations

from typing import Any

from bot.slack.format import escape

PICK_ACTION = "pick_repo"
MAX_OPTIONS = 100  # Slack's limit for a static select


def _option(name: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": name[:75]}, "value": name}


def ask_blocks(pending_id: str, user: str, likely: list[str], all_repos: list[str], ttl_minutes: int) -> list[dict[str, Any]]:
    rest = [r for r in all_repos if r not in likely]
    groups: list[dict[str, Any]] = []
    if likely:
        groups.append({"label": {"type": "plain_text", "text": "Likely"}, "options": [_option(r) for r in likely]})
    if rest:
        room = MAX_OPTIONS - len(likely)
        groups.append({"label": {"type": "plain_text", "text": "All repositories"}, "options": [_option(r) for r in rest[:room]]})
    select = {"type": "static_select", "action_id": PICK_ACTION,
              "placeholder": {"type": "plain_text", "text": "Pick a repository"}, "option_groups": groups}
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"<@{user}>, which repository is this about?"}},
        {"type": "actions", "block_id": f"pick:{pending_id}", "elements": [select]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text":
            f"Anyone in this thread can pick. I'll hold the request for {ttl_minutes} minutes; "
            "next time you can say `in owner/repo`."}]},
    ]


def picked_blocks(repo: str, by: str) -> list[dict[str, Any]]:
    return [{"type": "section", "text": {"type": "mrkdwn", "text": f"Working on *{escape(repo)}* (picked by <@{by}>)."}}]


def expired_blocks(ttl_minutes: int) -> list[dict[str, Any]]:
    return [{"type": "section", "text": {"type": "mrkdwn", "text":
        f"Nobody picked a repository within {ttl_minutes} minutes, so I dropped this request. "
        "Mention me again and say which, e.g. `in acme/api`."}}]
