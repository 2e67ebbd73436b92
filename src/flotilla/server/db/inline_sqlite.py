"""An aiosqlite-shaped SQLite connection that runs each statement inline on the
event loop instead of in a helper thread.

Why: aiosqlite hands every statement to a thread and back. On a busy two-core
machine each hand-off costs ~0.1 ms or more, and a run's life takes ~100
statements, so the hand-offs, not SQLite, bounded how fast runs could start.
SQLite statements on a local file take microseconds; running them inline is
cheaper than any hand-off. The server is the database's only user (one pooled
connection, see `engine.py`), so no statement waits on a lock. Large
installations use PostgreSQL, where asyncpg is natively asynchronous.

Used through SQLAlchemy's `async_creator` hook with the `sqlite+aiosqlite`
dialect, which only needs the async methods below.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any


class InlineCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> InlineCursor:
        self._cursor.executemany(sql, seq)
        return self

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class InlineConnection:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = connection
        self._connection = connection  # SQLAlchemy checks this to see if it is open

    def cursor(self) -> InlineCursor:
        assert self._conn is not None, "connection closed"
        return InlineCursor(self._conn.cursor())

    @property
    def isolation_level(self) -> str | None:
        assert self._conn is not None, "connection closed"
        return self._conn.isolation_level

    async def commit(self) -> None:
        if self._conn is not None:
            self._conn.commit()

    async def rollback(self) -> None:
        if self._conn is not None:
            self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        assert self._conn is not None, "connection closed"
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._connection = None  # type: ignore[assignment]


def inline_connector(path: str) -> Any:
    """An `async_creator` for SQLAlchemy: opens `path` with the stdlib driver."""

    async def connect() -> InlineConnection:
        return InlineConnection(sqlite3.connect(path, check_same_thread=False))

    return connect
