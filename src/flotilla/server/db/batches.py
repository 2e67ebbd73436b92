"""Splitting long id lists for `IN (...)` queries: SQLite allows at most 32,766
bound parameters in one statement, and PostgreSQL plans a shorter list faster."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
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
