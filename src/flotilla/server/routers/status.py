"""Server status, the caller's identity, the instance sizes (`/api/info/servers`,
which saturn-client reads for `sc options` and `sc split`), the one organization
this server is (`/api/orgs`, for saturn-client's `primary_org`) and where the SSH
gateway listens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from flotilla import __version__
from flotilla.api.base import errors
from flotilla.api.status import Me, OrgList, ServerSizes, ServerStatus, SshGateway
from flotilla.core.catalog import instance_type
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.routers.usage import ORG
from flotilla.server.services.fleets.fleet_views import offer_views
from flotilla.server.services.identity.users import get_user, user_view
from flotilla.server.services.views import API_VERSION
from flotilla.server.ssh.gateway import gateway_info

router = APIRouter(prefix="/api", tags=["status"])


@router.get("/status", responses=errors())
async def status(ctx: Ctx, caller: Caller) -> ServerStatus:
    return ServerStatus.model_validate(
        {
            "status": "ok",
            "version": API_VERSION,
            "flotilla_version": __version__,
            "backend": ctx.backend.name,
        }
    )


@router.get("/user", responses=errors())
async def user(ctx: Ctx, caller: Caller) -> Me:
    """The caller (Saturn's shape), with their groups, project roles and what this
    credential may do (`scopes`; `admin` is true only with the admin scope)."""
    async with ctx.sessions() as session:
        view = await user_view(session, await get_user(session, caller.user_id))
    view.update(admin=caller.is_admin, scopes=sorted(caller.scopes), auth_method=caller.auth_method)
    return Me.model_validate(view)


@router.get("/info/servers", responses=errors())
async def servers(ctx: Ctx, caller: Caller) -> ServerSizes:
    """Saturn's sizes: this server's own machines (`local`) and every instance type
    a configured provider offers (what `instance_type` may name)."""
    sizes: dict[str, dict[str, Any]] = {}
    for node in ctx.backend.nodes():
        sizes[node.name] = _size(
            node.name,
            node.cpus,
            f"{node.memory_bytes // 2**30}Gi",
            len(node.gpus),
            node.gpu_type,
            ctx.backend.name,
            None,
            "this machine",
        )
    for offer in offer_views(ctx.providers):
        name = offer["instance_type"]
        if name in sizes:
            continue  # cheapest first: the first offer of a type names its price
        cores, memory = _shape(name)
        sizes[name] = _size(
            name,
            cores,
            memory,
            offer["gpus"],
            offer["gpu_type"],
            offer["provider"],
            offer["on_demand_per_hour"],
            f"from provider {offer['provider']} ({offer['region']})",
        )
    return ServerSizes.model_validate({"sizes": sizes, "auto_shutoff": ["Never"], "disk_space": []})


def _shape(instance_type_name: str) -> tuple[int, str | None]:
    """Cores and memory of a catalogued instance type; (0, None) for another one."""
    try:
        kind = instance_type(instance_type_name)
    except KeyError:
        return 0, None
    return kind.vcpus, f"{kind.memory_gib}Gi"


def _size(
    name: str,
    cores: int,
    memory: str | None,
    gpus: int,
    gpu_type: str | None,
    cloud: str,
    price: float | None,
    description: str,
) -> dict[str, Any]:
    # `cores` 0: the provider does not say (saturn-client sorts sizes by it).
    return {
        "name": name,
        "display": name,
        "display_name": name,
        "cores": cores,
        "memory": memory,
        "gpu": gpus,
        "gpu_type": gpu_type,
        "hardware_type": "gpu" if gpus else "cpu",
        "cloud": cloud,
        "price_per_hour": price,
        "description": description,
    }


@router.get("/orgs", responses=errors(422))
async def orgs(ctx: Ctx, caller: Caller, all_orgs: bool = False) -> OrgList:
    """Saturn's organizations: a Flotilla server is one, the primary one."""
    org = {"id": ORG, "name": ORG, "is_primary": True, "description": "this Flotilla server"}
    return OrgList.model_validate({"orgs": [org], "next_key": None})


@router.get("/ssh", responses=errors(), response_model_exclude_unset=True)
async def ssh(ctx: Ctx, caller: Caller) -> SshGateway:
    """The SSH gateway: its port and host key, so `flo ssh` can connect and check
    the host without trusting it on first use."""
    return SshGateway.model_validate(gateway_info(ctx.ssh_gateway))
