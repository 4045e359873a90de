"""The central database: one async engine, migrations applied at start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
MIGRATION_LOCK = 0x6861_6D69  # "hami": the PostgreSQL advisory lock key migrations are run under
NAMED_LOCKS = 0x6861_6C6B  # "halk": the first key of `Database.lock`'s two-key advisory locks (the second: the name's hash)


def alembic_config() -> Config:
    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(ALEMBIC_INI.parent / "migrations"))
    return cfg


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # WAL lets readers run during a write; busy_timeout turns lock contention into a short wait.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database:
    """Owns the engine and hands out sessions; `upgrade()` runs Alembic to head."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=not url.startswith("sqlite"))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self.sessions()

    async def upgrade(self, revision: str = "head") -> None:
        await self._alembic(lambda cfg: command.upgrade(cfg, revision))

    async def downgrade(self, revision: str = "base") -> None:
        await self._alembic(lambda cfg: command.downgrade(cfg, revision))

    async def _alembic(self, action: Callable[[Config], None]) -> None:
        def run(conn: Connection) -> None:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            action(cfg)

        sqlite = self.engine.dialect.name == "sqlite"
        async with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                # Instances started together on an empty database: one migrates, the others wait here
                # and then find nothing to do (the lock ends with the migration's transaction).
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            if sqlite:
                # SQLite rebuilds a table to alter it (batch mode); with foreign keys on, dropping the old
                # table would cascade to every row that refers to it. Off outside a transaction, checked after.
                await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await conn.run_sync(run)
            if sqlite:
                problems = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
                if problems:
                    raise RuntimeError(f"the migration left rows whose references are broken: {problems[:5]}")
            await conn.commit()
            if sqlite:
                await conn.exec_driver_sql("PRAGMA foreign_keys=ON")

    @asynccontextmanager
    async def lock(self, name: str) -> AsyncIterator[None]:
        """Hold a lock named `name` across every instance on this database (PostgreSQL: a session
        advisory lock on a connection of its own, for as long as the block runs). A no-op on SQLite,
        which has one instance. If anything goes wrong the connection is closed, not pooled: the
        server then drops the lock with it."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        key = {"space": NAMED_LOCKS, "name": name}
        async with self.engine.connect() as conn:
            try:
                await conn.execute(text("SELECT pg_advisory_lock(:space, hashtext(:name))"), key)
                await conn.commit()  # not idle in a transaction while the block runs
                yield
                await conn.execute(text("SELECT pg_advisory_unlock(:space, hashtext(:name))"), key)
                await conn.commit()
            except BaseException:
                await conn.invalidate()
                raise

    async def close(self) -> None:
        await self.engine.dispose()
