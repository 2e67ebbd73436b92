"""Whose work a node that cannot isolate runs: platform admins' and that of the
users and groups an admin trusts there; never anyone else's (no silent single
trust domain: on such a node every task runs as the agent's user, with the
agent's files in reach). Unless an admin turned isolation off for the whole
server (FLOTILLA_RUN_AS_USER=0): that is one trust domain by choice, shown as
every node's isolation, and restricts nothing.

The trust list lives on the node, as the `trusted` label: `{"users": [names],
"groups": [names], "ids": [their ids]}` (ids, so a user deleted and re-created
under the same name is not trusted by accident). Set by an admin through
`PUT /api/nodes/{name}/trusted` (`set_trusted`); read by the scheduler each
cycle (`bar_untrusted`) to keep runs off the nodes their user is not trusted on,
with a reason that says how to allow it. Who counts as a run's user is who its
tasks would run as (`launch.pick_run_user`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import ClientError, FieldProblem
from flotilla.server.db.models import (
    GroupMemberModel,
    GroupModel,
    NodeModel,
    RecipeModel,
    RecipeVersionModel,
    UserModel,
)
from flotilla.server.services.events import record_event
from flotilla.server.services.fleets.node_isolation import isolates, node_isolation
from flotilla.server.services.fleets.nodes import get_node
from flotilla.server.services.runs.launch import PERSON_TRIGGERS, pick_run_user
from flotilla.server.services.runs.queue_head import Waiting
from flotilla.server.services.runs.scheduling import Barred, Snapshot

TRUST_LABEL = "trusted"


@dataclass(frozen=True)
class RunUser:
    name: str
    id: str
    admin: bool
    group_ids: frozenset[str]


def trusted_ids(node: NodeModel) -> frozenset[str]:
    trust = (node.labels or {}).get(TRUST_LABEL) or {}
    return frozenset(str(i) for i in trust.get("ids", []))


def is_trusted(node: NodeModel, user: RunUser | None) -> bool:
    if user is None:
        return False
    if user.admin:
        return True
    ids = trusted_ids(node)
    return user.id in ids or bool(user.group_ids & ids)


async def bar_untrusted(
    session: AsyncSession, snapshot: Snapshot, local_probe: str, run_as_user: bool | None
) -> dict[str, Barred]:
    """For each pending run, the schedulable nodes that cannot isolate and do not
    trust its user, with the reason to give if that is what keeps it waiting.
    Nothing (and no query) while every schedulable node isolates, or where an
    admin turned isolation off (FLOTILLA_RUN_AS_USER=0: one trust domain, chosen
    and shown on every node, not silent)."""
    if run_as_user is False:
        return {}
    weak = {
        n.name: (n, label)
        for n in snapshot.schedulable()
        if not isolates(label := node_isolation(n, local_probe, run_as_user))
    }
    if not weak or not snapshot.pending:
        return {}
    users = await run_users(session, snapshot.pending)
    barred: dict[str, Barred] = {}
    for waiting in snapshot.pending:
        user = users.get(waiting.run.id)
        names = sorted(name for name, (node, _) in weak.items() if not is_trusted(node, user))
        if names:
            reason = _reason(names, [weak[n][1] for n in names], user)
            barred[waiting.run.id] = Barred(frozenset(names), reason)
    return barred


def _reason(names: list[str], labels: list[str], user: RunUser | None) -> str:
    if len(names) == 1:
        where = f"node {names[0]} cannot isolate tasks (isolation: {labels[0]})"
    else:
        where = f"nodes {', '.join(names)} cannot isolate tasks"
    node = names[0] if len(names) == 1 else "NODE"
    if user is None:
        return (
            f"waiting: {where}, and the user this run is for no longer exists: only an"
            " admin's or a trusted user's work runs there"
        )
    return (
        f"waiting: {where} and {user.name} is not trusted there; an admin can allow it:"
        f" flo node trust {node} --user {user.name}"
    )


async def run_users(session: AsyncSession, pending: Sequence[Waiting]) -> dict[str, RunUser]:
    """`pick_run_user` for many runs in a few queries (the scheduler's cycle)."""
    names = {w.recipe.owner for w in pending}
    names |= {w.run.created_by for w in pending if w.run.trigger in PERSON_TRIGGERS}
    current = (RecipeModel.id == RecipeVersionModel.recipe_id) & (
        RecipeModel.version == RecipeVersionModel.version
    )
    query = (
        select(RecipeVersionModel.recipe_id, RecipeVersionModel.created_by)
        .join(RecipeModel, current)
        .where(RecipeModel.id.in_({w.recipe.id for w in pending}))
    )
    appliers = {recipe_id: by for recipe_id, by in await session.execute(query) if by}
    names |= set(appliers.values())
    found = (await session.execute(select(UserModel).where(UserModel.name.in_(names)))).scalars()
    users = {u.name: u for u in found}
    group_names = set(
        (await session.execute(select(GroupModel.name).where(GroupModel.name.in_(names)))).scalars()
    )
    chosen: dict[str, UserModel] = {}
    for w in pending:
        applier = appliers.get(w.recipe.id)
        user = pick_run_user(w.run, w.recipe, users, w.recipe.owner in group_names, applier)
        if user is not None:
            chosen[w.run.id] = user
    memberships: dict[str, set[str]] = {}
    ids = {u.id for u in chosen.values()}
    rows = await session.execute(
        select(GroupMemberModel.user_id, GroupMemberModel.group_id).where(
            GroupMemberModel.user_id.in_(ids)
        )
    )
    for user_id, group_id in rows:
        memberships.setdefault(user_id, set()).add(group_id)
    return {
        run_id: RunUser(u.name, u.id, u.is_admin, frozenset(memberships.get(u.id, ())))
        for run_id, u in chosen.items()
    }


async def set_trusted(
    session: AsyncSession,
    name: str,
    users: Sequence[str],
    groups: Sequence[str],
    actor: str,
    now: datetime,
) -> NodeModel:
    """Replace node `name`'s trust list. NotFound for an unknown node; a 422 naming
    the field for a user or group that does not exist."""
    node = await get_node(session, name)
    found_users = await _by_name(session, UserModel, users)
    found_groups = await _by_name(session, GroupModel, groups)
    problems = [
        FieldProblem(f"users[{i}]", f"no user named {n!r}")
        for i, n in enumerate(users)
        if n not in found_users
    ] + [
        FieldProblem(f"groups[{i}]", f"no group named {n!r}")
        for i, n in enumerate(groups)
        if n not in found_groups
    ]
    if problems:
        summary = "; ".join(f"{p.path}: {p.message}" for p in problems)
        raise ClientError(f"cannot trust them on {name}: {summary}", "unknown_name", 422, problems)
    ids = {found_users[n] for n in users} | {found_groups[n] for n in groups}
    trust: dict[str, Any] = {
        "users": sorted(set(users)),
        "groups": sorted(set(groups)),
        "ids": sorted(ids),
    }
    labels = {k: v for k, v in (node.labels or {}).items() if k != TRUST_LABEL}
    node.labels = {**labels, TRUST_LABEL: trust} if trust["ids"] else labels
    record_event(
        session,
        kind="node",
        message=f"{node.name}: trusted {describe_trust(node) or 'nobody'}",
        actor=actor,
        now=now,
        node_id=node.id,
        recipe_id=node.fleet_id,
    )
    return node


def describe_trust(node: NodeModel) -> str:
    """`users alice, bob; groups ml` (empty when nobody is trusted)."""
    trust = (node.labels or {}).get(TRUST_LABEL) or {}
    parts = [f"{kind} {', '.join(trust[kind])}" for kind in ("users", "groups") if trust.get(kind)]
    return "; ".join(parts)


async def _by_name(
    session: AsyncSession, model: type[UserModel] | type[GroupModel], names: Sequence[str]
) -> dict[str, str]:
    if not names:
        return {}
    query = select(model.name, model.id).where(model.name.in_(set(names)))
    return {name: id_ for name, id_ in await session.execute(query)}
