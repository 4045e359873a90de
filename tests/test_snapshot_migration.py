"""Migration 0005 moves session snapshots into the sandbox layer's own table, without loss, on a
database the previous head created; and back."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import inspect, text

from bot.store.db import Database

SESSION = ("INSERT INTO sessions (id, share_token, status, repo, origin, snapshot_image, updated_at) "
           "VALUES (:id, :token, 'idle', :repo, 'slack', :image, :at)")


async def columns(db: Database, table: str) -> set[str]:
    async with db.engine.connect() as conn:
        return {c["name"] for c in await conn.run_sync(lambda c: inspect(c).get_columns(table))}


async def rows(db: Database, query: str) -> list[tuple[object, ...]]:
    async with db.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(query))).all()]


async def check_0005(url: str) -> None:
    db = Database(url)
    try:
        await db.upgrade("0003")
        async with db.engine.begin() as conn:
            for sid, image in (("a" * 16, "hosted-agents/session-a:1"), ("b" * 16, None)):
                await conn.execute(text(SESSION), {"id": sid, "token": sid * 2, "repo": "acme/api", "image": image,
                                                   "at": datetime(2026, 11, 30, 10, tzinfo=UTC)})
            await conn.execute(text("INSERT INTO turns (session_id, prompt_id, started_at) VALUES (:s, 1, 0)"), {"s": "a" * 16})

        await db.upgrade()
        assert "snapshot_image" not in await columns(db, "sessions")
        moved = await rows(db, "SELECT session_id, image, repo, updated_at FROM sandbox_snapshots")
        assert [m[:3] for m in moved] == [("a" * 16, "hosted-agents/session-a:1", "acme/api")]
        assert str(moved[0][3]).startswith("2026-11-30 10:00:00"), "it keeps the session's last activity as its age"
        assert await rows(db, "SELECT count(*) FROM turns") == [(1,)], "dropping the column touched no other table"
        assert len(await rows(db, "SELECT id FROM sessions")) == 2

        await db.downgrade("0003")
        assert "sandbox_snapshots" not in await tables(db)
        back = await rows(db, "SELECT id, snapshot_image FROM sessions ORDER BY id")
        assert back == [("a" * 16, "hosted-agents/session-a:1"), ("b" * 16, None)]
        assert await rows(db, "SELECT count(*) FROM turns") == [(1,)]
    finally:
        await db.close()


async def tables(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_0005_on_sqlite(tmp_path):
    await check_0005(f"sqlite+aiosqlite:///{tmp_path / 'central.db'}")


async def test_0005_on_postgresql(pg_url):
    await check_0005(pg_url.replace("postgresql://", "postgresql+asyncpg://"))
