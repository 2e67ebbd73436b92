"""The event log of recipes, runs and nodes: every status change and admin action."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.server.db.models import EventModel


def record_event(
    session: AsyncSession,
    *,
    kind: str,
    message: str,
    actor: str,
    now: datetime,
    recipe_id: str | None = None,
    run_id: str | None = None,
    node_id: str | None = None,
) -> None:
    session.add(
        EventModel(
            recipe_id=recipe_id,
            run_id=run_id,
            node_id=node_id,
            kind=kind,
            message=message,
            actor=actor,
            created_at=now,
        )
    )


async def run_events(session: AsyncSession, run_id: str) -> Sequence[EventModel]:
    result = await session.execute(
        select(EventModel).where(EventModel.run_id == run_id).order_by(EventModel.id)
    )
    return result.scalars().all()


async def node_events(session: AsyncSession, node_id: str) -> Sequence[EventModel]:
    result = await session.execute(
        select(EventModel).where(EventModel.node_id == node_id).order_by(EventModel.id)
    )
    return result.scalars().all()


def event_view(event: EventModel) -> dict[str, object]:
    return {
        "time": event.created_at.isoformat(),
        "kind": event.kind,
        "message": event.message,
        "actor": event.actor,
        "run_id": event.run_id,
    }
