"""The secret store's API: create or replace, list metadata, delete. The value is
accepted once and never returned. A secret belongs to a user, a group or a project
(`owner`, `owner_kind`); see `services/secrets.py` for who may use it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import secrets as secret_service
from flotilla.server.services.secrets import OwnerKind

router = APIRouter(prefix="/api/secrets", tags=["secrets"])


class PutSecretRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    value: str = Field(repr=False)
    owner: str | None = Field(None, description="user, group or project; default: the caller")
    owner_kind: OwnerKind | None = Field(None, description="default: inferred from `owner`")
    description: str = ""


@router.post("", status_code=201)
async def put_secret(ctx: Ctx, caller: Caller, body: PutSecretRequest) -> dict[str, Any]:
    async with ctx.transaction() as session:
        kind, owner = await secret_service.resolve_owner(
            session, caller, body.owner, body.owner_kind
        )
        secret = await secret_service.put_secret(
            session,
            ctx.secret_box,
            caller,
            kind=kind,
            owner=owner,
            name=body.name,
            value=body.value,
            description=body.description,
            now=ctx.clock.now(),
        )
        return secret_service.secret_view(secret)


@router.get("")
async def list_secrets(ctx: Ctx, caller: Caller, owner: str | None = None) -> dict[str, Any]:
    async with ctx.sessions() as session:
        secrets = await secret_service.list_secrets(session, caller, owner)
    return {"secrets": [secret_service.secret_view(s) for s in secrets]}


@router.delete("/{name}", status_code=204)
async def delete_secret(
    ctx: Ctx,
    caller: Caller,
    name: str,
    owner: str | None = None,
    owner_kind: OwnerKind | None = None,
) -> Response:
    async with ctx.transaction() as session:
        kind, resolved = await secret_service.resolve_owner(session, caller, owner, owner_kind)
        await secret_service.delete_secret(session, caller, kind, resolved, name, ctx.clock.now())
    return Response(status_code=204)
