"""API tokens: create (the plaintext is returned once and only its SHA-256 kept),
list (metadata only) and revoke. Called by `routers/tokens.py`; `security.py`
authenticates with them and refuses revoked and expired ones.

A token never carries more than its holder may do: `admin` only for platform
admins, and a request authenticated by a token can only create tokens with scopes
that token has (a read-only token cannot mint a writable one).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import Conflict, Forbidden, NotFound
from flotilla.recipes.identity import invalid
from flotilla.server.db.models import ApiTokenModel, UserModel
from flotilla.server.identity import ALL_SCOPES, Identity, Scope
from flotilla.server.security import new_token, token_row
from flotilla.server.services.events import record_event
from flotilla.server.services.views import iso

MAX_DAYS = 3650


def expiry(
    now: datetime, expires_in_days: int | None, expires_at: datetime | None
) -> datetime | None:
    """When a new token expires (None: never), from one of the two ways to say it."""
    if expires_in_days is not None and expires_at is not None:
        raise invalid("expires_at", "give expires_in_days or expires_at, not both")
    if expires_in_days is not None:
        if not 1 <= expires_in_days <= MAX_DAYS:
            raise invalid("expires_in_days", f"must be between 1 and {MAX_DAYS}")
        return now + timedelta(days=expires_in_days)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise invalid("expires_at", "must include a time zone, e.g. 2030-01-01T00:00:00Z")
        if expires_at <= now:
            raise invalid("expires_at", "must be in the future")
        return expires_at
    return None


def check_scopes(caller: Identity, user: UserModel, scopes: Sequence[str]) -> list[str]:
    """The requested scopes, if `user` may hold them and `caller` may grant them."""
    if not scopes:
        raise invalid("scopes", "give at least one of read, write, admin")
    unknown = sorted(set(scopes) - ALL_SCOPES)
    if unknown:
        raise invalid("scopes", f"unknown scope(s) {', '.join(unknown)}; use read, write, admin")
    if Scope.ADMIN in scopes and not user.is_admin:
        raise Forbidden(f"{user.name} is not a platform admin: no token of theirs may have 'admin'")
    beyond = sorted(set(scopes) - caller.scopes)
    if beyond:
        raise Forbidden(
            f"this credential lacks {', '.join(beyond)}: "
            "a token cannot be created with scopes beyond the caller's own"
        )
    return sorted(set(scopes), key=["read", "write", "admin"].index)


async def create_token(
    session: AsyncSession,
    caller: Identity,
    user: UserModel,
    *,
    name: str,
    scopes: Sequence[str],
    expires_at: datetime | None,
    now: datetime,
) -> tuple[ApiTokenModel, str]:
    """A new token for `user` (the caller, or anyone for a platform admin). Returns
    the row and the plaintext, which is never stored or shown again."""
    if user.id != caller.user_id or user.is_service_account:
        # A service account's tokens come from an admin, never from its own: a leaked
        # token cannot mint itself a successor that outlives its revocation.
        caller.require_admin()
    if user.locked:
        raise Conflict(f"user {user.name} is locked: unlock them before creating tokens")
    if not name.strip() or len(name) > 128:
        raise invalid("name", "must be 1-128 characters")
    granted = check_scopes(caller, user, scopes)
    plaintext = new_token()
    token = token_row(user.id, name, plaintext, granted, now, expires_at)
    session.add(token)
    record_event(
        session,
        kind="identity",
        message=f"token {name!r} ({', '.join(granted)}) created for {user.name}",
        actor=caller.name,
        now=now,
    )
    return token, plaintext


async def list_tokens(session: AsyncSession, user: UserModel) -> Sequence[ApiTokenModel]:
    query = (
        select(ApiTokenModel)
        .where(ApiTokenModel.user_id == user.id)
        .order_by(ApiTokenModel.created_at, ApiTokenModel.name)
    )
    return (await session.execute(query)).scalars().all()


async def revoke_token(
    session: AsyncSession, caller: Identity, token_id: str, now: datetime
) -> ApiTokenModel:
    """Revoke one of the caller's tokens (any token, for platform admins).
    Idempotent: revoking a revoked token changes nothing."""
    token = await session.get(ApiTokenModel, token_id)
    if token is None or (token.user_id != caller.user_id and not caller.is_admin):
        raise NotFound(f"token {token_id!r}")
    if token.revoked_at is None:
        token.revoked_at = now
        record_event(
            session,
            kind="identity",
            message=f"token {token.name!r} revoked",
            actor=caller.name,
            now=now,
        )
    return token


def token_view(token: ApiTokenModel, user: str | None = None) -> dict[str, Any]:
    """Metadata only: the token itself is never returned after creation."""
    view: dict[str, Any] = {
        "id": token.id,
        "name": token.name,
        "scopes": list(token.scopes),
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "last_used_at": iso(token.last_used_at),
        "revoked_at": iso(token.revoked_at),
    }
    if user is not None:
        view["user"] = user
    return view
