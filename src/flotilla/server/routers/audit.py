"""The audit log, for platform admins: who changed what, when, from where, and
whether it worked; every login attempt too. Read-only: there is no route that
changes or deletes an entry."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Query

from flotilla.api.audit import AuditPage
from flotilla.api.base import errors
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.identity.audit import AuditQuery, audit_view, query_audit

router = APIRouter(prefix="/api/audit", tags=["audit"])
# Entry ids are a 32-bit INTEGER column: a larger `before_id` is no id, and
# PostgreSQL refuses to compare one with it (a 500) rather than find nothing.
MAX_ENTRY_ID = 2**31 - 1


def as_utc(moment: datetime | None) -> datetime | None:
    """A time without a zone is taken as UTC, the zone everything is stored in."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@router.get("", responses=errors(403, 422))
async def list_audit(
    ctx: Ctx,
    caller: Caller,
    actor: str | None = None,
    action: str | None = Query(None, description="a substring of 'METHOD /route/{template}'"),
    outcome: str | None = Query(None, pattern="^(success|denied|failure)$"),
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = Query(
        None, ge=1, le=MAX_ENTRY_ID, description="page backwards from this entry id"
    ),
    limit: int = Query(100, ge=1, le=1000),
) -> AuditPage:
    """Newest first; the next page is `before_id=next_before_id`."""
    caller.require_admin()
    query = AuditQuery(actor, action, outcome, as_utc(since), as_utc(until), before_id, limit)
    async with ctx.sessions() as session:
        rows = await query_audit(session, query)
    entries = [audit_view(r) for r in rows]
    return AuditPage.model_validate(
        {"entries": entries, "next_before_id": entries[-1]["id"] if len(entries) == limit else None}
    )
