"""Who may use the bot, which repositories, and what they may do in a session.

The rules live here, in the sessions layer, so every surface (Slack, the web page, App Home,
GitHub comments) gets the same answers; a surface only supplies a `Directory` that knows its
people (Slack: `users.info`, `usergroups.users.list`). Lookups fail closed: a person the directory
cannot place is refused with a message that says to try again, never let in by default.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from bot.config import Settings
from bot.events import Author
from bot.repos import Repo, RepoCatalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Person:
    """What the rules need to know about someone, as their directory reports it."""

    id: str
    guest: bool = False
    """A multi- or single-channel guest (`is_restricted`, `is_ultra_restricted`)."""
    external: bool = False
    """From another organisation (Slack Connect)."""
    groups: frozenset[str] = frozenset()
    """The user groups among ALLOW_USERGROUPS this person belongs to."""


class DirectoryUnavailable(Exception):
    """The directory could not say who someone is (a network error, a refused call)."""


class Directory(Protocol):
    """A surface's people: placed on demand, cached by the surface."""

    async def person(self, author: Author, groups: frozenset[str]) -> Person:
        """Who `author` is; `groups` are the user groups whose membership matters (may be empty)."""

    def known_name(self, user_id: str) -> str | None:
        """How the surface names this person, if it already knows (no lookup)."""

    def known_email(self, user_id: str) -> str | None:
        """The person's email, if the surface already knows it (no lookup)."""


class SignedIn:
    """The directory of a surface that signs its people in itself (the web page): whoever it
    passes on is a member; ALLOW_USERS still narrows who that may be."""

    async def person(self, author: Author, groups: frozenset[str]) -> Person:
        return Person(author.id)

    def known_name(self, user_id: str) -> str | None:
        return None

    def known_email(self, user_id: str) -> str | None:
        return None


@dataclass(frozen=True)
class Place:
    """Where a request was made: a channel by id and, if known, name; None for a DM or the web."""

    channel_id: str | None = None
    channel_name: str | None = None


@dataclass(frozen=True)
class Denied:
    reason: str
    """not_member, guest, external, not_allowed, directory_unavailable, repo_not_allowed,
    not_participant, not_yours, rate_limited."""
    message: str


