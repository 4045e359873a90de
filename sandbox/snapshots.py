"""The sandbox layer's own record of session snapshots: which image holds a session's sandbox
as of its last finished turn (with a disk, the image names the disk that holds its workspace and
HOME). It lives in `sandbox_snapshots`, not on the session row, so the sandbox layer never writes
the sessions layer's records."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ColumnElement, delete, or_, select, true

from bot.store.db import Database
from bot.store.tables import SandboxSnapshotRow


class SnapshotRecords:
    """Records are shared by every instance of a deployment; a snapshot image is in one engine's
    store, so collection and eviction look only at this engine's (and at records from before
    engines were recorded)."""

    def __init__(self, db: Database, engine: str | None = None):
        self.db = db
        self.engine = engine

    def _here(self) -> ColumnElement[bool]:
        column = SandboxSnapshotRow.engine
        return or_(column == self.engine, column.is_(None)) if self.engine else true()

    async def image(self, session_id: str) -> str | None:
        async with self.db.session() as s:
            return (await s.execute(select(SandboxSnapshotRow.image).where(SandboxSnapshotRow.session_id == session_id))).scalar()

    async def record(self, session_id: str, repo: str, image: str) -> str | None:
        """Point the session at `image`; returns the image it replaces, if any."""
        async with self.db.session() as s, s.begin():
            row = await s.get(SandboxSnapshotRow, session_id)
            old = row.image if row else None
            if row is None:
                s.add(SandboxSnapshotRow(session_id=session_id, repo=repo, image=image, updated_at=datetime.now(UTC),
                                         engine=self.engine))
            else:
                mine = row.engine in (None, self.engine)
                row.image, row.repo, row.updated_at, row.engine = image, repo, datetime.now(UTC), self.engine
                old = old if mine else None  # an image in another engine: not ours to remove
        return old

    async def older_than(self, cutoff: datetime) -> list[SandboxSnapshotRow]:
        async with self.db.session() as s:
            query = select(SandboxSnapshotRow).where(SandboxSnapshotRow.updated_at < cutoff, self._here())
            return list((await s.execute(query)).scalars())

    async def oldest_first(self) -> list[SandboxSnapshotRow]:
        """Every record, least recently used first (the order of eviction)."""
        async with self.db.session() as s:
            query = (select(SandboxSnapshotRow).where(self._here())
                     .order_by(SandboxSnapshotRow.updated_at, SandboxSnapshotRow.session_id))
            return list((await s.execute(query)).scalars())

    async def all(self) -> list[SandboxSnapshotRow]:
        return await self.oldest_first()

    async def forget(self, session_id: str, image: str) -> None:
        """Drop the record, unless a newer snapshot replaced `image` meanwhile."""
        async with self.db.session() as s, s.begin():
            await s.execute(delete(SandboxSnapshotRow).where(SandboxSnapshotRow.session_id == session_id,
                                                             SandboxSnapshotRow.image == image))
