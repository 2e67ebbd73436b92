"""Server status and Saturn's account endpoints (`/api/status`, `/api/user`,
`/api/info/servers`, `/api/orgs`) and the SSH gateway (`/api/ssh`); saturn-client
reads the sizes for `sc options` and the org for `primary_org`."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from flotilla.api.base import ApiModel
from flotilla.api.users import User


class ServerStatus(ApiModel):
    status: str
    version: str  # the Saturn API level (saturn-client checks it)
    flotilla_version: str
    backend: str


class Me(User):
    """The caller; `admin` is true only with the admin scope."""

    scopes: list[str]  # what this credential may do
    auth_method: str


class Size(ApiModel):
    name: str
    display: str
    display_name: str
    cores: int = Field(description="0 when the provider does not say")
    memory: str | None  # `64Gi`
    gpu: int
    gpu_type: str | None
    hardware_type: str  # `gpu` or `cpu`
    cloud: str
    price_per_hour: float | None
    description: str


class ServerSizes(ApiModel):
    sizes: dict[str, Size]  # by name: this server's machines, then providers' types
    auto_shutoff: list[str]
    disk_space: list[Any]


class Org(ApiModel):
    id: str
    name: str
    is_primary: bool
    description: str


class OrgList(ApiModel):
    orgs: list[Org]
    next_key: str | None


class SshGateway(ApiModel):
    """Only `enabled` when the gateway is off."""

    enabled: bool
    port: int | None = None
    host_key: str | None = None
    fingerprint: str | None = None
    login: str | None = None  # what the SSH user name may say
