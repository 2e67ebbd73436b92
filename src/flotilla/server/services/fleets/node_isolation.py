"""What a node's tasks get: its effective isolation, from what its agent can do
(the probe, `runtime/isolation`) and the server's FLOTILLA_RUN_AS_USER.

Nodes with an agent of their own (`agent`, `ssh` providers, `sim` instances that
are hosts) report their probe in their `hello`; every other node (`local`, `sim`
nodes that are processes here) runs on this machine's agent and has its probe,
taken once at start (`ServerContext.local_isolation`). Two labels show it on every node:
`isolation_probe` (what the agent can do) and `isolation` (what its tasks get).

Read by the scheduler (whose tasks run as their user: `confined_nodes`; which
nodes restrict whose work: `services/fleets/node_trust.py`), node registration
(`services/fleets/nodes.py`, `services/fleets/agent_nodes.py`) and `server/app.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flotilla.config import Settings
from flotilla.server.db.models import NodeModel

log = logging.getLogger("flotilla.server")

FULL = "full"
ISOLATION_LABEL = "isolation"
PROBE_LABEL = "isolation_probe"
# Nodes whose agent is their own (`services/fleets/agent_nodes.py`): these providers, and
# any node with an `agent` label (where it listens; a `sim` instance that is a host).
OWN_AGENT_PROVIDERS = ("agent", "ssh")
AGENT_LABEL = "agent"
NOT_HEARD = "none (its agent has not answered yet)"


def runs_as_user(probe: str, run_as_user: bool | None) -> bool:
    """Whether the server sends tasks for a node with this probe their user's
    account (and limits, and the paths to hide). Unset (auto): only where the node
    can do it all; an agent that is not root ignores it (its probe says why)."""
    if run_as_user is None:
        return probe == FULL
    return run_as_user


def effective_isolation(probe: str, run_as_user: bool | None) -> str:
    """What a node's tasks get: `full`, or `none (why)` / `partial (why)`."""
    if run_as_user is False:
        return (
            "none (FLOTILLA_RUN_AS_USER=0: tasks run as the agent's user, unconfined;"
            " all users are one trust domain, by an admin's choice)"
        )
    if probe == FULL:
        return FULL
    if run_as_user is None and probe.startswith("partial"):
        return (
            f"none (FLOTILLA_RUN_AS_USER is unset, so it is on only where isolation is full;"
            f" here it is {probe}: FLOTILLA_RUN_AS_USER=1 uses what there is)"
        )
    if probe.startswith(("none", "partial")):
        return probe
    return f"none (unknown isolation: {probe or 'not reported'})"


def isolates(effective: str) -> bool:
    return effective == FULL


def has_own_agent(node: NodeModel) -> bool:
    """Whether `node` is a host with an agent of its own (not this machine's)."""
    return node.provider in OWN_AGENT_PROVIDERS or bool((node.labels or {}).get(AGENT_LABEL))


def node_probe(node: NodeModel, local_probe: str) -> str:
    """What the agent that runs `node`'s tasks can do."""
    labels = node.labels or {}
    if not has_own_agent(node):
        return local_probe
    # Rows from before `isolation_probe` existed carry the probe as `isolation`.
    return str(labels.get(PROBE_LABEL) or labels.get(ISOLATION_LABEL) or NOT_HEARD)


def node_isolation(node: NodeModel, local_probe: str, run_as_user: bool | None) -> str:
    return effective_isolation(node_probe(node, local_probe), run_as_user)


def isolation_labels(probe: str, run_as_user: bool | None) -> dict[str, str]:
    return {PROBE_LABEL: probe, ISOLATION_LABEL: effective_isolation(probe, run_as_user)}


def confined_nodes(
    nodes: Iterable[NodeModel], local_probe: str, run_as_user: bool | None
) -> frozenset[str]:
    """Of `nodes`, those whose tasks run as their user's account."""
    if run_as_user is False:
        return frozenset()
    return frozenset(
        node.name for node in nodes if runs_as_user(node_probe(node, local_probe), run_as_user)
    )


def log_isolation(settings: Settings, local_probe: str) -> None:
    """Say at start what this machine's tasks get; a warning where they are not
    isolated, since then the local node runs only trusted users' work."""
    effective = effective_isolation(local_probe, settings.run_as_user)
    if isolates(effective):
        log.info("tasks on this machine run as their users' accounts (isolation: full)")
        return
    if settings.run_as_user is False:
        log.warning("tasks run unisolated on every node: %s", effective)
        return
    asked = " although FLOTILLA_RUN_AS_USER=1 asks for it" if settings.run_as_user else ""
    log.warning(
        "this machine cannot isolate tasks%s (isolation: %s): its nodes run only the work"
        " of admins and of users an admin trusts there (flo node trust local --user NAME)",
        asked,
        effective,
    )
