"""Users and service accounts (`/api/users`, `/api/service_accounts`), their SSH
keys, and who a recipe may be owned by (`/api/orgs/{org}/owners`). The shapes are
Saturn's, so saturn-client (`sc`) reads them: `username`, `next_key` and the
`{"service_account": ...}` envelope stay as they are."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field

from flotilla.api.base import ApiModel
from flotilla.recipes.identity import RoleName


class SshKey(ApiModel):
    key: str  # the line as stored, in canonical form
    type: str | None  # None (and no fingerprint) for a key stored before keys were checked
    fingerprint: str | None  # `SHA256:…`, as `ssh-keygen -l` prints it
    comment: str


class UserBrief(ApiModel):
    """What anyone sees of a user they share a group or project with."""

    id: str
    username: str
    full_name: str
    service_account: bool


class User(UserBrief):
    """The user in full: for platform admins and the user themselves."""

    unix_name: str  # the account their tasks run as on nodes
    uid: int
    gid: int  # of the user's private group: the same number as `uid`
    email: str | None
    admin: bool
    locked: bool
    active: bool  # Saturn's name for "not locked"
    has_password: bool
    ssh_keys: list[SshKey]
    groups: list[str]
    projects: dict[str, RoleName] = Field(description="project name -> the user's role in it")
    created_at: str


class UserList(ApiModel):
    users: list[User | UserBrief]  # in full where the caller may see it so
    next_key: str | None  # Saturn's paging key; every user is on one page


class ServiceAccountCreated(ApiModel):
    service_account: User


class ServiceAccountList(ApiModel):
    service_accounts: list[User | UserBrief]
    next_key: str | None


class Owner(ApiModel):
    id: str
    name: str
    identity_type: Literal["user", "group"]
    description: str | None = Field(
        default=None, description="the full name or group description; only with `details`"
    )


class OwnerList(ApiModel):
    owners: list[Owner]
    next_key: str | None


class CreateUserRequest(ApiModel):
    username: str = Field(validation_alias=AliasChoices("username", "name"))
    email: str | None = None
    full_name: str = Field("", max_length=256)
    ssh_public_keys: list[str] = Field(default_factory=list)
    admin: bool = False
    password: str | None = None
    # Sent by saturn-client; Flotilla sends no mail.
    send_reset_email: bool = False


class UpdateUserRequest(ApiModel):
    """None (or absent) leaves a field as it is."""

    username: str | None = None
    email: str | None = None
    full_name: str | None = Field(None, max_length=256)
    ssh_public_keys: list[str] | None = None
    admin: bool | None = None
    locked: bool | None = None
    password: str | None = None


class CreateServiceAccountRequest(ApiModel):
    name: str
    full_name: str = Field("", max_length=256)
    admin: bool = False
    # Saturn's fields for cloud IAM roles: accepted so saturn-client works; Flotilla
    # has no cloud roles to attach.
    cloud_role: str | None = None
    auto_associate: bool = False


class AddKeyRequest(ApiModel):
    key: str = Field(validation_alias=AliasChoices("key", "public_key"))
