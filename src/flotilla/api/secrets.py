"""The secret store (`/api/secrets`): a secret's metadata, owned by a user, a group
or a project. The value goes in once, in the request, and never comes back."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flotilla.api.base import ApiModel

OwnerKindName = Literal["user", "group", "project"]


class Secret(ApiModel):
    id: str
    name: str
    owner: str
    owner_kind: OwnerKindName
    description: str
    created_at: str
    updated_at: str  # when the value or description was last replaced


class SecretList(ApiModel):
    secrets: list[Secret]  # by owner, then name


class PutSecretRequest(ApiModel):
    name: str = Field(min_length=1, max_length=128)
    value: str = Field(repr=False)
    owner: str | None = Field(None, description="user, group or project; default: the caller")
    owner_kind: OwnerKindName | None = Field(None, description="default: inferred from `owner`")
    description: str = ""
