"""Server status, the caller's identity, the instance sizes (`/api/info/servers`,
which saturn-client reads for `sc options`) and where the SSH gateway listens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from flotilla import __version__
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.users import get_user, user_view
from flotilla.server.services.views import API_VERSION
from flotilla.server.ssh.gateway import gateway_info

router = APIRouter(prefix="/api", tags=["status"])


@router.get("/status")
async def status(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return {
        "status": "ok",
        "version": API_VERSION,
        "flotilla_version": __version__,
        "backend": ctx.backend.name,
    }


@router.get("/user")
async def user(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    """The caller (Saturn's shape), with their groups, project roles and what this
    credential may do (`scopes`; `admin` is true only with the admin scope)."""
    async with ctx.sessions() as session:
        view = await user_view(session, await get_user(session, caller.user_id))
    view.update(admin=caller.is_admin, scopes=sorted(caller.scopes), auth_method=caller.auth_method)
    return view


@router.get("/info/servers")
async def servers(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    sizes = {}
    for node in ctx.backend.nodes():
        sizes[node.name] = {
            "name": node.name,
            "display": node.name,
            "display_name": node.name,
            "cores": node.cpus,
            "memory": f"{node.memory_bytes // 2**30}Gi",
            "gpu": len(node.gpus),
            "gpu_type": node.gpu_type,
            "hardware_type": "gpu" if node.gpus else "cpu",
            "cloud": ctx.backend.name,
            "price_per_hour": None,
            "description": "this machine",
        }
    return {"sizes": sizes, "auto_shutoff": ["Never"], "disk_space": []}


@router.get("/ssh")
async def ssh(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    """The SSH gateway: its port and host key, so `flo ssh` can connect and check
    the host without trusting it on first use."""
    return gateway_info(ctx.ssh_gateway)
