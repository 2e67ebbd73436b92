"""Authentication: every /api request carries `Authorization: token <T>` (Saturn's
form) or `Bearer <T>`, where T is an API token (`flo_…`, looked up by SHA-256; the
plaintext exists only in the caller's hands and, for the bootstrap admin token, a
0600 file) or a session JWT from a login (verified by `auth.tokens`)."""

from __future__ import annotations

import hashlib
import os
import secrets
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import Forbidden, Unauthorized
from flotilla.server.db.models import ApiTokenModel, UserModel
from flotilla.server.identity import ALL_SCOPES, Identity, Scope, load_identity

ADMIN_USER = "admin"
TOKEN_PREFIX = "flo_"  # noqa: S105 - a prefix, not a secret


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_row(
    user_id: str,
    name: str,
    plaintext: str,
    scopes: Iterable[str],
    now: datetime,
    expires_at: datetime | None = None,
) -> ApiTokenModel:
    """The stored form of an API token: its hash, never the token."""
    return ApiTokenModel(
        id=uuid.uuid4().hex,
        user_id=user_id,
        name=name,
        token_hash=hash_token(plaintext),
        scopes=sorted(scopes),
        created_at=now,
        expires_at=expires_at,
        revoked_at=None,
        last_used_at=None,
    )


def parse_authorization(header: str | None) -> str:
    if not header:
        raise Unauthorized("missing Authorization header (expected 'token <API token>')")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() not in ("token", "bearer") or not value.strip():
        raise Unauthorized("malformed Authorization header (expected 'token <API token>')")
    return value.strip()


async def identity_for_token(session: AsyncSession, token: str, now_utc: datetime) -> Identity:
    row = (
        await session.execute(
            select(ApiTokenModel, UserModel)
            .join(UserModel, UserModel.id == ApiTokenModel.user_id)
            .where(ApiTokenModel.token_hash == hash_token(token))
        )
    ).first()
    if row is None:
        raise Unauthorized("invalid API token")
    token_row, user = row
    if token_row.revoked_at is not None:
        raise Unauthorized("API token revoked")
    if token_row.expires_at is not None and token_row.expires_at <= now_utc:
        raise Unauthorized("API token expired")
    if user.locked:
        raise Unauthorized(f"user {user.name} is locked")
    token_row.last_used_at = now_utc
    return await load_identity(session, user, frozenset(token_row.scopes), "api_token")


async def bootstrap_admin(
    session: AsyncSession, requested: str | None, token_file: Path, now: datetime
) -> None:
    """Make sure an admin user exists with a usable token.

    On first start, creates the admin and a token (FLOTILLA_ADMIN_TOKEN if given,
    else a random one) and writes it to `token_file` with mode 0600. A requested
    token that is not known yet is added, so scripts can pin their token.
    """
    admin = (await session.execute(select(UserModel).where(UserModel.name == ADMIN_USER))).scalar()
    if admin is None:
        admin = UserModel(id=uuid.uuid4().hex, name=ADMIN_USER, is_admin=True, created_at=now)
        session.add(admin)
        await session.flush()
    if requested is None:
        has_token = (
            await session.execute(select(ApiTokenModel.id).where(ApiTokenModel.user_id == admin.id))
        ).first()
        if has_token and token_file.exists():  # noqa: ASYNC240 - once, at start-up
            return
    token = requested or new_token()
    known = (
        await session.execute(
            select(ApiTokenModel.id).where(ApiTokenModel.token_hash == hash_token(token))
        )
    ).first()
    if not known:
        session.add(token_row(admin.id, "bootstrap admin", token, ALL_SCOPES, now))
    write_secret_file(token_file, token)


def write_secret_file(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content + "\n")
    os.replace(tmp, path)


def looks_like_jwt(token: str) -> bool:
    return not token.startswith(TOKEN_PREFIX) and token.count(".") == 2


async def current_identity(request: Request) -> Identity:
    """FastAPI dependency: the caller's identity, or 401; 403 when the credential's
    scopes do not cover the request's method. The identity is left on
    `request.state` for the audit log."""
    identity = await authenticate(request)
    needed = Scope.READ if request.method in ("GET", "HEAD", "OPTIONS") else Scope.WRITE
    if needed not in identity.scopes:
        raise Forbidden(f"this credential lacks the {needed.value!r} scope")
    return identity


async def authenticate(request: Request) -> Identity:
    """Who the request's credential (API token or session JWT) belongs to, or 401."""
    from flotilla.server.context import ServerContext

    ctx: ServerContext = request.app.state.ctx
    token = parse_authorization(request.headers.get("authorization"))
    async with ctx.transaction() as session:
        if looks_like_jwt(token):
            from flotilla.server.auth.tokens import TokenPolicy, identity_for_jwt

            policy = TokenPolicy.of(ctx.settings)
            identity = await identity_for_jwt(session, token, ctx.clock.now(), policy)
        else:
            identity = await identity_for_token(session, token, ctx.clock.now())
    request.state.identity = identity
    return identity
