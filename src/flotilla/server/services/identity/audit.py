"""The audit log: one row per state-changing request and per login attempt, written
by `server/audit.py`'s middleware, read by admins. Rows are never updated or
deleted (the database refuses it: see migration 0003)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.server.db.models import AuditModel


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    auth_method: str
    source_ip: str
    method: str
    path: str
    action: str
    status_code: int
    detail: str = ""

    @property
    def outcome(self) -> str:
        if self.status_code in (401, 403):
            return "denied"
        return "success" if self.status_code < 400 else "failure"


def record_audit(session: AsyncSession, entry: AuditEntry) -> None:
    session.add(
        AuditModel(
            at=entry.at,
            actor=entry.actor,
            auth_method=entry.auth_method,
            source_ip=entry.source_ip,
            method=entry.method,
            path=entry.path,
            action=entry.action,
            status_code=entry.status_code,
            outcome=entry.outcome,
            detail=entry.detail,
        )
    )


@dataclass(frozen=True)
class AuditQuery:
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None
    limit: int = 100


async def query_audit(session: AsyncSession, query: AuditQuery) -> Sequence[AuditModel]:
    """Newest first; page backwards with `before_id` (the last id of a page)."""
    stmt = select(AuditModel).order_by(AuditModel.id.desc()).limit(query.limit)
    if query.actor:
        stmt = stmt.where(AuditModel.actor == query.actor)
    if query.action:
        stmt = stmt.where(AuditModel.action.contains(query.action))
    if query.outcome:
        stmt = stmt.where(AuditModel.outcome == query.outcome)
    if query.since:
        stmt = stmt.where(AuditModel.at >= query.since)
    if query.until:
        stmt = stmt.where(AuditModel.at < query.until)
    if query.before_id:
        stmt = stmt.where(AuditModel.id < query.before_id)
    return (await session.execute(stmt)).scalars().all()


def audit_view(row: AuditModel) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at.isoformat(),
        "actor": row.actor,
        "auth_method": row.auth_method,
        "source_ip": row.source_ip,
        "method": row.method,
        "path": row.path,
        "action": row.action,
        "status_code": row.status_code,
        "outcome": row.outcome,
        "detail": row.detail,
    }
