"""One way in for every surface: a request becomes a started session, a prompt on an existing
one, or a request held until someone picks its repository.

Slack, the web page, App Home, a message shortcut, a parent session and GitHub comments all
call `Intake.submit`; classification, held requests (expiry, resolution by anyone), the warm-up
of the likely repository while the classifier thinks, and "which session does this place belong
to" live here, so a new surface is a thin adapter that parses its input and renders the result.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from bot.events import Author, Origin
from bot.sessions.log import Prompt
from bot.sessions.service import SessionInfo, SessionService, Surface
from bot.store.pending import EXPIRED, STARTED, PendingRequests
from bot.store.tables import PendingRequestRow
from classifier.classify import Classification, Classifier, RequestContext

log = logging.getLogger(__name__)

HELD_ID = re.compile(r"^[0-9a-f]{16}$")
"""The shape of held-request ids (secrets.token_hex(8))."""


@dataclass(frozen=True)
class Hints:
    """What the surface knows about where the request was made; all optional."""

    channel: str | None = None
    """The channel's name (Slack), for channel-mapped repositories."""
    topic: str | None = None
    thread: tuple[str, ...] = ()
    """Earlier messages of the thread, oldest first."""
    repo: str | None = None
    """A repository the person chose explicitly (a picker, a form)."""
    default_repo: str | None = None
    """The person's or place's default, used when nothing else decides."""


@dataclass(frozen=True)
class Request:
    text: str
    author: Author
    """Its `origin` says where the request came from."""
    surface: Surface | None = None
    """The place the session will be bound to (a Slack thread); None for places that bind later (web)."""
    hints: Hints = field(default_factory=Hints)
    more_hints: Callable[[], Awaitable[Hints]] | None = None
    """Costlier hints (a thread's history), fetched only when the cheap ones do not decide."""
    order_key: float | None = None
    parent_id: str | None = None
    new_surface: bool = False
    """The surface was made by this very request (a top-level Slack message is its own thread),
    so no session can be bound to it yet: intake skips looking."""


@dataclass(frozen=True)
class Started:
    session: SessionInfo
    prompt: Prompt
    created: bool
    """False when the prompt went to the session already bound to the surface."""
    classification: Classification | None = None


@dataclass(frozen=True)
class Held:
    """No repository could be decided: someone must pick one of `repos` before `ttl` seconds pass."""

    id: str
    likely: tuple[str, ...]
    repos: tuple[str, ...]
    ttl: float


@dataclass(frozen=True)
class Refused:
    """The request was not taken; `message` tells the person why. Nothing was queued."""

    reason: str
    """empty, too_long, unknown_repo, unknown_request, already_started, expired."""
    message: str


@dataclass(frozen=True)
class HeldRequest:
    """A held request as surfaces see it (to show or update what they asked)."""

    id: str
    author: Author
    text: str
    surface: Surface | None
    status: str
    ui_ref: str | None
    repo: str | None
    picked_by: str | None

    @classmethod
    def from_row(cls, row: PendingRequestRow) -> HeldRequest:
        surface = Surface(row.surface_kind, row.surface_key) if row.surface_kind and row.surface_key else None
        return cls(row.id, Author(id=row.author_id, name=row.author_name, origin=Origin.parse(row.origin)), row.text, surface,
                   row.status, row.ui_ref, row.repo, row.picked_by)


ExpiryObserver = Callable[[HeldRequest], Awaitable[None]]


