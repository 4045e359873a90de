"""Slack messages at the edge: what is a prompt, for which thread, from whom.

Slack delivers a mention twice (as `app_mention` and as `message`) and redelivers on retries;
both shapes go through `parse_message` so either delivery does the same thing, and the dedupe
key is the message itself (`dedupe_key`: channel + ts), not the delivery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bot.events import Author, Origin
from bot.sessions.service import SessionInfo, Surface

ACCEPTED_SUBTYPES = {None, "file_share", "thread_broadcast"}
_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_TS = re.compile(r"^\d{1,12}\.\d{1,8}$")
_ID = re.compile(r"^[A-Z0-9]{2,32}$")


@dataclass(frozen=True)
class IncomingMessage:
    channel: str
    ts: str
    thread_ts: str | None
    user: str
    text: str
    mentioned: bool
    direct: bool
    team: str | None = None
    """The author's own team (`user_team`; Slack Connect sends messages from other organisations)."""

    @property
    def root(self) -> str:
        """The thread a session for this message lives in."""
        return self.thread_ts or self.ts

    @property
    def dedupe_key(self) -> str:
        return f"msg:{self.channel}:{self.ts}"


def is_from_a_bot(event: dict[str, Any]) -> bool:
    return bool(event.get("bot_id") or event.get("bot_profile") or event.get("subtype") == "bot_message")


def parse_message(event: dict[str, Any], bot_user_id: str | None) -> IncomingMessage | None:
    """A human's message worth looking at, or None for anything else (edits, joins, bots, junk)."""
    if event.get("type") not in ("app_mention", "message") or event.get("subtype") not in ACCEPTED_SUBTYPES:
        return None
    if is_from_a_bot(event):
        return None
    channel, ts, user, text = event.get("channel"), event.get("ts"), event.get("user"), event.get("text")
    thread_ts = event.get("thread_ts")
    if not (isinstance(channel, str) and _ID.match(channel) and isinstance(user, str) and _ID.match(user)):
        return None
    bad_thread = thread_ts is not None and not (isinstance(thread_ts, str) and _TS.match(thread_ts))
    if not (isinstance(ts, str) and _TS.match(ts)) or bad_thread:
        return None
    if not isinstance(text, str):
        text = ""
    if user == bot_user_id:
        return None
    mentioned = event.get("type") == "app_mention" or (bot_user_id is not None and f"<@{bot_user_id}" in text)
    direct = event.get("channel_type") == "im" or channel.startswith("D")
    team = event.get("user_team") or event.get("team")
    return IncomingMessage(channel, ts, thread_ts if thread_ts != ts else None, user, text, mentioned, direct,
                           team if isinstance(team, str) and _ID.match(team) else None)


def prompt_text(message: IncomingMessage, bot_user_id: str | None) -> str:
    """The request without the bot's own mention; other people's mentions stay."""
    text = message.text
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", " ", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


THREAD = "slack_thread"
"""The surface kind of a Slack thread; its key is `channel:thread_ts`."""


def thread_surface(channel: str, thread_ts: str) -> Surface:
    return Surface(THREAD, f"{channel}:{thread_ts}")


def thread_of(info: SessionInfo) -> tuple[str, str] | None:
    """The (channel, thread_ts) a session is bound to in Slack, if any."""
    surface = info.surface(THREAD)
    if surface is None:
        return None
    channel, _, ts = surface.key.partition(":")
    return channel, ts


def author_of(message: IncomingMessage) -> Author:
    return Author(id=message.user, origin=Origin.SLACK_DM if message.direct else Origin.SLACK_THREAD, team=message.team)


def mentioned_ids(text: str) -> tuple[str, ...]:
    """The user ids `<@U…>` mentions in a text name, once each, in order."""
    return tuple(dict.fromkeys(m.group(1) for m in _MENTION.finditer(text)))


def mentioned_people(message: IncomingMessage, bot_user_id: str | None) -> tuple[str, ...]:
    """The people a message mentions, the bot and the author left out, in order."""
    return tuple(p for p in mentioned_ids(message.text) if p not in (bot_user_id, message.user))
