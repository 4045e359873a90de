"""The sandbox layer's own record of session snapshots: which image holds a session's sandbox
as of its last finished turn (with a disk, the image names the disk that holds its workspace and
HOME). It lives in `sandbox_snapshots`, not on the session row, so the sandbox layer never writes
the sessions layer's records."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select

from bot.store.db import Database
from bot.store.tables import SandboxSnapshotRow


class SnapshotRecords:
    def __init__(self, db: Database):
        self.db = db

    async def image(self, session_id: str) -> str | None:
        async with self.db.session() as s:
            return (await s.execute(select(SandboxSnapshotRow.image).where(SandboxSnapshotRow.session_id == session_id))).scalar()

    async def record(self, session_id: str, repo: str, image: str) -> str | None:
        """Point the session at `image`; returns the image it replaces, if any."""
        async with self.db.session() as s, s.begin():
            row = await s.get(SandboxSnapshotRow, session_id)
            old = row.image if row else None
            if row is None:
                s.add(SandboxSnapshotRow(session_id=session_id, repo=repo, image=image, updated_at=datetime.now(UTC)))
            else:
                row.image, row.repo, row.updated_at = image, repo, datetime.now(UTC)
        return old

    async def older_than(self, cutoff: datetime) -> list[SandboxSnapshotRow]:
        async with self.db.session() as s:
            query = select(SandboxSnapshotRow).where(SandboxSnapshotRow.updated_at < cutoff)
            return list((await s.execute(query)).scalars())

    async def oldest_first(self) -> list[SandboxSnapshotRow]:
        """Every record, least recently used first (the order of eviction)."""
        async with self.db.session() as s:
            query = select(SandboxSnapshotRow).order_by(SandboxSnapshotRow.updated_at, SandboxSnapshotRow.session_id)
            return list((await s.execute(query)).scalars())

    async def all(self) -> list[SandboxSnapshotRow]:
        return await self.oldest_first()

    async def forget(self, session_id: str, image: str) -> None:
        """Drop the record, unless a newer snapshot replaced `image` meanwhile."""
        async with self.db.session() as s, s.begin():
            await s.execute(delete(SandboxSnapshotRow).where(SandboxSnapshotRow.session_id == session_id,
                                                             SandboxSnapshotRow.image == image))
