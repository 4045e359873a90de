"""The Alembic migrations build exactly the schema the code uses, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from bot.slack.messages import thread_surface
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
        session = await svc.sessions.find_by_surface(thread_surface("C0000001", root))
        assert session is not None and session.creator == "U0ALICE1"
        await asyncio.sleep(0.3)  # the turn metric is written in the background
        async with svc.db.session() as s:
            turns = (await s.execute(select(TurnRow))).scalars().all()
        assert [(t.session_id, t.outcome) for t in turns] == [(session.id, "done")]
        assert turns[0].first_token_ms is not None and turns[0].first_token_ms >= 0
    finally:
        await svc.stop()


async def check_sessions_move_to_surfaces_without_loss(database_url: str) -> None:
    """A database made by the previous head (0003), with Slack sessions, their turns and a held
    request, upgrades to surfaces and origin-neutral held requests, and downgrades back."""
    from sqlalchemy import text

    db = Database(database_url)
    try:
        await db.upgrade("0003")
        async with db.engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO sessions (id, share_token, status, origin, slack_channel, slack_thread_ts, creator, repo)"
                " VALUES ('aaaaaaaaaaaaaaaa', 'tok-a', 'idle', 'slack', 'C0000001', '1700000000.000100', 'U1', 'acme/api'),"
                "        ('bbbbbbbbbbbbbbbb', 'tok-b', 'working', 'slack', 'D0000002', '1700000001.000200', 'U2', NULL)"))
            await conn.execute(text(
                "INSERT INTO turns (session_id, prompt_id, author, started_at, outcome)"
                " VALUES ('aaaaaaaaaaaaaaaa', 1, 'U1', 1.0, 'done'), ('bbbbbbbbbbbbbbbb', 1, 'U2', 2.0, 'error')"))
            await conn.execute(text(
                "INSERT INTO pending_requests (id, channel, thread_ts, message_ts, \"user\", text, status, prompt_ts, created_at)"
                " VALUES ('cccccccccccccccc', 'C0000001', '1700000002.000300', '1700000002.000300', 'U3', 'which one?',"
                " 'waiting', '1700000003.000400', 5.0)"))
        await db.upgrade()
        assert await schema_diff(db) == []
        async with db.engine.connect() as conn:
            sessions = (await conn.execute(text("SELECT id, origin, repo FROM sessions ORDER BY id"))).all()
            surfaces = (await conn.execute(text("SELECT session_id, kind, key FROM session_surfaces ORDER BY session_id"))).all()
            turns = (await conn.execute(text("SELECT session_id, outcome FROM turns ORDER BY session_id"))).all()
            pending = (await conn.execute(text(
                "SELECT origin, author_id, surface_kind, surface_key, order_key, ui_ref, text FROM pending_requests"))).all()
        assert [tuple(r) for r in sessions] == [("aaaaaaaaaaaaaaaa", "slack_thread", "acme/api"),
                                                 ("bbbbbbbbbbbbbbbb", "slack_dm", None)]
        assert [tuple(r) for r in surfaces] == [("aaaaaaaaaaaaaaaa", "slack_thread", "C0000001:1700000000.000100"),
                                                 ("bbbbbbbbbbbbbbbb", "slack_thread", "D0000002:1700000001.000200")]
        assert [tuple(r) for r in turns] == [("aaaaaaaaaaaaaaaa", "done"), ("bbbbbbbbbbbbbbbb", "error")], "no cascade lost turns"
        assert [tuple(r) for r in pending] == [("slack_thread", "U3", "slack_thread", "C0000001:1700000002.000300",
                                                1700000002.0003, "1700000003.000400", "which one?")]

        await db.downgrade("0003")
        async with db.engine.connect() as conn:
            back = (await conn.execute(text(
                "SELECT id, origin, slack_channel, slack_thread_ts FROM sessions ORDER BY id"))).all()
            held = (await conn.execute(text(
                "SELECT channel, thread_ts, message_ts, \"user\", prompt_ts FROM pending_requests"))).all()
            turns = (await conn.execute(text("SELECT count(*) FROM turns"))).scalar_one()
        assert [tuple(r) for r in back] == [("aaaaaaaaaaaaaaaa", "slack", "C0000001", "1700000000.000100"),
                                             ("bbbbbbbbbbbbbbbb", "slack", "D0000002", "1700000001.000200")]
        assert [tuple(r) for r in held] == [("C0000001", "1700000002.000300", "1700000002.000300", "U3", "1700000003.000400")]
        assert turns == 2
    finally:
        await db.close()


async def test_sessions_move_to_surfaces_without_loss_on_sqlite(tmp_path):
    await check_sessions_move_to_surfaces_without_loss(f"sqlite+aiosqlite:///{tmp_path / 'central.db'}")


async def test_sessions_move_to_surfaces_without_loss_on_postgresql(pg_url):
    await check_sessions_move_to_surfaces_without_loss(pg_url.replace("postgresql://", "postgresql+asyncpg://"))


async def test_instances_starting_together_on_an_empty_postgresql_all_migrate(pg_url):
    url = pg_url.replace("postgresql://", "postgresql+asyncpg://")
    databases = [Database(url) for _ in range(3)]
    try:
        await asyncio.gather(*(db.upgrade() for db in databases))  # before: unique-constraint errors
        async with databases[0].engine.connect() as conn:
            versions = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).all()
        assert len(versions) == 1
    finally:
        await asyncio.gather(*(db.close() for db in databases))
