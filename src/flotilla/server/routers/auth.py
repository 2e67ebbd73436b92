"""Logins and sessions under `/api/auth`, and the public JWKS.

Public (no credential): `POST /login`, `POST /refresh`, `GET /oidc/login`,
`GET /oidc/callback`, `GET /jwks` and `GET /.well-known/jwks.json` (public keys
only). Everything else needs a credential like any other route. Login attempts
leave `audit_actor` and `audit_detail` on `request.state` for the audit log.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse

from flotilla.api.auth import (
    Jwks,
    KeyRotation,
    LoginRequest,
    LogoutRequest,
    LogoutResponse,
    RefreshRequest,
    SessionList,
    TokenResponse,
    public_errors,
)
from flotilla.api.base import errors
from flotilla.errors import ClientError
from flotilla.server.auth import sessions as session_service
from flotilla.server.auth import sso
from flotilla.server.auth.keys import public_jwks, rotate_signing_key
from flotilla.server.auth.oidc import OidcClient, OidcConfig, sso_failed
from flotilla.server.auth.sessions import IssuedTokens, LoginRefused
from flotilla.server.auth.throttle import TooManyAttempts
from flotilla.server.auth.tokens import TokenPolicy, unverified_session_id
from flotilla.server.context import ServerContext
from flotilla.server.db.models import SessionModel
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.security import looks_like_jwt, parse_authorization
from flotilla.server.services.views import iso

router = APIRouter()
api = APIRouter(prefix="/api/auth", tags=["auth"])


def _source_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def _tokens(request: Request, tokens: IssuedTokens, detail: str) -> TokenResponse:
    request.state.audit_actor = tokens.username
    request.state.audit_detail = detail
    return TokenResponse.model_validate(tokens.as_dict())


@api.post("/login", responses=public_errors(401, 422, 429))
async def login(request: Request, ctx: Ctx, body: LoginRequest) -> TokenResponse:
    """Log in with a user name and password; returns an access and a refresh token."""
    request.state.audit_actor = body.username
    address = _source_ip(request)
    try:
        async with ctx.sessions() as session:
            await ctx.login_throttle.check(session, body.username, address, ctx.clock.now())
    except TooManyAttempts:
        request.state.audit_detail = "login refused: too many failed attempts"
        raise
    try:
        tokens = await session_service.password_login(ctx, body.username, body.password, address)
    except LoginRefused as e:  # audited as a 401: the throttle counts it from there
        request.state.audit_detail = f"login failed: {e.reason}"
        raise
    return _tokens(request, tokens, "password login")


@api.post("/refresh", responses=public_errors(401, 422))
async def refresh(request: Request, ctx: Ctx, body: RefreshRequest) -> TokenResponse:
    """New tokens for a refresh token, which is used up; replaying a used-up one
    revokes its session."""
    tokens = await session_service.refresh_session(ctx, body.refresh_token)
    return _tokens(request, tokens, "session refreshed")


@api.post("/logout", responses=errors(400, 403, 404, 422))
async def logout(
    request: Request, ctx: Ctx, caller: Caller, body: LogoutRequest | None = None
) -> LogoutResponse:
    """End the calling session (or the one named): its tokens stop working."""
    session_id = body.session_id if body and body.session_id else _calling_session(request)
    if session_id is None:
        raise ClientError(
            "this credential is an API token, not a session: name the session to end",
            "bad_request",
            400,
        )
    async with ctx.transaction() as session:
        await session_service.revoke_session(session, caller, session_id, ctx.clock.now())
    return LogoutResponse(revoked=session_id)


def _calling_session(request: Request) -> str | None:
    token = parse_authorization(request.headers.get("authorization"))
    return unverified_session_id(token) if looks_like_jwt(token) else None


@api.get("/sessions", responses=errors())
async def list_sessions(request: Request, ctx: Ctx, caller: Caller) -> SessionList:
    """The caller's live sessions (never their tokens)."""
    current = _calling_session(request)
    async with ctx.transaction() as session:
        rows = await session_service.list_sessions(session, caller.user_id, ctx.clock.now())
    return SessionList.model_validate({"sessions": [_session_view(row, current) for row in rows]})


