"""API tokens: `/api/tokens` for the caller's own, `/api/users/{id}/tokens` and
`/api/service_accounts/{id}/tokens` for platform admins minting tokens for others.
A new token's plaintext is in the creation response and nowhere else, ever."""

from __future__ import annotations

from fastapi import APIRouter, Response

from flotilla.api.base import errors
from flotilla.api.tokens import CreatedToken, CreateTokenRequest, TokenList
from flotilla.errors import NotFound
from flotilla.server.identity import Identity
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.identity import tokens as token_service
from flotilla.server.services.identity.users import readable_user, require_self_or_admin

router = APIRouter(prefix="/api", tags=["tokens"])


async def _create(
    ctx: Ctx,
    caller: Identity,
    ref: str,
    body: CreateTokenRequest,
    *,
    service_account: bool = False,
) -> CreatedToken:
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
        view = token_service.token_view(token, user.name)
        return CreatedToken.model_validate({**view, "token": plaintext})


@router.post("/tokens", status_code=201, responses=errors(403, 422))
async def create_token(ctx: Ctx, caller: Caller, body: CreateTokenRequest) -> CreatedToken:
    """A token for the caller. The response's `token` is shown this once."""
    return await _create(ctx, caller, caller.user_id, body)


@router.get("/tokens", responses=errors(403, 404))
async def list_tokens(ctx: Ctx, caller: Caller, user: str | None = None) -> TokenList:
    """The caller's tokens (a platform admin may ask for another `user`'s)."""
    async with ctx.sessions() as session:
        target = await readable_user(session, caller, user or caller.user_id)
        require_self_or_admin(caller, target, "list their tokens")
        tokens = await token_service.list_tokens(session, target)
    return TokenList.model_validate(
        {"tokens": [token_service.token_view(t, target.name) for t in tokens]}
    )


@router.delete("/tokens/{token_id}", status_code=204, responses=errors(403, 404))
async def revoke_token(ctx: Ctx, caller: Caller, token_id: str) -> Response:
    async with ctx.transaction() as session:
        await token_service.revoke_token(session, caller, token_id, ctx.clock.now())
    return Response(status_code=204)


@router.post("/users/{user_id}/tokens", status_code=201, responses=errors(403, 404, 409, 422))
async def create_user_token(
    ctx: Ctx, caller: Caller, user_id: str, body: CreateTokenRequest
) -> CreatedToken:
    return await _create(ctx, caller, user_id, body)


@router.get("/users/{user_id}/tokens", responses=errors(403, 404))
async def list_user_tokens(ctx: Ctx, caller: Caller, user_id: str) -> TokenList:
    return await list_tokens(ctx, caller, user_id)


@router.post(
    "/service_accounts/{account_id}/tokens",
    status_code=201,
    responses=errors(403, 404, 409, 422),
)
async def create_service_account_token(
    ctx: Ctx, caller: Caller, account_id: str, body: CreateTokenRequest
) -> CreatedToken:
    caller.require_admin()
    return await _create(ctx, caller, account_id, body, service_account=True)
