"""The secret store's API: create or replace, list metadata, delete. The value is
accepted once and never returned. A secret belongs to a user, a group or a project
(`owner`, `owner_kind`); see `services/identity/secrets.py` for who may use it."""

from __future__ import annotations

from fastapi import APIRouter, Response

from flotilla.api.base import errors
from flotilla.api.secrets import OwnerKindName, PutSecretRequest, Secret, SecretList
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.identity import secrets as secret_service

router = APIRouter(prefix="/api/secrets", tags=["secrets"])


@router.post("", status_code=201, responses=errors(403, 422))
async def put_secret(ctx: Ctx, caller: Caller, body: PutSecretRequest) -> Secret:
    """Create the secret, or replace the value and description of the one of that
    owner and name."""
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
        return Secret.model_validate(secret_service.secret_view(secret))


@router.get("", responses=errors())
async def list_secrets(ctx: Ctx, caller: Caller, owner: str | None = None) -> SecretList:
    """The secrets the caller may use (of one `owner`, if given)."""
    async with ctx.sessions() as session:
        secrets = await secret_service.list_secrets(session, caller, owner)
    return SecretList.model_validate({"secrets": [secret_service.secret_view(s) for s in secrets]})


@router.delete("/{name}", status_code=204, responses=errors(403, 404, 422))
async def delete_secret(
    ctx: Ctx,
    caller: Caller,
    name: str,
    owner: str | None = None,
    owner_kind: OwnerKindName | None = None,
) -> Response:
    async with ctx.transaction() as session:
        kind, resolved = await secret_service.resolve_owner(session, caller, owner, owner_kind)
        await secret_service.delete_secret(session, caller, kind, resolved, name, ctx.clock.now())
    return Response(status_code=204)
