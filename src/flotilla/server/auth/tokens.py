"""Access tokens: short-lived RS256 JWTs naming a user and the session they belong
to. `mint_access_token` signs one with the current key; `identity_for_jwt` (called
by `security.current_identity` for any bearer credential shaped like a JWT) checks
it and returns the caller's identity, or raises 401.

A token is refused when it is malformed, uses any algorithm but RS256 (`none` and
HS256 included: the algorithm is pinned, never taken from the token), names a key
we do not have or no longer trust, fails its signature, has the wrong issuer or
audience, has expired by the server's clock, or when its session has been revoked
or its user locked: the last two are looked up on every request, so logout takes
effect at once rather than at `exp`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.config import Settings
from flotilla.errors import Unauthorized
from flotilla.server.auth.keys import ALGORITHM, signing_key, verification_key
from flotilla.server.db.models import SessionModel, UserModel
from flotilla.server.identity import Identity, Scope, load_identity
from flotilla.server.secretbox import SecretBox

AUDIENCE = "flotilla"
REQUIRED_CLAIMS = ["iss", "aud", "sub", "sid", "iat", "exp", "jti", "scope"]


@dataclass(frozen=True)
class TokenPolicy:
    """What this server puts in, and expects of, its session tokens."""

    issuer: str = "flotilla"
    access_ttl: timedelta = timedelta(minutes=15)
    refresh_ttl: timedelta = timedelta(days=14)

    @classmethod
    def of(cls, settings: Settings) -> TokenPolicy:
        return cls(
            issuer=settings.auth_issuer,
            access_ttl=timedelta(seconds=settings.access_token_ttl),
            refresh_ttl=timedelta(seconds=settings.refresh_token_ttl),
        )


DEFAULT_POLICY = TokenPolicy()


def entitled_scopes(user: UserModel) -> frozenset[str]:
    """Everything a session of `user` may do: read and write, and admin for admins."""
    scopes = {Scope.READ.value, Scope.WRITE.value}
    if user.is_admin:
        scopes.add(Scope.ADMIN.value)
    return frozenset(scopes)


async def mint_access_token(
    session: AsyncSession,
    box: SecretBox,
    user: UserModel,
    session_id: str,
    now: datetime,
    policy: TokenPolicy,
) -> str:
    key = await signing_key(session, box, now)
    issued = int(now.timestamp())
    claims: dict[str, Any] = {
        "iss": policy.issuer,
        "aud": AUDIENCE,
        "sub": user.id,
        "name": user.name,
        "sid": session_id,
        "iat": issued,
        "exp": issued + int(policy.access_ttl.total_seconds()),
        "jti": uuid.uuid4().hex,
        "scope": " ".join(sorted(entitled_scopes(user))),
    }
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})


def unverified_session_id(token: str) -> str | None:
    """The `sid` claim, read without checking anything: only for a token that
    `identity_for_jwt` has already accepted on this request."""
    try:
        sid = jwt.decode(token, options={"verify_signature": False}).get("sid")
    except jwt.InvalidTokenError:
        return None
    return sid if isinstance(sid, str) else None


async def verify_access_token(
    session: AsyncSession, token: str, now: datetime, policy: TokenPolicy = DEFAULT_POLICY
) -> dict[str, Any]:
    """The token's claims if it is one of ours and unexpired; 401 otherwise."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as e:
        raise Unauthorized("malformed session token") from e
    if header.get("alg") != ALGORITHM:
        raise Unauthorized(f"session token uses algorithm {header.get('alg')!r}: only RS256")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise Unauthorized("session token has no key id (kid)")
    key = await verification_key(session, kid, now, policy.access_ttl)
    if key is None:
        raise Unauthorized("session token signed by a key this server does not trust")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=policy.issuer,
            # Time is checked below against the server's clock, not the OS's.
            options={
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "require": REQUIRED_CLAIMS,
            },
        )
    except jwt.InvalidSignatureError as e:
        raise Unauthorized("session token signature is invalid") from e
    except jwt.InvalidTokenError as e:
        raise Unauthorized(f"invalid session token: {e}") from e
    exp = claims["exp"]
    if not isinstance(exp, int | float) or now.timestamp() >= exp:
        raise Unauthorized("session token expired: refresh it or log in again")
    return claims


async def identity_for_jwt(
    session: AsyncSession, token: str, now: datetime, policy: TokenPolicy = DEFAULT_POLICY
) -> Identity:
    """The identity behind a session access token, or 401."""
    claims = await verify_access_token(session, token, now, policy)
    row = (
        await session.execute(
            select(SessionModel, UserModel)
            .join(UserModel, UserModel.id == SessionModel.user_id)
            .where(SessionModel.id == str(claims["sid"]))
        )
    ).first()
    if row is None or row[0].user_id != claims["sub"]:
        raise Unauthorized("session token names no session of this user")
    login, user = row
    if login.revoked_at is not None:
        raise Unauthorized("session revoked (logged out): log in again")
    if login.expires_at <= now:
        raise Unauthorized("session expired: log in again")
    if user.locked:
        raise Unauthorized(f"user {user.name} is locked")
    scopes = frozenset(str(claims["scope"]).split()) & entitled_scopes(user)
    return await load_identity(session, user, scopes, "session")
