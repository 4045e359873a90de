"""The App Home tab: the person's recent sessions and an **Open web view** button.

The button's URL is a personal sign-in link (single use, 10 minutes): Slack has just told us
who opened the tab, so the link can vouch for them on the web. A fresh one is minted each time
the tab is opened, and only that person sees it.
"""

from __future__ import annotations

from typing import Any

from bot.sessions.service import SessionSummary
from bot.slack.format import Block, escape

OPEN_WEB_ACTION = "open_web_view"
CONNECT_GITHUB_ACTION = "connect_github"
COMPOSE_ACTION = "home_compose"
COMPOSE_BLOCK = "compose"
START_ACTION = "home_start"
RECENT = 10


def home_view(signin_url: str, sessions: list[SessionSummary], session_url: Any, minutes: int,
              github: tuple[str | None, str] | None = None, default_repo: str | None = None,
              channel_defaults: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The Home tab's view (`views.publish`); `github` is (the login linked, if any; the connect URL)
    when accounts can be linked. The composer sends its first characters as you type (the likeliest
    repository's sandbox is warmed then) and *Start* begins the session in a DM thread."""
    defaults = [f"<#{channel}>: {escape(repo)}" for channel, repo in channel_defaults or []]
    where = f"Your default repository: *{escape(default_repo)}*." if default_repo else "No default repository yet."
    if defaults:
        where += " Channels you set: " + ", ".join(defaults) + "."
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": "hosted-agents"}},
        {"type": "input", "block_id": COMPOSE_BLOCK, "dispatch_action": True, "optional": True,
         "label": {"type": "plain_text", "text": "Ask the agent"},
         "element": {"type": "plain_text_input", "action_id": COMPOSE_ACTION, "multiline": True,
                     "placeholder": {"type": "plain_text", "text": "What should it do? Name the repo if you like."},
                     "dispatch_action_config": {"trigger_actions_on": ["on_character_entered"]}}},
        {"type": "actions", "block_id": "compose_actions", "elements": [
            {"type": "button", "action_id": START_ACTION, "style": "primary", "text": {"type": "plain_text", "text": "Start"}}]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": where}]},
        {"type": "section", "text": {"type": "mrkdwn", "text": (
            "Mention me in a channel or send me a message to start a session. In the web view you can watch "
            "sessions live, prompt and stop them, and start new ones.")}},
        {"type": "actions", "block_id": "web", "elements": [
            {"type": "button", "action_id": OPEN_WEB_ACTION, "style": "primary", "url": signin_url,
             "text": {"type": "plain_text", "text": "Open web view"}}]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": (
            f"The button signs you in; it works once and for {minutes} minutes. Open this tab again for a new one.")}]},
    ]
    if github is not None:
        login, connect_url = github
        status = f"GitHub: linked as *{escape(login)}*." if login else (
            "GitHub: not linked. Link your account so pull requests are opened in your name.")
        blocks.append({"type": "section", "block_id": "github", "text": {"type": "mrkdwn", "text": status},
                       "accessory": {"type": "button", "action_id": CONNECT_GITHUB_ACTION, "url": connect_url,
                                     "text": {"type": "plain_text", "text": "Connect GitHub" if not login else "Relink"}}})
    blocks += [
        {"type": "divider"},
        {"type": "header", "text": {"type": "plain_text", "text": "Your recent sessions"}},
    ]
    if not sessions:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "No sessions yet."}})
    for row in sessions[:RECENT]:
        title = escape(_short(row.title or "(no prompt yet)", 120)).replace("|", "¦")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": (
            f"<{session_url(row.share_token)}|{title}>\n{escape(row.repo or 'no repository')} · {row.status}")}})
    return {"type": "home", "blocks": blocks}


def refused_view(message: str) -> dict[str, Any]:
    """The Home tab of someone the access rules keep out: why, and no sign-in link."""
    return {"type": "home", "blocks": [
        {"type": "header", "text": {"type": "plain_text", "text": "hosted-agents"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": escape(message)}},
    ]}


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
