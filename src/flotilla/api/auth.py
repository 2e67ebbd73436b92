"""Logins and sessions (`/api/auth`) and the public JWKS: the tokens a login
gives, the caller's sessions, and the keys that verify session tokens."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from flotilla.api.base import ApiModel, errors


def public_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that needs no credential: `errors` without the
    401 it adds for authenticated routes (unless the route itself answers 401)."""
    documented = errors(*statuses)
    return {s: r for s, r in documented.items() if s != 401 or 401 in statuses}


class TokenResponse(ApiModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the scheme's name, not a secret
    expires_in: int = Field(description="seconds until the access token expires")
    refresh_token: str


class Session(ApiModel):
    id: str
    method: str  # how it began: "password" or "oidc"
    source_ip: str
    created_at: str
    refreshed_at: str
    expires_at: str
    current: bool  # the session the request's credential belongs to


class SessionList(ApiModel):
    sessions: list[Session]


class LogoutResponse(ApiModel):
    revoked: str  # the session id


class KeyRotation(ApiModel):
    kid: str = Field(description="the new signing key")
    keys: list[str] = Field(description="the kids of every key that verifies, signing key first")


class Jwk(ApiModel):
    """One RSA public key (RFC 7517)."""

    kty: str
    key_ops: list[str] | None = None
    n: str
    e: str
    kid: str
    use: str
    alg: str


class Jwks(ApiModel):
    keys: list[Jwk]  # the signing key first, then the most recently retired


class LoginRequest(ApiModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024, repr=False)


class RefreshRequest(ApiModel):
    refresh_token: str = Field(min_length=1, max_length=1024, repr=False)


class LogoutRequest(ApiModel):
    session_id: str | None = Field(None, description="default: the calling session")
