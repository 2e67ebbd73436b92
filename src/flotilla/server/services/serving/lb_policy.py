"""The network policy of load balancers: which backends and listen addresses the
load balancers of ordinary users may have. Platform admins set it (`GET|PUT
/api/load_balancers/policy`, `flo lb policy`); it is stored in the settings table
like the scheduler policy.

Why: the data plane runs inside the server, so a listener's backend is reached
from the server's own network position. A user's load balancer towards
`127.0.0.1:5432` would hand out the server's loopback-only services (a database
that trusts local connections), one towards `169.254.169.254` the cloud's
instance credentials, and a listener on `0.0.0.0` would publish them on every
interface. So, unless the policy allows it, a load balancer of a non-admin may
not route to:

- loopback (127.0.0.0/8, ::1), unspecified (0.0.0.0/8, ::), link-local
  (169.254.0.0/16, fe80::/10: the metadata services), the IPv6 metadata address
  fd00:ec2::254, multicast and broadcast, nor IPv4-mapped forms of these;
- any address of this server itself (one a socket here can bind to);
- and never, whatever the policy, a port the server listens on at one of its own
  addresses (the API, the SSH gateway, any load balancer or deployment listener):
  that would bypass their own checks (a listener's source allow-list).

It may listen on the server's own address (the default, FLOTILLA_HOST) or on
loopback; elsewhere only within `allowed_listen_cidrs`, and on the wildcard
(0.0.0.0, ::) only with `allow_wildcard_listen`.

"Admin" means both the recipe's owner and whoever applied its current version are
platform admins: an admin's load balancer is theirs to aim anywhere, and a project
member who edits it is checked like anyone. Deployments' own load balancers are not
recipes of this type: their backends are the deployment's replicas, which the
reconciler picks, so they are not checked. Backends are IP literals (the recipe
refuses host names), so no DNS answer can change where a checked backend leads.

Called at apply (`services/load_balancers.check_ports`) and at every load balancer
reconcile (`reconcilers/load_balancers.py`), which stops a listener a tightened
policy now refuses.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.api.load_balancers import LoadBalancerPolicy
from flotilla.errors import ClientError, FieldProblem
from flotilla.server.db.models import RecipeModel, RecipeVersionModel, SettingModel, UserModel
from flotilla.server.services.events import record_event

POLICY_KEY = "load_balancer_policy"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Refused backends for non-admins, each with what to call it.
_FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("127.0.0.0/8", "a loopback address"),
    ("::1/128", "a loopback address"),
    ("0.0.0.0/8", "an unspecified address"),
    ("::/128", "the unspecified address"),
    ("169.254.0.0/16", "a link-local address (cloud metadata services live there)"),
    ("fe80::/10", "a link-local address"),
    ("fd00:ec2::254/128", "a cloud metadata address"),
    ("224.0.0.0/4", "a multicast address"),
    ("ff00::/8", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
)
FORBIDDEN_BACKENDS: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(cidr), why) for cidr, why in _FORBIDDEN
)
WILDCARDS = frozenset({"0.0.0.0", "::"})


class PolicyRefused(ClientError):
    def __init__(self, problems: list[FieldProblem]) -> None:
        summary = "; ".join(f"{p.path}: {p.message}" for p in problems)
        super().__init__(
            f"refused by the load balancer policy: {summary} (a platform admin may allow "
            "it: `flo lb policy`)",
            "lb_policy",
            403,
            problems,
        )


async def load_policy(session: AsyncSession) -> LoadBalancerPolicy:
    row = await session.get(SettingModel, POLICY_KEY)
    return LoadBalancerPolicy.model_validate(row.value if row else {})


async def save_policy(
    session: AsyncSession, policy: LoadBalancerPolicy, actor: str, now: datetime
) -> None:
    value = policy.model_dump(mode="json")
    row = await session.get(SettingModel, POLICY_KEY)
    if row is None:
        session.add(SettingModel(key=POLICY_KEY, value=value, updated_at=now))
    else:
        row.value, row.updated_at = value, now
    record_event(
        session, kind="policy", message="load balancer policy replaced", actor=actor, now=now
    )


async def exempt_recipes(session: AsyncSession, recipes: Sequence[RecipeModel]) -> set[str]:
    """Ids of the recipes whose owner and current version's author are both
    platform admins (two queries, whatever the number of recipes)."""
    if not recipes:
        return set()
    admins = set(
        (await session.execute(select(UserModel.name).where(UserModel.is_admin.is_(True))))
        .scalars()
        .all()
    )
    candidates = [r for r in recipes if r.owner in admins]
    if not candidates:
        return set()
    rows = await session.execute(
        select(
            RecipeVersionModel.recipe_id, RecipeVersionModel.version, RecipeVersionModel.created_by
        ).where(RecipeVersionModel.recipe_id.in_([r.id for r in candidates]))
    )
    versions = {r.id: r.version for r in candidates}
    return {
        recipe_id
        for recipe_id, version, author in rows
        if versions.get(recipe_id) == version and author in admins
    }


def is_local_address(address: str) -> bool:
    """Whether `address` is one of this machine's own: a socket can bind to it."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def _normal(address: str) -> Address:
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    return parsed


def _within(address: Address, cidrs: Sequence[str]) -> bool:
    return any(address in ipaddress.ip_network(cidr) for cidr in cidrs)


def backend_refusal(
    address: str,
    port: int,
    policy: LoadBalancerPolicy,
    own_ports: Mapping[int, str],
    is_local: Callable[[str], bool] = is_local_address,
) -> str | None:
    """Why a non-admin's load balancer may not route to `address:port`, or None."""
    parsed = _normal(address)
    local = parsed.is_loopback or is_local(str(parsed))
    if local and port in own_ports:
        return f"port {port} here is {own_ports[port]}"
    if _within(parsed, policy.allowed_backend_cidrs):
        return None
    for network, why in FORBIDDEN_BACKENDS:
        if parsed.version == network.version and parsed in network:
            return f"{address} is {why}"
    if local:
        return f"{address} is an address of this server"
    return None


def listen_refusal(host: str | None, policy: LoadBalancerPolicy, server_host: str) -> str | None:
    """Why a non-admin's listener may not listen on `host`, or None."""
    if host is None or host == server_host:
        return None  # the server's own address, which the README promises
    parsed = _normal(host)
    if host in WILDCARDS or parsed.is_unspecified:
        if policy.allow_wildcard_listen:
            return None
        return f"{host} listens on every interface (allow_wildcard_listen)"
    if parsed.is_loopback or _within(parsed, policy.allowed_listen_cidrs):
        return None
    return f"{host} is not the server's address ({server_host}), loopback or allowed_listen_cidrs"


def listener_problems(
    spec: Mapping[str, Any],
    policy: LoadBalancerPolicy,
    server_host: str,
    own_ports: Mapping[int, str],
    is_local: Callable[[str], bool] = is_local_address,
) -> dict[int, list[FieldProblem]]:
    """A stored load balancer spec's refusals, by listener index."""
    out: dict[int, list[FieldProblem]] = {}
    for i, listener in enumerate(spec.get("listeners") or []):
        at = f"spec.listeners[{i}]"
        problems = []
        why = listen_refusal(listener.get("host"), policy, server_host)
        if why:
            problems.append(FieldProblem(f"{at}.host", why))
        for j, backend in enumerate(listener.get("backends") or []):
            why = backend_refusal(
                str(backend["address"]), int(backend["port"]), policy, own_ports, is_local
            )
            if why:
                problems.append(FieldProblem(f"{at}.backends[{j}]", why))
        if problems:
            out[i] = problems
    return out
