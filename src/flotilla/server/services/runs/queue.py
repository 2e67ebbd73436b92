"""The pending queue as users see it: waiting runs, oldest first, a page at a time
(`GET /api/queue`, `flo queue`), with their shape, priority and the scheduler's
reason for not starting them yet."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.status import RunStatus
from flotilla.errors import ClientError, FieldProblem
from flotilla.server.db.models import RecipeModel, RunModel
from flotilla.server.identity import Identity
from flotilla.server.services.events import record_event
from flotilla.server.services.recipes import visible_to

# Runs per page of `GET /api/queue`: by default, and at most.
PAGE_DEFAULT = 100
PAGE_MAX = 1000


async def queue_page(
    session: AsyncSession,
    identity: Identity,
    now: datetime,
    limit: int = PAGE_DEFAULT,
    after: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """The pending runs `identity` may read, oldest first, from just after the
    cursor `after`, at most `limit` of them; and the cursor of the next page (None
    when there is none). A cursor is a place in the queue, not an offset: runs that
    start or arrive between two pages move no other run into or out of view, so
    paging to the end sees every run that waited all along exactly once. Positions
    count everyone's pending runs."""
    query = _visible_pending(identity)
    if after is not None:
        queued_at, run_id = _decode(after)
        query = query.where(tuple_(RunModel.queued_at, RunModel.id) > (queued_at, run_id))
    found = await session.execute(query.order_by(*_ORDER).limit(limit + 1))
    rows = [(run, recipe) for run, recipe in found]
    more = len(rows) > limit
    rows = rows[:limit]
    if not rows:
        return [], None
    positions = await _positions(session, rows[0][0], rows[-1][0])
    # A run placed between the two reads has no position: it no longer waits.
    page = [
        _view(run, recipe, positions[run.id], now) for run, recipe in rows if run.id in positions
    ]
    last = rows[-1][0]
    return page, _encode(last) if more else None


_ORDER = (RunModel.queued_at, RunModel.id)


def _visible_pending(identity: Identity) -> Select[RunModel, RecipeModel]:
    query = (
        select(RunModel, RecipeModel)
        .join(RecipeModel, RecipeModel.id == RunModel.recipe_id)
        .where(RunModel.status == RunStatus.PENDING.value)
    )
    return visible_to(query, identity)


async def _positions(session: AsyncSession, first: RunModel, last: RunModel) -> dict[str, int]:
    """Each pending run's place from `first` to `last` (1 is next), counting every
    user's: a count of those before `first`, then the ids in between (the index
    `ix_runs_pending` serves both)."""
    pending = RunModel.status == RunStatus.PENDING.value
    place = tuple_(RunModel.queued_at, RunModel.id)
    before = await session.scalar(
        select(func.count()).where(pending, place < (first.queued_at, first.id))
    )
    between = await session.execute(
        select(RunModel.id)
        .where(pending, place >= (first.queued_at, first.id), place <= (last.queued_at, last.id))
        .order_by(*_ORDER)
    )
    return {run_id: int(before or 0) + i for i, run_id in enumerate(between.scalars(), start=1)}


def _view(run: RunModel, recipe: RecipeModel, position: int, now: datetime) -> dict[str, Any]:
    resources = run.spec.get("resources") or {}
    return {
        "position": position,
        "run_id": run.id,
        "job": recipe.name,
        "job_id": recipe.id,
        "number": run.number,
        "attempt": run.attempt,
        "owner": recipe.owner,
        "recipe_project": recipe.project,
        "project": run.spec.get("project", "default"),
        "priority": run.spec.get("priority", 0),
        "scale": run.spec.get("scale", 1),
        "gpu": resources.get("gpu"),
        "spot": run.spec.get("use_spot_instance", False),
        "queued_at": run.queued_at.isoformat(),
        "waiting_seconds": round((now - run.queued_at).total_seconds(), 1),
        "reason": run.reason,
    }


def _encode(run: RunModel) -> str:
    raw = json.dumps([run.queued_at.isoformat(), run.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, str]:
    """A cursor made by `_encode`; anything else is the caller's mistake, named."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        queued_at, run_id = json.loads(raw)
        at = datetime.fromisoformat(queued_at)
        if not isinstance(run_id, str) or at.tzinfo is None:
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as e:
        why = "not a cursor this server gave (pass the `next` of a page)"
        raise ClientError(
            f"after: {why}", "invalid_request", 422, [FieldProblem("after", why)]
        ) from e
    return at, run_id


async def record_policy_change(session: AsyncSession, actor: str, now: datetime) -> None:
    record_event(session, kind="policy", message="scheduler policy replaced", actor=actor, now=now)
