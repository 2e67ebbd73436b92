"""Retry waits that survive a restart: per key (`ssh-enroll:NODE`, `fleet:ID`), the
failures in a row and until when the next try waits (`core/backoff.doubling`).
Reconcilers keep them here rather than in memory, so a restarted server does not
try every failed thing again at once. Called by `reconcilers/ssh_fleets.py` and
`reconcilers/fleets.py`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.server.db.models import BackoffModel


async def waiting(
    session: AsyncSession, keys: Iterable[str], now: datetime
) -> dict[str, BackoffModel]:
    """Those of `keys` whose wait is not over."""
    wanted = list(set(keys))
    if not wanted:
        return {}
    query = select(BackoffModel).where(BackoffModel.key.in_(wanted), BackoffModel.not_before > now)
    return {row.key: row for row in (await session.execute(query)).scalars()}


async def failed(
    session: AsyncSession,
    key: str,
    now: datetime,
    wait: Callable[[int], float],
    version: int | None = None,
) -> float:
    """One more failure of `key`; the next try waits `wait(failures in a row)`
    seconds (`core/backoff.doubling` for most). Returns the seconds."""
    row = await session.get(BackoffModel, key, with_for_update=True)
    if row is None:
        row = BackoffModel(key=key, failures=0, not_before=now, version=version)
        session.add(row)
    row.failures += 1
    row.version = version
    row.last_failure_at = now
    seconds = wait(row.failures)
    row.not_before = now + timedelta(seconds=seconds)
    return seconds


async def current(session: AsyncSession, key: str) -> BackoffModel | None:
    """The failures in a row of `key`, whether or not its wait is over."""
    return await session.get(BackoffModel, key)


async def succeeded(session: AsyncSession, key: str) -> None:
    await session.execute(delete(BackoffModel).where(BackoffModel.key == key))
