"""GitHub webhooks: the signature is checked (constant time) before anything reads the body, and
the few events the service follows are turned into small typed records.

Deliveries may come twice (`X-GitHub-Delivery` says which) and out of order (a pull request's
`updated_at` says which state is newer); both are the caller's to apply (bot/sessions/pull_requests.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """`X-Hub-Signature-256: sha256=<hex HMAC of the raw body>`."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256="))


@dataclass(frozen=True, slots=True)
class PullRequestChanged:
    """`pull_request`: opened, synchronize (a push), closed (merged or not), reopened, ..."""

    repo: str
    number: int
    action: str
    state: str
    """`open`, `closed` or `merged`."""
    updated_at: str
    head_ref: str
    url: str


@dataclass(frozen=True, slots=True)
class ReviewSubmitted:
    repo: str
    number: int
    state: str
    """`approved`, `changes_requested` or `commented`."""
    reviewer: str
    submitted_at: str
    url: str


@dataclass(frozen=True, slots=True)
class CommentAdded:
    """A comment on a pull request (conversation or review comment)."""

    repo: str
    number: int
    author: str
    author_id: int
    body: str
    url: str
    is_bot: bool


WebhookEvent = PullRequestChanged | ReviewSubmitted | CommentAdded


class BadPayload(Exception):
    pass


def parse(event: str, body: bytes) -> WebhookEvent | None:
    """The event as a record, None for events and actions that are not followed; BadPayload when the
    body is not what GitHub documents."""
    try:
        payload = json.loads(body)
        return _parse(event, payload)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadPayload(f"{event}: {type(exc).__name__}") from None


def _parse(event: str, p: dict[str, Any]) -> WebhookEvent | None:
    repo = str(p["repository"]["full_name"]) if "repository" in p else ""
    if event == "pull_request":
        pr = p["pull_request"]
        state = "merged" if pr.get("merged") else str(pr["state"])
        return PullRequestChanged(repo, int(pr["number"]), str(p["action"]), state, str(pr["updated_at"]),
                                  str(pr["head"]["ref"]), str(pr["html_url"]))
    if event == "pull_request_review" and p.get("action") == "submitted":
        review = p["review"]
        return ReviewSubmitted(repo, int(p["pull_request"]["number"]), str(review["state"]).lower(),
                               str(review["user"]["login"]), str(review.get("submitted_at") or ""),
                               str(review.get("html_url") or p["pull_request"]["html_url"]))
    if event == "issue_comment" and p.get("action") == "created" and p["issue"].get("pull_request"):
        comment = p["comment"]
        return CommentAdded(repo, int(p["issue"]["number"]), str(comment["user"]["login"]), int(comment["user"]["id"]),
                            str(comment["body"]), str(comment["html_url"]), comment["user"].get("type") == "Bot")
    if event == "pull_request_review_comment" and p.get("action") == "created":
        comment = p["comment"]
        return CommentAdded(repo, int(p["pull_request"]["number"]), str(comment["user"]["login"]),
                            int(comment["user"]["id"]), str(comment["body"]), str(comment["html_url"]),
                            comment["user"].get("type") == "Bot")
    return None