def _session_view(row: SessionModel, current: str | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "method": row.method,
        "source_ip": row.source_ip,
        "created_at": iso(row.created_at),
        "refreshed_at": iso(row.refreshed_at),
        "expires_at": iso(row.expires_at),
        "current": row.id == current,
    }


@api.post("/keys/rotate", responses=errors(403))
async def rotate_keys(ctx: Ctx, caller: Caller) -> KeyRotation:
    """Sign with a new key from now on (platform admins). Tokens signed by the old
    key keep working until they expire."""
    caller.require_admin()
    policy = TokenPolicy.of(ctx.settings)
    now = ctx.clock.now()
    async with ctx.transaction() as session:
        key = await rotate_signing_key(session, ctx.secret_box, now, policy.access_ttl)
        jwks = await public_jwks(session, now, policy.access_ttl)
    return KeyRotation(kid=key.kid, keys=[k["kid"] for k in jwks["keys"]])


async def _jwks(ctx: ServerContext) -> JSONResponse:
    """The document as stored, checked against the contract (a `JSONResponse`, not
    the model, for its Cache-Control header)."""
    async with ctx.transaction() as session:
        body = await public_jwks(session, ctx.clock.now(), TokenPolicy.of(ctx.settings).access_ttl)
    Jwks.model_validate(body)
    return JSONResponse(body, headers={"Cache-Control": "public, max-age=300"})


@api.get("/jwks", response_model=Jwks, responses=public_errors())
async def jwks(ctx: Ctx) -> JSONResponse:
    """The public keys that verify this server's session tokens."""
    return await _jwks(ctx)


@router.get("/.well-known/jwks.json", tags=["auth"], response_model=Jwks, responses=public_errors())
async def well_known_jwks(ctx: Ctx) -> JSONResponse:
    """The public keys that verify this server's session tokens."""
    return await _jwks(ctx)


def _oidc(request: Request, ctx: ServerContext) -> OidcClient:
    """The app's one OIDC client (its discovery and JWKS caches live with it)."""
    client: OidcClient | None = getattr(request.app.state, "oidc_client", None)
    if client is None:
        config = OidcConfig.from_settings(ctx.settings)
        if config is None:
            raise ClientError(
                "single sign-on is not configured on this server (set FLOTILLA_OIDC_ISSUER, "
                "FLOTILLA_OIDC_CLIENT_ID and FLOTILLA_OIDC_REDIRECT_URL)",
                "sso_not_configured",
                404,
            )
        client = OidcClient(config)
        request.app.state.oidc_client = client
    return client


@api.get(
    "/oidc/login",
    response_class=RedirectResponse,
    status_code=302,
    responses={
        302: {
            "description": "to the identity provider's login page",
            "headers": {"Location": {"schema": {"type": "string"}}},
        },
        **public_errors(404, 502),
    },
)
async def oidc_login(request: Request, ctx: Ctx) -> RedirectResponse:
    """Start single sign-on: redirects to the identity provider."""
    url = await sso.begin_login(ctx, _oidc(request, ctx))
    return RedirectResponse(url, status_code=302)


@api.get("/oidc/callback", responses=public_errors(400, 401, 404, 409, 502))
async def oidc_callback(
    request: Request,
    ctx: Ctx,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> TokenResponse:
    """Where the identity provider sends the browser back; returns the tokens."""
    client = _oidc(request, ctx)
    try:
        if error:
            reason = f"{error}: {error_description}" if error_description else error
            raise sso_failed(f"the identity provider refused the login ({reason[:200]})")
        if not code or not state:
            raise sso_failed("the callback lacks the code or state parameter")
        tokens = await sso.finish_login(ctx, client, code, state, _source_ip(request))
    except ClientError as e:
        request.state.audit_actor = "anonymous"  # who tried is unknown until it works
        request.state.audit_detail = f"sso login failed: {e.message}"
        raise
    return _tokens(request, tokens, "sso login")


router.include_router(api)
