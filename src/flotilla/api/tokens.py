"""API tokens (`/api/tokens`, and a user's or service account's under theirs):
metadata only, except the plaintext in the one response that creates a token."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from flotilla.api.base import ApiModel

ScopeName = Literal["read", "write", "admin"]


class Token(ApiModel):
    id: str
    name: str
    scopes: list[ScopeName]
    created_at: str
    expires_at: str | None  # None: never
    last_used_at: str | None  # recorded at most every few minutes
    revoked_at: str | None
    user: str  # whose token it is (a user name)


class CreatedToken(Token):
    token: str = Field(description="the token itself: shown in this response only, ever")


class TokenList(ApiModel):
    tokens: list[Token]  # oldest first


class CreateTokenRequest(ApiModel):
    name: str = Field(min_length=1, max_length=128)
    # Plain strings, not `ScopeName`: the server names an unknown scope in one line.
    scopes: list[str] = Field(default_factory=lambda: ["read", "write"])
    expires_in_days: int | None = None
    expires_at: datetime | None = None
