"""Sessions' pull requests and the webhook deliveries already applied to them.

A pull request's state only moves forward: a webhook whose `updated_at` is not newer than the
last one applied changes nothing (GitHub may deliver out of order), and each delivery is
applied once (GitHub redelivers)."""

from __future__ import annotations

import time
from typing import Any, cast

from sqlalchemy import CursorResult, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from bot.store.db import Database
from bot.store.tables import GitHubDeliveryRow, PullRequestRow


class PullRequestRecords:
    def __init__(self, db: Database):
        self.db = db

    async def add(self, *, session_id: str, repo: str, number: int, url: str, branch: str, author: str,
                  opened_as: str) -> PullRequestRow:
        row = PullRequestRow(session_id=session_id, repo=repo, number=number, url=url, branch=branch, author=author,
                             opened_as=opened_as, state="open", approvals=0, changes_requested=0,
                             pushes_after_review=0, created_at=time.time())
        async with self.db.session() as s, s.begin():
            s.add(row)
        return row

    async def of_session(self, session_id: str) -> PullRequestRow | None:
        async with self.db.session() as s:
            return (await s.execute(select(PullRequestRow).where(PullRequestRow.session_id == session_id)
                                    .order_by(PullRequestRow.id.desc()).limit(1))).scalar_one_or_none()

    async def find(self, repo: str, number: int) -> PullRequestRow | None:
        async with self.db.session() as s:
            return (await s.execute(select(PullRequestRow).where(
                PullRequestRow.repo == repo, PullRequestRow.number == number))).scalar_one_or_none()

    async def move(self, repo: str, number: int, state: str, updated_at: str) -> bool:
        """Apply a state GitHub reported at `updated_at`, if it is newer than the last applied."""
        values: dict[str, Any] = {"state": state, "gh_updated_at": updated_at}
        if state == "merged":
            values["merged_at"] = time.time()
        elif state == "closed":
            values["closed_at"] = time.time()
        async with self.db.session() as s, s.begin():
            result = cast(CursorResult[Any], await s.execute(
                update(PullRequestRow)
                .where(PullRequestRow.repo == repo, PullRequestRow.number == number,
                       or_(PullRequestRow.gh_updated_at.is_(None), PullRequestRow.gh_updated_at < updated_at))
                .values(**values)))
            return result.rowcount == 1

    async def reviewed(self, repo: str, number: int, state: str) -> None:
        column = {"approved": "approvals", "changes_requested": "changes_requested"}.get(state)
        async with self.db.session() as s, s.begin():
            row = (await s.execute(select(PullRequestRow).where(
                PullRequestRow.repo == repo, PullRequestRow.number == number))).scalar_one_or_none()
            if row is None:
                return
            if column is not None:
                setattr(row, column, getattr(row, column) + 1)
            if row.first_review_at is None:
                row.first_review_at = time.time()

    async def pushed(self, row_id: int) -> None:
        """A push to an open pull request: a revision when it follows the first review."""
        async with self.db.session() as s, s.begin():
            row = await s.get(PullRequestRow, row_id)
            if row is not None and row.first_review_at is not None:
                row.pushes_after_review += 1

    async def first_delivery(self, delivery_id: str) -> bool:
        """True the first time a delivery id is seen."""
        try:
            async with self.db.session() as s, s.begin():
                s.add(GitHubDeliveryRow(delivery_id=delivery_id, received_at=time.time()))
        except IntegrityError:
            return False
        return True

    async def forget_delivery(self, delivery_id: str) -> None:
        """Applying it failed: GitHub's redelivery is applied again."""
        async with self.db.session() as s, s.begin():
            await s.execute(delete(GitHubDeliveryRow).where(GitHubDeliveryRow.delivery_id == delivery_id))