class Intake:
    def __init__(self, sessions: SessionService, classifier: Classifier | None, pending: PendingRequests,
                 max_prompt_chars: int):
        self.sessions = sessions
        self.classifier = classifier
        self.pending = pending
        self.max_prompt_chars = max_prompt_chars
        self._expiry_observers: list[ExpiryObserver] = []

    @property
    def ttl(self) -> float:
        return self.pending.ttl

    async def find(self, surface: Surface) -> SessionInfo | None:
        """The session this place belongs to, if any."""
        return await self.sessions.find_by_surface(surface)

    async def submit(self, request: Request) -> Started | Held | Refused:
        text = request.text.strip()
        if not text:
            return Refused("empty", "There is no request in that message.")
        if len(text) > self.max_prompt_chars:
            return Refused("too_long", f"That message is {len(text):,} characters long; I take up to {self.max_prompt_chars:,}. "
                                       "Please shorten it (a link to a file or a gist works well) and send it again.")
        request = replace(request, text=text)
        existing = await self.find(request.surface) if request.surface is not None and not request.new_surface else None
        if existing is not None:
            prompt = await self.sessions.submit(existing.id, text, request.author, request.order_key)
            return Started(existing, prompt, created=False)
        decision = await self._classify(request)
        if isinstance(decision, Refused):
            return decision
        if decision is not None and decision.repo is None:
            return await self._hold(request, decision)
        return await self._start(request, decision.repo if decision else None, decision)

    async def pick(self, held_id: str, repo: str, by: Author) -> Started | Refused:
        """Someone picked the repository of a held request: start it with its original text and author."""
        if self.classifier is None or self.classifier.catalog.get(repo) is None:
            return Refused("unknown_repo", "I don't know that repository.")
        row = await self.pending.pick(held_id, repo, by.id) if HELD_ID.match(held_id) else None
        if row is None:
            current = await self.pending.get(held_id) if HELD_ID.match(held_id) else None
            if current is None:
                return Refused("unknown_request", "I can't find that request any more.")
            if current.status == STARTED:
                return Refused("already_started", f"Someone already picked {current.repo} for this request.")
            if current.status != EXPIRED:
                await self.expire_due()
            return Refused("expired", "That request expired before anyone picked a repository; please ask again.")
        held = HeldRequest.from_row(row)
        classification = Classification(repo, 1.0, (), f"picked by {by.id}", "picked")
        try:
            return await self._start(Request(held.text, held.author, held.surface, order_key=row.order_key), repo, classification)
        except BaseException:
            await self.pending.release(held_id)  # not lost: the next pick starts it
            raise

    async def set_ui_ref(self, held_id: str, ref: str) -> None:
        """Remember what the surface showed to ask (e.g. its message), to update it later."""
        await self.pending.set_ui_ref(held_id, ref)

    def on_expired(self, observer: ExpiryObserver) -> None:
        self._expiry_observers.append(observer)

    async def expire_due(self) -> int:
        """Expire requests nobody picked in time and tell their surfaces (a scheduled job)."""
        rows = await self.pending.expire_due()
        for row in rows:
            for observer in self._expiry_observers:
                try:
                    await observer(HeldRequest.from_row(row))
                except Exception:
                    log.exception("telling a surface about an expired request failed")
        return len(rows)

    # -- internals ----------------------------------------------------------------------

    async def _classify(self, request: Request) -> Classification | Refused | None:
        """The repository, None when there is nothing to choose from, or a Classification asking."""
        classifier = self.classifier
        if classifier is None:
            return None
        hints = request.hints
        if hints.repo is not None:
            if classifier.catalog.get(hints.repo) is None:
                return Refused("unknown_repo", f"I don't know the repository {hints.repo}.")
            return Classification(hints.repo, 1.0, (), "chosen by the person", "chosen")
        if len(classifier.catalog) == 1:  # nothing to decide: skip gathering context
            return await classifier.classify(RequestContext(request.text))
        if request.more_hints is not None:
            hints = _merge_hints(hints, await request.more_hints())
        ctx = RequestContext(request.text, list(hints.thread), hints.channel, hints.topic)
        decided = classifier.decide_by_rules(ctx)
        if decided is not None:
            return decided  # the session acquires its own sandbox: nothing extra to warm
        if hints.default_repo and classifier.catalog.get(hints.default_repo):
            return Classification(hints.default_repo, 0.8, (), "the default repository here", "default")
        ctx = replace(ctx, recent_repos=await self.sessions.recent_repos(request.author.id))
        self.sessions.warm(classifier.likeliest(ctx))  # warm while the model thinks
        return await classifier.classify(ctx)

    async def _hold(self, request: Request, decision: Classification) -> Held:
        assert self.classifier is not None
        surface = request.surface
        row = await self.pending.hold(
            origin=request.author.origin.value, author_id=request.author.id, author_name=request.author.name,
            text=request.text, surface_kind=surface.kind if surface else None, surface_key=surface.key if surface else None,
            order_key=request.order_key,
        )
        repos = tuple(r.name for r in self.classifier.catalog.repos)
        return Held(row.id, decision.alternatives, repos, self.pending.ttl)

    async def _start(self, request: Request, repo: str | None, decision: Classification | None) -> Started:
        session = await self.sessions.open(request.author.origin, request.author, repo, request.surface, request.parent_id)
        prompt = await self.sessions.submit(session.id, request.text, request.author, request.order_key)
        return Started(session, prompt, created=True, classification=decision)


def _merge_hints(first: Hints, more: Hints) -> Hints:
    return Hints(
        channel=first.channel or more.channel, topic=first.topic or more.topic, thread=first.thread or more.thread,
        repo=first.repo or more.repo, default_repo=first.default_repo or more.default_repo,
    )
