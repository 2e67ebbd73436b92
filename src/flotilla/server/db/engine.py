"""Engine and session factory for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode with one pooled connection: the server is the only writer,
and serialising through the pool (an async wait) avoids SQLITE_BUSY entirely. Its
statements run inline on the event loop (`inline_sqlite.py`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from flotilla.core.unixids import UnixIdRange
from flotilla.server.db.inline_sqlite import inline_connector
from flotilla.server.db.unix_ids import StoreSession, session_info
from flotilla.server.db.writes import LOG_INFO, WriteLog


def normalize_url(url: str) -> str:
    """Accept the URLs people write (`postgresql://`, `sqlite:///`) and pick async drivers."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.split(":///", 1)[1]
    return url


def is_sqlite(url: str) -> bool:
    return normalize_url(url).startswith("sqlite")


def create_engine(url: str) -> AsyncEngine:
    url = normalize_url(url)
    if not is_sqlite(url):
        return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    path = make_url(url).database or ":memory:"
    engine = create_async_engine(
        url, pool_size=1, max_overflow=0, pool_timeout=60, async_creator=inline_connector(path)
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def session_factory(
    engine: AsyncEngine, unix_ids: UnixIdRange, writes: WriteLog | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions that give new users and groups their Unix numbers from `unix_ids`
    (`unix_ids.py`) and tell `writes` which runs and nodes they changed (`writes.py`)."""
    return async_sessionmaker(
        engine,
        expire_on_commit=False,
        sync_session_class=StoreSession,
        info={**session_info(unix_ids), LOG_INFO: writes or WriteLog()},
    )
