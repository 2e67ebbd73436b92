"""API tokens: `/api/tokens` for the caller's own, `/api/users/{id}/tokens` and
`/api/service_accounts/{id}/tokens` for platform admins minting tokens for others.
A new token's plaintext is in the creation response and nowhere else, ever."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from flotilla.errors import NotFound
from flotilla.server.identity import Identity
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import tokens as token_service
from flotilla.server.services.users import readable_user, require_self_or_admin

router = APIRouter(prefix="/api", tags=["tokens"])


class CreateTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    scopes: list[str] = Field(default_factory=lambda: ["read", "write"])
    expires_in_days: int | None = None
    expires_at: datetime | None = None


async def _create(
    ctx: Ctx,
    caller: Identity,
    ref: str,
    body: CreateTokenRequest,
    *,
    service_account: bool = False,
) -> dict[str, Any]:
    """A token for the user `ref` (id or name): the caller, or anyone for an admin."""
    now = ctx.clock.now()
    async with ctx.transaction() as session:
        user = await readable_user(session, caller, ref)
        if service_account and not user.is_service_account:
            raise NotFound(f"service account {ref!r}")
        require_self_or_admin(caller, user, "create their tokens")
        token, plaintext = await token_service.create_token(
            session,
            caller,
            user,
            name=body.name,
            scopes=body.scopes,
            expires_at=token_service.expiry(now, body.expires_in_days, body.expires_at),
            now=now,
        )
        return {**token_service.token_view(token, user.name), "token": plaintext}


@router.post("/tokens", status_code=201)
async def create_token(ctx: Ctx, caller: Caller, body: CreateTokenRequest) -> dict[str, Any]:
    """A token for the caller. The response's `token` is shown this once."""
    return await _create(ctx, caller, caller.user_id, body)


@router.get("/tokens")
async def list_tokens(ctx: Ctx, caller: Caller, user: str | None = None) -> dict[str, Any]:
    """The caller's tokens (a platform admin may ask for another `user`'s)."""
    async with ctx.sessions() as session:
        target = await readable_user(session, caller, user or caller.user_id)
        require_self_or_admin(caller, target, "list their tokens")
        tokens = await token_service.list_tokens(session, target)
    return {"tokens": [token_service.token_view(t, target.name) for t in tokens]}


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(ctx: Ctx, caller: Caller, token_id: str) -> Response:
    async with ctx.transaction() as session:
        await token_service.revoke_token(session, caller, token_id, ctx.clock.now())
    return Response(status_code=204)


@router.post("/users/{user_id}/tokens", status_code=201)
async def create_user_token(
    ctx: Ctx, caller: Caller, user_id: str, body: CreateTokenRequest
) -> dict[str, Any]:
    return await _create(ctx, caller, user_id, body)


@router.get("/users/{user_id}/tokens")
async def list_user_tokens(ctx: Ctx, caller: Caller, user_id: str) -> dict[str, Any]:
    return await list_tokens(ctx, caller, user_id)


@router.post("/service_accounts/{account_id}/tokens", status_code=201)
async def create_service_account_token(
    ctx: Ctx, caller: Caller, account_id: str, body: CreateTokenRequest
) -> dict[str, Any]:
    caller.require_admin()
    return await _create(ctx, caller, account_id, body, service_account=True)
