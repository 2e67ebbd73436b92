"""The minimal secret store's API: create or replace, list metadata, delete. The
value is accepted once and never returned."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import secrets as secret_service

router = APIRouter(prefix="/api/secrets", tags=["secrets"])


class PutSecretRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    value: str
    owner: str | None = None
    description: str = ""


@router.post("", status_code=201)
async def put_secret(ctx: Ctx, caller: Caller, body: PutSecretRequest) -> dict[str, Any]:
    async with ctx.transaction() as session:
        secret = await secret_service.put_secret(
            session,
            ctx.secret_box,
            owner=body.owner or caller.name,
            name=body.name,
            value=body.value,
            description=body.description,
            actor=caller.name,
            now=ctx.clock.now(),
        )
        return secret_service.secret_view(secret)


@router.get("")
async def list_secrets(ctx: Ctx, caller: Caller, owner: str | None = None) -> dict[str, Any]:
    async with ctx.sessions() as session:
        secrets = await secret_service.list_secrets(session, owner)
    return {"secrets": [secret_service.secret_view(s) for s in secrets]}


@router.delete("/{name}", status_code=204)
async def delete_secret(ctx: Ctx, caller: Caller, name: str, owner: str | None = None) -> Response:
    async with ctx.transaction() as session:
        await secret_service.delete_secret(
            session, owner or caller.name, name, caller.name, ctx.clock.now()
        )
    return Response(status_code=204)
