"""Splitting long id lists for `IN (...)` queries: SQLite allows at most 32,766
bound parameters in one statement, and PostgreSQL plans a shorter list faster."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar, TypeVarTuple

from sqlalchemy import Row, Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
IN_LIST = 1000


def chunks(items: Iterable[T], size: int = IN_LIST) -> Iterator[list[T]]:
    """`items` in lists of at most `size`, in order."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


async def rows_where_in(
    session: AsyncSession,
    query: Select[*Ts],
    column: InstrumentedAttribute[Any],
    ids: Iterable[Any] | None,
) -> list[Row[*Ts]]:
    """The rows of `query`, all of them (`ids` None) or those whose `column` is in
    `ids`, a query per `IN_LIST` of them."""
    if ids is None:
        return list(await session.execute(query))
    rows: list[Row[*Ts]] = []
    for chunk in chunks(ids):
        rows += await session.execute(query.where(column.in_(chunk)))
    return rows
