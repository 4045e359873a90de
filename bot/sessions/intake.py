"""One way in for every surface: a request becomes a started session, a prompt on an existing
one, or a request held until someone picks its repository.

Slack, the web page, App Home, a message shortcut, a parent session and GitHub comments all
call `Intake.submit`; classification, held requests (expiry, resolution by anyone), the warm-up
of the likely repository while the classifier thinks, "which session does this place belong
to", and the access rules (who may ask, on which repository, who may prompt or stop a session,
how often) live here, so a new surface is a thin adapter that parses its input and renders the
result. A refusal queues nothing, starts no sandbox and calls no model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from bot.config import Settings
from bot.events import Author, Origin, Overheard, ParticipantsAdded
from bot.github.webhooks import CommentAdded, WebhookEvent
from bot.repos import Repo
from bot.sessions.access import Access, Denied, Place
from bot.sessions.log import Prompt
from bot.sessions.pull_requests import Opened, PullRequestRefused, PullRequests
from bot.sessions.service import SessionInfo, SessionService, Surface
from bot.store.pending import EXPIRED, STARTED, PendingRequests
from bot.store.tables import PendingRequestRow
from bot.store.warm_ups import RepoDefaults, WarmUps
from classifier.classify import Classification, Classifier, RequestContext

log = logging.getLogger(__name__)

HELD_ID = re.compile(r"^[0-9a-f]{16}$")
NOWHERE = Place()
"""Outside any channel: a DM, the Home tab, the web."""
"""The shape of held-request ids (secrets.token_hex(8))."""


@dataclass(frozen=True)
class Hints:
    """What the surface knows about where the request was made; all optional."""

    channel_id: str | None = None
    """The channel's id (Slack); None in a DM or on the web."""
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
    mentions: tuple[str, ...] = ()
    """People the text names (Slack user ids): the session's starter adds them as participants."""
    session_id: str | None = None
    """The session this prompt is for, when the surface names it directly (its web page)."""


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
    """empty, too_long, unknown_repo, unknown_request, already_started, expired, nothing_running, and
    the access rules' reasons (bot/sessions/access.py: guest, external, repo_not_allowed, ...)."""
    message: str

    @classmethod
    def denied(cls, denied: Denied) -> Refused:
        return cls(denied.reason, denied.message)


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
    place: Place = field(default_factory=Place)

    @classmethod
    def from_row(cls, row: PendingRequestRow) -> HeldRequest:
        surface = Surface(row.surface_kind, row.surface_key) if row.surface_kind and row.surface_key else None
        return cls(row.id, Author(id=row.author_id, name=row.author_name, origin=Origin.parse(row.origin)), row.text, surface,
                   row.status, row.ui_ref, row.repo, row.picked_by, Place(row.channel_id, row.channel_name))


ExpiryObserver = Callable[[HeldRequest], Awaitable[None]]


