"""Authentication: every /api request carries `Authorization: token <T>` (Saturn's
form) or `Bearer <T>`, where T is an API token (`flo_…`, looked up by SHA-256; the
plaintext exists only in the caller's hands and, for the bootstrap admin token, a
0600 file) or a session JWT from a login (verified by `auth.tokens`).

Authenticating only reads. An API token's `last_used_at` (shown by `flo token
list`, to decide which tokens to revoke) is written afterwards by `TokenUse`, at
most once a minute per token, in its own short transaction whose failure is logged
and ignored: on a full disk or a read-only database reads keep working. A
successful API token check is remembered for a few seconds, until this server
changes an identity (`auth/token_checks.py`)."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import Forbidden, Unauthorized
from flotilla.server.auth.token_checks import Checked, TokenChecks
from flotilla.server.db.models import ApiTokenModel, UserModel
from flotilla.server.db.writes import NOT_AN_IDENTITY_CHANGE
from flotilla.server.identity import ALL_SCOPES, Identity, Scope, load_identity

if TYPE_CHECKING:
    from flotilla.server.context import ServerContext

log = logging.getLogger("flotilla.auth")
ADMIN_USER = "admin"
TOKEN_PREFIX = "flo_"  # noqa: S105 - a prefix, not a secret
# How stale a token's `last_used_at` may get: it is for people, to the minute.
LAST_USED_EVERY = timedelta(minutes=1)


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


async def identity_for_token(
    session: AsyncSession, token: str, now_utc: datetime
) -> tuple[Identity, ApiTokenModel]:
    """The identity behind an API token, and the token's row; 401 if it is unknown,
    revoked, expired or its user locked. Writes nothing (see `TokenUse`)."""
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
    identity = await load_identity(session, user, frozenset(token_row.scopes), "api_token")
    return identity, token_row


class TokenUse:
    """Records when API tokens were last used, best-effort and coalesced: at most one
    write per token per `every`, and a failed write (disk full, read-only database,
    connection lost) is logged once until writes work again and otherwise ignored.
    Attempts are remembered here, so a database that refuses writes is not asked
    again on every request. One per app (`app.state.token_use`)."""

    def __init__(self, every: timedelta = LAST_USED_EVERY) -> None:
        self.every = every
        self._tried: dict[str, datetime] = {}  # token id -> last attempt
        self._failing = False

    def due(self, token_id: str, last_used: datetime | None, now: datetime) -> bool:
        """Whether to write `now` as the token's last use (and if so, it counts as tried)."""
        if last_used is not None and now - last_used < self.every:
            return False
        tried = self._tried.get(token_id)
        if tried is not None and now - tried < self.every:
            return False
        if len(self._tried) > 10_000:  # forget old attempts: they no longer matter
            self._tried = {k: t for k, t in self._tried.items() if now - t < self.every}
        self._tried[token_id] = now
        return True

    async def record(self, ctx: ServerContext, token_id: str, now: datetime) -> None:
        try:
            async with ctx.transaction() as session:
                await session.execute(
                    update(ApiTokenModel)
                    .where(ApiTokenModel.id == token_id)
                    .values(last_used_at=now)
                    .execution_options(**{NOT_AN_IDENTITY_CHANGE: True})
                )
        except SQLAlchemyError as e:
            if not self._failing:
                log.warning("cannot record API token use (reads go on): %r", e)
            self._failing = True
            return
        if self._failing:
            log.info("recording API token use works again")
        self._failing = False


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
    ctx: ServerContext = request.app.state.ctx
    token = parse_authorization(request.headers.get("authorization"))
    now = ctx.clock.now()
    if looks_like_jwt(token):
        from flotilla.server.auth.tokens import TokenPolicy, identity_for_jwt

        async with ctx.sessions() as session:
            identity = await identity_for_jwt(session, token, now, TokenPolicy.of(ctx.settings))
    else:
        checked = await _check_token(request, ctx, token, now)
        token_use = _token_use(request)
        if token_use.due(checked.token_id, checked.last_used_at, now):
            await token_use.record(ctx, checked.token_id, now)
        identity = checked.identity
    request.state.identity = identity
    return identity


async def _check_token(request: Request, ctx: ServerContext, token: str, now: datetime) -> Checked:
    """`identity_for_token`, remembered for a few seconds (`auth/token_checks.py`)."""
    checks: TokenChecks | None = getattr(request.app.state, "token_checks", None)
    if checks is None:
        checks = request.app.state.token_checks = TokenChecks()
    key = hash_token(token)
    version = ctx.writes.identity_version  # before reading: a later change wins
    checked = checks.get(key, version, now)
    if checked is None:
        async with ctx.sessions() as session:
            identity, row = await identity_for_token(session, token, now)
        checked = Checked(identity, row.id, row.last_used_at, row.expires_at)
        checks.put(key, checked, version)
    return checked


def _token_use(request: Request) -> TokenUse:
    token_use: TokenUse | None = getattr(request.app.state, "token_use", None)
    if token_use is None:
        token_use = request.app.state.token_use = TokenUse()
    return token_use
