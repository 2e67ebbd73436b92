"""The HTTP front door of deployments on the Flotilla server: `/d/~{owner}/{name}/…`,
or `/d/{name}/…` while no other deployment has that name.

Names are unique per owner only, so the canonical address names the owner (a user
or group; `~` starts no user, group or deployment name, so the two forms can't be
confused). The bare name answers only while exactly one live deployment in all of
Flotilla has it — whoever asks, so a link means the same deployment to everyone;
when several have it, 409 names the qualified addresses the caller may use.

It authenticates the caller unless the deployment's route is public, checks that
they may use it (route `visibility`: `owner` — the owner, their groups, the
project's members and the `viewers`; `org` — anyone signed in; `public`), counts
the request for autoscaling, and proxies it to one of the ready replicas its load
balancer routes to (picked with the deployment's algorithm), streaming both ways.
An address the caller may not use answers as a missing one does (401 without a
credential, 404 with one), so neither reveals what exists. A credential's scopes
hold here as on the API: a read-only token sends only GET, HEAD and OPTIONS. The
caller's Flotilla credential is not passed on. A deployment scaled to zero is asked
for a replica and the request waits for it instead of failing. WebSocket upgrades
are not proxied.

TCP routes have no front door: their load balancer port is reached directly and
guarded by the route's `allow` list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from flotilla.errors import ClientError, Conflict, Forbidden, NotFound, Unauthorized
from flotilla.lb.choice import Selector, make_selector
from flotilla.recipes.deployment import DeploymentSpec, Route, Visibility
from flotilla.recipes.types import DEPLOYMENT
from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.models import DeploymentStateModel, RecipeModel
from flotilla.server.identity import Identity, Scope
from flotilla.server.security import authenticate
from flotilla.server.services.serving.deployments import front_door_path, spec_of
from flotilla.server.services.serving.load_balancers import plane_key

router = APIRouter(include_in_schema=False)

# Not forwarded: hop-by-hop headers, and the caller's Flotilla credential.
_DROPPED = {
    "authorization",
    "connection",
    "host",
    "keep-alive",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


def may_use(identity: Identity | None, recipe: RecipeModel, spec: DeploymentSpec) -> bool:
    route = http_route(spec)
    if route.visibility == Visibility.PUBLIC:
        return True
    if identity is None:
        return False
    if route.visibility == Visibility.ORG or identity.can_read(recipe.owner, recipe.project):
        return True
    for viewer in spec.viewers:
        if viewer.route and viewer.route.get("container_port") != route.container_port:
            continue
        if viewer.user == identity.name or (viewer.group and viewer.group in identity.groups):
            return True
    return False


def http_route(spec: DeploymentSpec) -> Route:
    for route in spec.routes:
        if route.protocol == "http":
            return route
    raise NotFound(f"an HTTP route of deployment {spec.name!r}")


METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Without side effects: a read-only credential may send them, and they are retried.
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Address:
    """What the caller asked for: a deployment name, qualified by its owner or not."""

    owner: str | None
    name: str

    def __str__(self) -> str:
        return f"~{self.owner}/{self.name}" if self.owner is not None else self.name


# The qualified routes come first: `/d/{name}/{path}` would match them too.
@router.api_route("/d/~{owner}/{name}", methods=METHODS)
@router.api_route("/d/~{owner}/{name}/{path:path}", methods=METHODS)
async def owned_front_door(
    request: Request, owner: str, name: str, path: str = ""
) -> StreamingResponse:
    return await _serve(request, Address(owner, name), path)


@router.api_route("/d/{name}", methods=METHODS)
@router.api_route("/d/{name}/{path:path}", methods=METHODS)
async def front_door(request: Request, name: str, path: str = "") -> StreamingResponse:
    return await _serve(request, Address(None, name), path)


async def _serve(request: Request, address: Address, path: str) -> StreamingResponse:
    ctx: ServerContext = request.app.state.ctx
    identity = await _caller(request)
    recipe, spec, state = await _find(ctx, address, identity)
    ctx.request_meter.hit(recipe.id)
    port = int(state.route_ports[str(http_route(spec).container_port)])
    await _wait_for_replica(ctx, recipe, port, spec.replica_wait_seconds())
    selector = _routes(request).selector(ctx, recipe, spec, port)
    return await _forward(request, ctx, recipe.id, selector, path)


async def _caller(request: Request) -> Identity | None:
    """Who sent the request (None: no credential), refused before any look-up when
    the credential's scopes don't cover the method, so that answer says nothing
    about what exists either."""
    if not request.headers.get("authorization"):
        return None
    identity = await authenticate(request)
    if request.method not in SAFE and Scope.WRITE not in identity.scopes:
        raise Forbidden(
            "this token is read-only (it lacks the 'write' scope): through the front "
            f"door it may send only {', '.join(sorted(SAFE))}, not {request.method}"
        )
    if request.method in SAFE and Scope.READ not in identity.scopes:
        raise Forbidden("this credential lacks the 'read' scope")
    return identity


async def _find(
    ctx: ServerContext, address: Address, identity: Identity | None
) -> tuple[RecipeModel, DeploymentSpec, DeploymentStateModel]:
    """The one deployment `address` means, if the caller may use it."""
    async with ctx.sessions() as session:
        query = select(RecipeModel).where(
            RecipeModel.type == DEPLOYMENT,
            RecipeModel.name == address.name,
            RecipeModel.deleted_at.is_(None),
        )
        if address.owner is not None:
            query = query.where(RecipeModel.owner == address.owner)
        found = (await session.execute(query.order_by(RecipeModel.owner))).scalars().all()
        usable = [(r, spec) for r in found if (spec := _usable(identity, r)) is not None]
        if len(found) == 1 and usable:
            recipe, spec = usable[0]
            state = await session.get(DeploymentStateModel, recipe.id)
            if state is None:  # applied a moment ago: the reconciler hasn't seen it yet
                raise ClientError(
                    f"deployment {address} is starting: try again in a moment",
                    "unavailable",
                    503,
                )
            return recipe, spec, state
    if usable:
        qualified = ", ".join(front_door_path(r.owner, r.name) for r, _ in usable)
        raise Conflict(
            f"several deployments are named {address.name!r}: use the address of the one "
            f"you mean ({qualified})"
        )
    raise _missing(address, identity, found)


def _usable(identity: Identity | None, recipe: RecipeModel) -> DeploymentSpec | None:
    spec = spec_of(recipe)
    if not any(route.protocol == "http" for route in spec.routes):
        return None
    return spec if may_use(identity, recipe, spec) else None


def _missing(
    address: Address, identity: Identity | None, found: Sequence[RecipeModel]
) -> ClientError:
    """The answer for an address the caller can't use: the same whether or not
    anything is there, unless the caller may read what is (then it says why)."""
    if identity is None:
        # 401, not 404: a caller without a credential is told what to send, and a
        # deployment that does exist then answers.
        return Unauthorized(
            f"no public deployment {address}: one that is not public needs an API token "
            "(Authorization: token …)"
        )
    if any(identity.can_read(r.owner, r.project) for r in found):
        return NotFound(f"an HTTP route of deployment {address}")
    return NotFound(f"deployment {address}")


async def _wait_for_replica(
    ctx: ServerContext, recipe: RecipeModel, port: int, wait_seconds: float
) -> None:
    """Return once the route's listener has a backend; ask for one if there is none
    (a deployment scaled to zero). 503 after `wait_seconds` (`wait_for_replica`)."""
    asked = False
    deadline = time.monotonic() + wait_seconds
    while not _has_backend(ctx, recipe, port):
        if not asked:
            async with ctx.transaction() as session:
                state = await session.get(DeploymentStateModel, recipe.id)
                if state is not None:
                    state.demand_at = ctx.clock.now()
            ctx.changes.announce(Change.DEPLOYMENTS)
            asked = True
        if time.monotonic() > deadline:
            raise ClientError(
                f"deployment {recipe.name} has had no replica ready for {wait_seconds:g} s "
                "(its `wait_for_replica`)",
                "unavailable",
                503,
            )
        await asyncio.sleep(0.1)


def _online_backends(ctx: ServerContext, recipe: RecipeModel, port: int) -> list[tuple[str, int]]:
    """The ready replicas of one route, as the load balancer sees them now."""
    snapshot = ctx.lb_plane.snapshot(plane_key(recipe))
    if snapshot is None:
        return []
    return [
        (backend["address"], backend["port"])
        for listener in snapshot["listeners"]
        if listener["port"] == port
        for backend in listener["backends"]
        if backend["state"] == "online"
    ]


def _has_backend(ctx: ServerContext, recipe: RecipeModel, port: int) -> bool:
    return bool(_online_backends(ctx, recipe, port))


@dataclass(eq=False)
class Target:
    """A replica as the front door picks it (the data plane's selector protocol)."""

    key: str
    address: str
    port: int
    online: bool = True
    active: int = 0  # requests in flight


class Routes:
    """The front door balances requests itself, with the deployment's algorithm
    (source-IP hashing on the *client's* address): proxying through the load
    balancer would make every request come from this server's address and ride one
    pooled connection, i.e. land on one replica."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[str, ...], Selector[Target]]] = {}

    def selector(
        self, ctx: ServerContext, recipe: RecipeModel, spec: DeploymentSpec, port: int
    ) -> Selector[Target]:
        backends = _online_backends(ctx, recipe, port)
        keys = (*sorted(f"{a}:{p}" for a, p in backends), spec.algorithm.value)
        cached = self._cache.get(recipe.id)
        if cached is None or cached[0] != keys:
            targets = [Target(f"{a}:{p}", a, p) for a, p in backends]
            cached = self._cache[recipe.id] = (keys, make_selector(spec.algorithm, targets))
        return cached[1]


def _routes(request: Request) -> Routes:
    routes: Routes | None = getattr(request.app.state, "frontdoor_routes", None)
    if routes is None:
        routes = request.app.state.frontdoor_routes = Routes()
    return routes


async def _forward(
    request: Request,
    ctx: ServerContext,
    deployment_id: str,
    selector: Selector[Target],
    path: str,
) -> StreamingResponse:
    """Send the request to a replica; on a refused connection try the next one (the
    request never left), and a request without side effects also after a failure on
    the way (a pooled connection the replica had just closed)."""
    meter = ctx.request_meter
    meter.started(deployment_id)  # in flight from now: a slow answer is load too
    try:
        upstream, target = await _send(request, selector, path)
    except BaseException:
        meter.finished(deployment_id)
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            target.active -= 1
            meter.finished(deployment_id)
            await upstream.aclose()

    response_headers: dict[str, Any] = {
        k: v for k, v in upstream.headers.items() if k.lower() not in _DROPPED
    }
    return StreamingResponse(body(), status_code=upstream.status_code, headers=response_headers)


async def _send(
    request: Request, selector: Selector[Target], path: str
) -> tuple[httpx.Response, Target]:
    client = _client(request)
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROPPED]
    content = await request.body()
    ip = request.client.host if request.client else ""
    tried: list[Target] = []
    target = selector.pick(ip)
    while target is not None:
        url = httpx.URL(f"http://{target.address}:{target.port}/{path}")
        if request.url.query:  # an empty one would still send a bare `?`
            url = url.copy_with(query=request.url.query.encode())
        target.active += 1
        try:
            upstream = await client.send(
                client.build_request(request.method, url, headers=headers, content=content),
                stream=True,
            )
            return upstream, target
        except httpx.TransportError as e:
            target.active -= 1
            tried.append(target)
            if not isinstance(e, httpx.ConnectError) and (
                request.method not in SAFE or len(tried) > 1
            ):
                raise ClientError(f"the deployment did not answer: {e}", "bad_gateway", 502) from e
            target = selector.fallback(ip, tried)
    raise ClientError("no replica of the deployment answered", "bad_gateway", 502)


def _client(request: Request) -> httpx.AsyncClient:
    """One pooled client per app: keep-alive connections to the replicas."""
    client: httpx.AsyncClient | None = getattr(request.app.state, "frontdoor_client", None)
    if client is None:
        client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))
        request.app.state.frontdoor_client = client
    return client
