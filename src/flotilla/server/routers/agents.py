"""Node agents joining: `POST /api/agents/join-tokens` (platform admins) makes a
one-time join token; `POST /api/agents/join` spends one, with the node's CSR, for its
certificate and the CA's (`flo agent join`). The join is authenticated by the token
alone: the host has no account. `GET /api/agents` lists the joined nodes'
certificates (admins). The logic is in `services/fleets/agents.py`."""

from __future__ import annotations

import ipaddress
import re

from fastapi import APIRouter, Request

from flotilla.api.agents import AgentList, CreateJoinTokenRequest, Joined, JoinRequest, JoinToken
from flotilla.api.base import errors
from flotilla.errors import FieldProblem, InvalidRecipe
from flotilla.runtime.tls import DEFAULT_AGENT_PORT
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.fleets import agents as agent_service

router = APIRouter(prefix="/api/agents", tags=["agents"])


@router.post("/join-tokens", status_code=201, responses=errors(403, 422))
async def create_join_token(ctx: Ctx, caller: Caller, body: CreateJoinTokenRequest) -> JoinToken:
    caller.require_admin()
    async with ctx.transaction() as session:
        made = await agent_service.create_join_token(
            session,
            ctx.secret_box,
            node=body.node,
            ttl_seconds=body.expires_in_seconds,
            actor=caller.name,
            now=ctx.clock.now(),
        )
    return JoinToken(
        token=made.token,
        node=made.node,
        expires_at=made.expires_at.isoformat(),
        ca_sha256=made.ca_sha256,
    )


# 401: the join token is unknown, spent or expired (the only credential here).
@router.post("/join", responses=errors(409, 422))
async def join(ctx: Ctx, body: JoinRequest, request: Request) -> Joined:
    endpoint = agent_endpoint(body.listen, request.client.host if request.client else None)
    async with ctx.transaction() as session:
        joined = await agent_service.join(
            session,
            ctx.secret_box,
            token=body.token,
            node=body.node,
            csr=body.csr,
            endpoint=endpoint,
            now=ctx.clock.now(),
        )
    return Joined.model_validate(joined)


@router.get("", responses=errors(403))
async def list_agents(ctx: Ctx, caller: Caller) -> AgentList:
    caller.require_admin()
    async with ctx.sessions() as session:
        return AgentList.model_validate({"agents": await agent_service.joined_nodes(session)})


def agent_endpoint(listen: str | None, client_host: str | None) -> str:
    """`tls://HOST:PORT` of a joining agent: as it says, or where its join came from."""
    if listen is None:
        if not client_host:
            raise InvalidRecipe([FieldProblem("listen", "required: the request has no address")])
        listen = f"{client_host}:{DEFAULT_AGENT_PORT}"
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRecipe([FieldProblem("listen", f"{listen!r} is not HOST:PORT")])
    if not _is_host(host):
        raise InvalidRecipe([FieldProblem("listen", f"{host!r} is not a host name or address")])
    return f"tls://[{host}]:{port}" if ":" in host else f"tls://{host}:{port}"


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)


def _is_host(host: str) -> bool:
    """An IP address or a DNS name: the node's address goes into load balancer
    configuration and other ranks' environment."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return _HOST_NAME.fullmatch(host) is not None
