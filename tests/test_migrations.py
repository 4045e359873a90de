"""The Alembic migrations build exactly the schema the code uses, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from bot.store.db import Database
from bot.store.tables import Base, TurnRow
from tests.conftest import make_settings, service_env
from tests.fakes.openai import Reply


async def tables(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def schema_diff(db: Database) -> list:
    async with db.engine.connect() as conn:
        return await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))


async def check_upgrade_downgrade_upgrade(database_url: str) -> None:
    db = Database(database_url)
    try:
        await db.upgrade()
        expected = {"sessions", "slack_events", "turns", "images", "pool_entries", "pending_requests", "alembic_version"}
        assert expected <= await tables(db)
        assert await schema_diff(db) == []
        await db.upgrade()  # idempotent, as at every start
        await db.downgrade("base")
        assert await tables(db) <= {"alembic_version"}
        await db.upgrade()
        assert await schema_diff(db) == []
    finally:
        await db.close()


async def test_migrations_on_sqlite(tmp_path):
    await check_upgrade_downgrade_upgrade(f"sqlite+aiosqlite:///{tmp_path / 'central.db'}")


async def test_migrations_on_postgresql(pg_url):
    await check_upgrade_downgrade_upgrade(pg_url.replace("postgresql://", "postgresql+asyncpg://"))


async def test_a_whole_session_runs_on_postgresql(tmp_path, pg_url, slack, model):
    from bot.service import Service

    svc = Service(make_settings(service_env(tmp_path / "data", slack, model, database_url=pg_url)))
    await svc.start()
    try:
        await asyncio.wait_for(slack.connected.wait(), 10)
        model.add(Reply(text="hello from postgres"))
        root = await slack.mention("U0ALICE1", "hi")
        await slack.wait_for(
            lambda: slack.bot_messages(thread_ts=root) and "Done" in slack.bot_messages(thread_ts=root)[0].rendered()
        )
        session = await svc.sessions.find_by_thread("C0000001", root)
        assert session is not None and session.creator == "U0ALICE1"
        await asyncio.sleep(0.3)  # the turn metric is written in the background
        async with svc.db.session() as s:
            turns = (await s.execute(select(TurnRow))).scalars().all()
        assert [(t.session_id, t.outcome) for t in turns] == [(session.id, "done")]
        assert turns[0].first_token_ms is not None and turns[0].first_token_ms >= 0
    finally:
        await svc.stop()