class Access:
    """The access rules of one service, from its settings and repositories file."""

    def __init__(self, settings: Settings, catalog: RepoCatalog):
        self.settings = settings
        self.catalog = catalog
        self._directories: list[tuple[frozenset[str], Directory]] = []
        self.refusals: Counter[str] = Counter()
        """Refusals by reason since start (never with the text of what was asked)."""
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._prompt_rate = RateLimitItemPerMinute(settings.max_prompts_per_minute)
        self._by_name = any(not _looks_like_channel_id(c) for r in catalog.repos for c in r.channels)
        """Decided once: the catalog does not change while the service runs."""

    def add_directory(self, origins: Iterable[str], directory: Directory) -> None:
        """The directory that places authors of these origins (e.g. the Slack origins); one added
        later for an origin takes over from an earlier one (web sign-in is checked by Slack's, when on)."""
        self._directories.insert(0, (frozenset(origins), directory))

    def _directory(self, author: Author) -> Directory | None:
        return next((d for origins, d in self._directories if author.origin.value in origins), None)

    @property
    def restricted_to_listed(self) -> bool:
        return bool(self.settings.allow_users or self.settings.allow_usergroups)

    # -- who may use the bot ---------------------------------------------------------------

    async def check_person(self, author: Author) -> Denied | None:
        """None when `author` may use the bot at all, else why not."""
        directory = self._directory(author)
        if directory is None:
            return Denied("not_member", "I can't tell who you are here, so I can't take requests from this place.")
        s = self.settings
        needs_lookup = not (s.allow_guests and s.allow_external) or bool(s.allow_usergroups)
        if needs_lookup:
            try:
                person = await directory.person(author, s.allow_usergroups)
            except DirectoryUnavailable as exc:
                log.warning("could not look up %s: %s", author.id, exc)
                return Denied("directory_unavailable", "I couldn't check who you are just now; please try again in a minute.")
        else:
            person = Person(author.id)
        if person.external and not s.allow_external:
            return Denied("external", "Sorry, I only take requests from members of this workspace, not from other organisations.")
        if person.guest and not s.allow_guests:
            return Denied("guest", "Sorry, I only take requests from full members of this workspace, not from guests.")
        if self.restricted_to_listed and author.id not in s.allow_users and not person.groups:
            return Denied("not_allowed", "Sorry, you are not on the list of people who may use me. "
                                         "An admin can add you (ALLOW_USERS or ALLOW_USERGROUPS).")
        return None

    def known_name(self, author: Author) -> str | None:
        """The author's name as their directory last saw it (filled by `check_person`'s lookup)."""
        directory = self._directory(author)
        return directory.known_name(author.id) if directory is not None else None

    def known_email(self, author: Author) -> str | None:
        directory = self._directory(author)
        return directory.known_email(author.id) if directory is not None else None

    def check_rate(self, author: Author) -> Denied | None:
        """At most MAX_PROMPTS_PER_MINUTE prompts a minute each; past it, say when to go on."""
        if self._limiter.hit(self._prompt_rate, "prompts", author.id):
            return None
        reset = self._limiter.get_window_stats(self._prompt_rate, "prompts", author.id).reset_time
        return self._rate_denied(reset)

    def check_shared_rate(self, recent: list[float]) -> Denied | None:
        """The same limit over every instance: `recent` is when this person's prompts of the last
        minute arrived, wherever (with several instances the in-memory window sees one's share)."""
        limit = self.settings.max_prompts_per_minute
        return self._rate_denied(sorted(recent)[-limit] + 60) if len(recent) >= limit else None

    def _rate_denied(self, reset: float) -> Denied:
        wait = max(1, round(reset - time.time()))
        return Denied("rate_limited", f"You've sent {self.settings.max_prompts_per_minute} requests in the last minute; "
                                      f"you can send more in {wait} s.")

    # -- which repositories ------------------------------------------------------------------

    def may_use_repo(self, author: Author, repo: Repo, place: Place) -> bool:
        """`users:` limits who may use a repo anywhere; `channels:` limits which channels it may be
        used in (outside a channel, in a DM or on the web page, only `users:` applies)."""
        if repo.users and author.id not in repo.users:
            return False
        if repo.channels and place.channel_id is not None:
            return any(c in (place.channel_id, place.channel_name) for c in repo.channels if c)
        return True

    def repos_for(self, author: Author, place: Place) -> list[Repo]:
        return [r for r in self.catalog.repos if self.may_use_repo(author, r, place)]

    def needs_channel_name(self) -> bool:
        """A repo restricted to channels by name: the surface must say the channel's name."""
        return self._by_name

    def repo_denied(self, author: Author, repo_name: str, place: Place) -> Denied:
        allowed = [r.name for r in self.repos_for(author, place)]
        where = "here" if place.channel_id else "from here"
        if allowed:
            return Denied("repo_not_allowed", f"You can't use {repo_name} {where}. Repositories you can use {where}: "
                                              f"{', '.join(allowed)}.")
        return Denied("repo_not_allowed", f"You can't use {repo_name} {where}, and there is no repository you can use {where}.")

    # -- in a session ------------------------------------------------------------------------

    def is_admin(self, author: Author) -> bool:
        return author.id in self.settings.admin_users

    def refuse(self, author: Author, denied: Denied) -> Denied:
        """Count and log a refusal: who and why, never what they asked."""
        self.refusals[denied.reason] += 1
        log.info("refused %s (%s): %s", author.id, author.origin.value, denied.reason)
        return denied


def _looks_like_channel_id(value: str) -> bool:
    return value[:1] in ("C", "G", "D") and value.isupper() and value.isalnum() and len(value) >= 9