class Intake:
    def __init__(self, sessions: SessionService, classifier: Classifier | None, pending: PendingRequests,
                 settings: Settings, access: Access, pull_requests: PullRequests | None = None,
                 warm_ups: WarmUps | None = None, defaults: RepoDefaults | None = None):
        self.sessions = sessions
        self.classifier = classifier
        self.pending = pending
        self.settings = settings
        self.max_prompt_chars = settings.max_prompt_chars
        self.access = access
        self.pull_requests = pull_requests
        self.warm_ups = warm_ups
        self.defaults = defaults
        self._expiry_observers: list[ExpiryObserver] = []

    @property
    def ttl(self) -> float:
        return self.pending.ttl

    async def find(self, surface: Surface) -> SessionInfo | None:
        """The session this place belongs to, if any."""
        return await self.sessions.find_by_surface(surface)

    async def submit(self, request: Request) -> Started | Held | Refused:
        author = request.author
        text = request.text.strip()
        if not text:
            return Refused("empty", "There is no request in that message.")
        if len(text) > self.max_prompt_chars:
            return self._refuse(author, Refused("too_long", f"That message is {len(text):,} characters long; I take up to "
                                f"{self.max_prompt_chars:,}. Please shorten it (a link to a file or a gist works well) "
                                "and send it again."))
        if denied := await self.access.check_person(author) or self.access.check_rate(author) or \
                await self._check_shared_rate(author):
            return self._refuse(author, Refused.denied(denied))
        if author.name is None or author.email is None:  # for people reading the session elsewhere, and commits
            author = author.model_copy(update={"name": author.name or self.access.known_name(author),
                                               "email": author.email or self.access.known_email(author)})
        request = replace(request, text=text, author=author)
        if request.session_id is not None:
            existing = await self.sessions.get(request.session_id)
            if existing is None:
                return Refused("unknown_session", "I can't find that session any more.")
        else:
            existing = await self.find(request.surface) if request.surface is not None and not request.new_surface else None
        if existing is not None:
            if denied := await self._may_prompt(existing, request):
                return self._refuse(author, Refused.denied(denied))
            prompt = await self.sessions.submit(existing.id, text, author, request.order_key)
            await self._add_participants(existing, request)
            return Started(existing, prompt, created=False)
        if self.access.needs_channel_name() and request.hints.channel_id and not request.hints.channel and request.more_hints:
            request = replace(request, hints=_merge_hints(request.hints, await request.more_hints()), more_hints=None)
        decision = await self._classify(request)
        if isinstance(decision, Refused):
            return self._refuse(author, decision)
        if decision is not None and decision.repo is None:
            return await self._hold(request, decision)
        started = await self._start(request, decision.repo if decision else None, decision)
        await self._add_participants(started.session, request)
        return started

    async def pick(self, held_id: str, repo: str, by: Author) -> Started | Refused:
        """Someone picked the repository of a held request: start it with its original text and author.
        Both the picker and the author must be allowed on that repository where it was asked."""
        configured = self.classifier.catalog.get(repo) if self.classifier is not None else None
        if configured is None:
            return self._refuse(by, Refused("unknown_repo", "I don't know that repository."))
        if denied := await self.access.check_person(by):
            return self._refuse(by, Refused.denied(denied))
        current = await self.pending.get(held_id) if HELD_ID.match(held_id) else None
        if current is not None:
            held = HeldRequest.from_row(current)
            for person in (by, held.author):
                if not self.access.may_use_repo(person, configured, held.place):
                    return self._refuse(by, Refused.denied(self.access.repo_denied(person, repo, held.place)))
        row = await self.pending.pick(held_id, repo, by.id) if current is not None else None
        if row is None:
            current = await self.pending.get(held_id) if current is not None else None
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
            hints = Hints(channel_id=held.place.channel_id, channel=held.place.channel_name)
            return await self._start(Request(held.text, held.author, held.surface, hints, order_key=row.order_key),
                                     repo, classification)
        except BaseException:
            await self.pending.release(held_id)  # not lost: the next pick starts it
            raise

    async def stop(self, session_id: str, by: Author) -> Refused | None:
        """Stop the running turn: its prompter, the session's starter or an admin may."""
        info = await self.sessions.get(session_id)
        if info is None:
            return Refused("unknown_session", "I can't find that session any more.")
        if denied := await self._may_control(info, by, "stop it"):
            return self._refuse(by, Refused.denied(denied))
        stopped = await self.sessions.stop(session_id, by=by.id)
        if not await self.sessions.stop_descendants(session_id, by=by.id) and not stopped:  # its sub-sessions too
            return Refused("nothing_running", "Nothing is running in this session right now.")
        return None

    async def clear_queue(self, session_id: str, by: Author) -> Refused | int:
        """Drop the queued prompts: the running turn's prompter, the session's starter or an admin may."""
        info = await self.sessions.get(session_id)
        if info is None:
            return Refused("unknown_session", "I can't find that session any more.")
        if denied := await self._may_control(info, by, "clear its queue"):
            return self._refuse(by, Refused.denied(denied))
        count = await self.sessions.clear_queue(session_id, by=by.id)
        return count if count else Refused("queue_empty", "The queue is already empty.")

    async def overhear(self, surface: Surface, author: Author, text: str, mentions: tuple[str, ...] = ()) -> bool:
        """People talking to each other in a session's thread: kept as context for the agent's next
        turn (not queued, not answered). Only from people who may use the bot. The starter naming
        someone there still adds them (SESSION_PROMPTERS=participants)."""
        info = await self.find(surface)
        if info is None or not text.strip() or len(text) > self.max_prompt_chars:
            return False
        if await self.access.check_person(author):
            return False
        self.sessions.emit(info.id, Overheard(author=author, text=text.strip()))
        await self._add_participants(info, Request(text, author, surface, mentions=mentions))
        return True

    async def warm(self, session_id: str, by: Author, trigger: str) -> str | None:
        """Someone is typing a prompt for this session: prepare its sandbox now, if they may prompt it.
        Returns what was done (see `WarmUp.action`), or None when nothing was."""
        info = await self.sessions.get(session_id)
        if info is None or info.repo is None:
            return None
        if await self.access.check_person(by) or await self._may_prompt(info, Request("", by)):
            return None
        action = await self.sessions.warm_session(session_id, trigger)
        if action == "started" and self.warm_ups is not None:
            await self.warm_ups.record(trigger, info.repo, by.id)
            await self.warm_ups.claim(by.id, info.repo, session_id)
        return action

    async def predict_repo(self, author: Author, text: str, place: Place = NOWHERE) -> str | None:
        """The repository a request being typed is likeliest about, among those the person may use
        there: what the rules decide on the text so far, else the place's default, else the person's
        latest repository, else the only one they may use."""
        allowed = [r.name for r in self.access.repos_for(author, place)]
        if not allowed:
            return None
        if self.classifier is not None and text.strip():
            decided = self.classifier.decide_by_rules(RequestContext(text, channel=place.channel_name))
            if decided is not None and decided.repo in allowed:
                return decided.repo
        default = await self.default_repo(place)
        if default in allowed:
            return default
        recent = next((r for r in await self.sessions.recent_repos(author.id) if r in allowed), None)
        return recent or (allowed[0] if len(allowed) == 1 else None)

    async def warm_for(self, author: Author, text: str, trigger: str, place: Place = NOWHERE,
                       previous: str | None = None) -> str | None:
        """Someone is typing a request (App Home composer, agent pane): warm a container for its
        likeliest repository, and again for another one when the text comes to name it. Returns
        the repository aimed at; nothing is warmed again while it stays the same."""
        if await self.access.check_person(author):
            return None
        repo = await self.predict_repo(author, text, place)
        if repo is not None and repo != previous:
            self.sessions.warm(repo)
            if self.warm_ups is not None:
                await self.warm_ups.record(trigger, repo, author.id)
        return repo

    async def default_repo(self, place: Place) -> str | None:
        """The repository set for this place (`@bot set repo owner/repo` in a channel)."""
        if self.defaults is None or place.channel_id is None:
            return None
        return await self.defaults.get(place.channel_id)

    async def set_default_repo(self, place: Place, repo: str, by: Author) -> Refused | None:
        """Set a channel's default repository: someone who may use that repository there may."""
        configured = self.access.catalog.get(repo)
        if configured is None:
            return Refused("unknown_repo", f"I don't know the repository {repo}.")
        if place.channel_id is None or self.defaults is None:
            return Refused("no_place", "A default repository is set in a channel.")
        if denied := await self.access.check_person(by):
            return self._refuse(by, Refused.denied(denied))
        if not self.access.may_use_repo(by, configured, place):
            return self._refuse(by, Refused.denied(self.access.repo_denied(by, repo, place)))
        await self.defaults.set(place.channel_id, configured.name, by.id)
        return None

    def warm_repo(self, repo: str, by: Author) -> bool:
        """Someone is typing a new request for this repository: have a warm container ready."""
        configured = self.access.catalog.get(repo)
        if configured is None or not self.access.may_use_repo(by, configured, Place()):
            return False
        self.sessions.warm(repo)
        return True

    def repos_for(self, author: Author) -> list[Repo]:
        """The repositories this person may start a session on outside a channel (the web)."""
        return self.access.repos_for(author, Place())

    async def open_pull_request(self, session_id: str, by: Author, title: str | None = None, body: str | None = None,
                                as_app: bool = False) -> Opened | Refused:
        """Commit, push and open the session's PR in `by`'s name: anyone who may prompt the session may."""
        info = await self.sessions.get(session_id)
        if info is None:
            return Refused("unknown_session", "I can't find that session any more.")
        if denied := await self.access.check_person(by) or await self._may_prompt(info, Request("", by)):
            return self._refuse(by, Refused.denied(denied))
        if self.pull_requests is None:
            return Refused("not_configured", "Pull requests are not set up here (GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY).")
        try:
            return await self.pull_requests.open(session_id, by, title, body, as_app)
        except PullRequestRefused as exc:
            return Refused(exc.reason, exc.message)

    async def github_event(self, event: WebhookEvent, mention: str) -> None:
        """A webhook about a pull request: its session hears of it; a comment that names `mention`
        (the App, e.g. `@hosted-agents`) is a prompt from its author's linked Slack account."""
        if self.pull_requests is None:
            return
        row = await self.pull_requests.apply(event)
        if row is None or not isinstance(event, CommentAdded) or event.is_bot or mention.lower() not in event.body.lower():
            return
        linked = await self.pull_requests.slack_user(event.author_id)
        if linked is None:  # the access rules know people by their Slack account
            self.access.refuse(Author(id=f"github:{event.author}", origin=Origin.GITHUB),
                               Denied("not_linked", "a GitHub account linked to nobody in Slack"))
            return
        author = Author(id=linked, name=event.author, origin=Origin.GITHUB)
        await self.submit(Request(event.body.replace(mention, "").strip(), author, session_id=row.session_id))

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
        """The repository, None when there is nothing to choose from, or a Classification asking.
        Only repositories the person may use where they asked are chosen or offered."""
        classifier = self.classifier
        if classifier is None:
            return None
        author, hints = request.author, request.hints
        place = Place(hints.channel_id, hints.channel)
        allowed = self.access.repos_for(author, place)
        if hints.repo is not None:
            if classifier.catalog.get(hints.repo) is None:
                return Refused("unknown_repo", f"I don't know the repository {hints.repo}.")
            return self._allowed(Classification(hints.repo, 1.0, (), "chosen by the person", "chosen"), allowed, place, author)
        if not allowed:
            return Refused.denied(self.access.repo_denied(author, "any repository", place))
        if len(classifier.catalog) == 1:  # nothing to decide: skip gathering context
            return await classifier.classify(RequestContext(request.text))
        if request.more_hints is not None:
            hints = _merge_hints(hints, await request.more_hints())
        ctx = RequestContext(request.text, list(hints.thread), hints.channel, hints.topic)
        decided = classifier.decide_by_rules(ctx)
        if decided is not None:
            return self._allowed(decided, allowed, place, author)  # the session acquires its own sandbox
        if not hints.default_repo:
            hints = replace(hints, default_repo=await self.default_repo(place))
        if hints.default_repo and any(r.name == hints.default_repo for r in allowed):
            return Classification(hints.default_repo, 0.8, (), "the default repository here", "default")
        if len(allowed) == 1:
            return Classification(allowed[0].name, 0.9, (), "the only repository you can use here", "only-allowed")
        ctx = replace(ctx, recent_repos=await self.sessions.recent_repos(author.id))
        guess = classifier.likeliest(ctx)
        self.sessions.warm(guess)  # warm while the model thinks
        if guess and self.warm_ups is not None:
            self.sessions.background(self.warm_ups.record("channel_guess", guess, author.id))
        return self._allowed(await classifier.classify(ctx), allowed, place, author)

    def _allowed(self, decision: Classification, allowed: list[Repo], place: Place, author: Author) -> Classification | Refused:
        """A decision the person may act on: a repository they named but may not use is refused
        (with the ones they may); one the rules or the model guessed becomes a question."""
        names = [r.name for r in allowed]
        if decision.repo is None or decision.repo in names:
            return replace(decision, alternatives=tuple(a for a in decision.alternatives if a in names))
        if decision.source in NAMED:
            return Refused.denied(self.access.repo_denied(author, decision.repo, place))
        return Classification(None, 0.0, tuple(names[:5]), f"{decision.repo} is not allowed here", "ask")

    async def _hold(self, request: Request, decision: Classification) -> Held:
        assert self.classifier is not None
        surface = request.surface
        hints = request.hints
        row = await self.pending.hold(
            origin=request.author.origin.value, author_id=request.author.id, author_name=request.author.name,
            text=request.text, surface_kind=surface.kind if surface else None, surface_key=surface.key if surface else None,
            order_key=request.order_key, channel_id=hints.channel_id, channel_name=hints.channel,
        )
        repos = tuple(r.name for r in self.access.repos_for(request.author, Place(hints.channel_id, hints.channel)))
        return Held(row.id, decision.alternatives, repos, self.pending.ttl)

    async def _start(self, request: Request, repo: str | None, decision: Classification | None) -> Started:
        session = await self.sessions.open(request.author.origin, request.author, repo, request.surface, request.parent_id,
                                           title=request.text)
        if self.warm_ups is not None and session.repo:  # the warm-up this session may have been typed behind
            self.sessions.background(self.warm_ups.claim(request.author.id, session.repo, session.id))
        prompt = await self.sessions.submit(session.id, request.text, request.author, request.order_key)
        return Started(session, prompt, created=True, classification=decision)


    async def _may_prompt(self, info: SessionInfo, request: Request) -> Denied | None:
        """SESSION_PROMPTERS: `repo`, anyone allowed on the session's repository here; `participants`,
        its starter and the people they added. Admins may always."""
        author = request.author
        if author.id == info.creator or self.access.is_admin(author):
            return None
        if self.settings.session_prompters == "participants":
            if author.id in await self.sessions.participants(info.id):
                return None
            starter = Author(id=info.creator, origin=info.origin).handle if info.creator else "its starter"
            return Denied("not_participant", f"Only the people taking part in this session can prompt it; {starter} "
                                             "can add you by mentioning you in a message to me in this thread.")
        repo = self.access.catalog.get(info.repo) if info.repo else None
        place = Place(request.hints.channel_id, request.hints.channel)
        if repo is not None and not self.access.may_use_repo(author, repo, place):
            return self.access.repo_denied(author, repo.name, place)
        return None

    async def _add_participants(self, info: SessionInfo, request: Request) -> None:
        """People the starter mentions take part in the session (SESSION_PROMPTERS=participants)."""
        if self.settings.session_prompters != "participants" or request.author.id != info.creator:
            return
        added = await self.sessions.add_participants(info.id, set(request.mentions) - {request.author.id}, by=request.author.id)
        if added:
            self.sessions.emit(info.id, ParticipantsAdded(people=sorted(added), by=request.author.id))

    async def _check_shared_rate(self, author: Author) -> Denied | None:
        """MAX_PROMPTS_PER_MINUTE across instances (PostgreSQL), from the prompts the database holds."""
        recent = await self.sessions.recent_prompt_times(author.id, 60)
        return self.access.check_shared_rate(recent) if recent is not None else None

    async def _may_control(self, info: SessionInfo, by: Author, what: str) -> Denied | None:
        if denied := await self.access.check_person(by):
            return denied
        if by.id == info.creator or self.access.is_admin(by) or by.id == await self.sessions.turn_author(info.id):
            return None
        return Denied("not_yours", f"Only the person whose request is running, the one who started this session, "
                                   f"or an admin can {what}.")

    def _refuse(self, author: Author, refused: Refused) -> Refused:
        self.access.refuse(author, Denied(refused.reason, refused.message))
        return refused


NAMED = frozenset({"override", "explicit", "chosen"})
"""Classification sources where the person named the repository themselves."""


def _merge_hints(first: Hints, more: Hints) -> Hints:
    return Hints(
        channel_id=first.channel_id or more.channel_id, channel=first.channel or more.channel,
        topic=first.topic or more.topic, thread=first.thread or more.thread,
        repo=first.repo or more.repo, default_repo=first.default_repo or more.default_repo,
    )
