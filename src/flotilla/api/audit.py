"""The audit log (`/api/audit`, platform admins): one entry per state-changing
request and per login attempt, newest first, paged backwards by id."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flotilla.api.base import ApiModel


class AuditEntry(ApiModel):
    id: int
    at: str
    actor: str  # a user name, or "anonymous"
    auth_method: str
    source_ip: str
    method: str
    path: str
    action: str = Field(description="'METHOD /route/{template}'")
    status_code: int
    outcome: Literal["success", "denied", "failure"]  # denied: a 401 or 403
    detail: str


class AuditPage(ApiModel):
    entries: list[AuditEntry]
    next_before_id: int | None = Field(
        description="pass as `before_id` for the next page; None on the last"
    )
