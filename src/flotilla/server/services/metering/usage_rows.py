"""Writing usage rows: inserting them so that two servers metering at once agree,
and metering the time fleet nodes stand idle.

A fleet node is paid for from the moment it is created until it is terminated,
worked or not. The time no task holds it (booting, spares, the idle timeout, a
drained node waiting to go) is billed to the fleet: one usage row per idle
interval, user `idle:<fleet>`, the fleet's owner and project, the node's whole
price. With the task rows the node's life is then covered without gap or overlap,
so reports add up to what the provider charges. (The free GPUs of a node that is
partly in use stay unbilled.) Called by the metering reconciler on every step,
after the task rows are up to date.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.status import NodeState
from flotilla.server.db.batches import chunks
from flotilla.server.db.models import GroupModel, NodeModel, RecipeModel, UsageModel

IDLE_PREFIX = "idle:"  # the task ids of idle rows start with it
BATCH = 500
SETTLED_AFTER = timedelta(days=1)
# Nodes per query for their task rows: each brings its own condition.
NODES_PER_QUERY = 200


def idle_row_id(node: NodeModel, since: datetime) -> str:
    """The same for the same interval whichever server meters it (the column holds
    48 characters: a digest rather than the node id and the time in full)."""
    digest = hashlib.sha256(f"{node.id}|{since.isoformat()}".encode()).hexdigest()
    return IDLE_PREFIX + digest[:40]


def is_task_row() -> Any:
    return UsageModel.task_id.not_like(f"{IDLE_PREFIX}%")


async def insert_usage_rows(session: AsyncSession, values: Sequence[dict[str, Any]]) -> None:
    """Insert, skipping rows another server inserted first (unique task id)."""
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    for i in range(0, len(values), BATCH):
        statement = insert(UsageModel).values(list(values[i : i + BATCH]))
        await session.execute(statement.on_conflict_do_nothing(index_elements=["task_id"]))


async def meter_idle_nodes(
    session: AsyncSession, now: datetime, names: set[str] | None = None
) -> int:
    """Bring each fleet node's idle rows up to date (with `names`, only those
    nodes'): every stretch of its life that no task row covers gets one, the last
    left open while the node is free. Level triggered: a stretch that began and
    ended between two steps is found too. Returns how many rows were opened or
    closed."""
    open_idle: dict[str, UsageModel] = {}
    nodes: list[NodeModel] = []
    for chunk in [None] if names is None else chunks(names):
        open_here = await _open_idle_rows(session, chunk)
        open_idle.update(open_here)
        nodes += await _metered_nodes(session, now, open_here, chunk)
    idle_until: dict[str, datetime | None] = {}
    for chunk in chunks(n.name for n in nodes):
        query = (
            select(UsageModel.node, func.max(UsageModel.ended_at))
            .where(~is_task_row(), UsageModel.node.in_(chunk))
            .group_by(UsageModel.node)
        )
        idle_until.update((node, until) for node, until in await session.execute(query))
    cursors: dict[str, datetime] = {}  # node -> from when its idle time is unknown
    for node in nodes:
        row = open_idle.get(node.name)
        until = idle_until.get(node.name)
        if row is None and node.state == NodeState.TERMINATED and _settled(node, until, now):
            continue
        cursors[node.name] = row.started_at if row else until or node.created_at
    tasks = await _task_rows_since(session, cursors)
    gaps: list[tuple[NodeModel, datetime, datetime | None]] = []
    changed = 0
    for node in nodes:
        if node.name not in cursors:
            continue
        row = open_idle.get(node.name)
        found = _gaps(node, cursors[node.name], tasks.get(node.name, []), now)
        if row is not None:
            if found and found[0][0] == row.started_at:
                end = found.pop(0)[1]
                if end is None:
                    continue  # still idle: the open row stands
                row.ended_at = end
            else:  # work came at once: nothing idle since the row began
                row.ended_at = row.started_at
            changed += 1
        gaps += [(node, start, end) for start, end in found]
    values = await _idle_rows(session, gaps)
    await insert_usage_rows(session, values)
    return changed + len(values)


async def _open_idle_rows(session: AsyncSession, names: list[str] | None) -> dict[str, UsageModel]:
    query = select(UsageModel).where(~is_task_row(), UsageModel.ended_at.is_(None))
    if names is not None:
        query = query.where(UsageModel.node.in_(names))
    return {row.node: row for row in (await session.execute(query)).scalars()}


async def _metered_nodes(
    session: AsyncSession, now: datetime, open_idle: dict[str, UsageModel], names: list[str] | None
) -> list[NodeModel]:
    """Live fleet nodes, and terminated ones that may still owe idle rows: not
    every node the fleets ever had, which would grow without bound."""
    query = select(NodeModel).where(
        NodeModel.fleet_id.is_not(None),
        NodeModel.price_per_hour > 0,
        or_(
            NodeModel.state != NodeState.TERMINATED.value,
            NodeModel.terminated_at.is_(None),
            NodeModel.terminated_at >= now - SETTLED_AFTER,
            NodeModel.name.in_(open_idle),
        ),
    )
    if names is not None:
        query = query.where(NodeModel.name.in_(names))
    return list((await session.execute(query)).scalars())


async def _task_rows_since(
    session: AsyncSession, cursors: dict[str, datetime]
) -> dict[str, list[tuple[datetime, datetime | None]]]:
    """Per node, its task rows that end after its cursor or not at all, by start:
    a query per `NODES_PER_QUERY` nodes, each node with its own cursor."""
    out: dict[str, list[tuple[datetime, datetime | None]]] = {}
    for chunk in chunks(cursors.items(), NODES_PER_QUERY):
        after_cursor = or_(
            *(
                and_(
                    UsageModel.node == name,
                    or_(UsageModel.ended_at.is_(None), UsageModel.ended_at > cursor),
                )
                for name, cursor in chunk
            )
        )
        query = (
            select(UsageModel.node, UsageModel.started_at, UsageModel.ended_at)
            .where(is_task_row(), after_cursor)
            .order_by(UsageModel.started_at)
        )
        for node, started, ended in await session.execute(query):
            out.setdefault(node, []).append((started, ended))
    return out


def _settled(node: NodeModel, idle_until: datetime | None, now: datetime) -> bool:
    """A terminated node whose idle time is accounted to its end, or that ended long
    enough ago (a day) that a step has seen it since."""
    ended = node.terminated_at or now
    return (idle_until is not None and idle_until >= ended) or ended < now - SETTLED_AFTER


def _gaps(
    node: NodeModel,
    cursor: datetime,
    tasks: Sequence[tuple[datetime, datetime | None]],
    now: datetime,
) -> list[tuple[datetime, datetime | None]]:
    """The stretches from `cursor` on that none of `tasks` (the node's task rows
    that end after it, by start) covers: closed ones, then an open one (end None)
    if the node is free now and still up."""
    gaps: list[tuple[datetime, datetime | None]] = []
    free_from: datetime | None = cursor
    for started, ended in tasks:
        if free_from is not None and started > free_from:
            gaps.append((free_from, started))
        if ended is None:
            free_from = None  # held from here on
        elif free_from is not None:
            free_from = max(free_from, ended)
    if free_from is not None:
        if node.state != NodeState.TERMINATED:
            gaps.append((free_from, None))
        elif (end := node.terminated_at or now) > free_from:
            gaps.append((free_from, end))
    return gaps


async def _idle_rows(
    session: AsyncSession, gaps: Sequence[tuple[NodeModel, datetime, datetime | None]]
) -> list[dict[str, Any]]:
    fleet_ids = {node.fleet_id for node, _, _ in gaps}
    fleets = {
        r.id: r
        for r in (
            await session.execute(select(RecipeModel).where(RecipeModel.id.in_(fleet_ids)))
        ).scalars()
    }
    owners = {f.owner for f in fleets.values()}
    groups = set(
        (await session.execute(select(GroupModel.name).where(GroupModel.name.in_(owners))))
        .scalars()
        .all()
    )
    values = []
    for node, since, until in gaps:
        fleet = fleets.get(node.fleet_id or "")
        if fleet is None:
            continue
        values.append(
            {
                "task_id": idle_row_id(node, since),
                "run_id": "",
                "recipe_type": fleet.type,
                "recipe_name": fleet.name,
                "user": f"idle:{fleet.name}",
                "owner": fleet.owner,
                "owner_kind": "group" if fleet.owner in groups else "user",
                "project": fleet.project,
                "node": node.name,
                "instance_type": node.instance_type,
                "gpu_type": node.gpu_type,
                "gpus": len(node.gpus or []),
                "spot": bool(node.spot),
                "share": 1.0,
                "price_per_hour": node.price_per_hour,
                "started_at": since,
                "ended_at": until,
            }
        )
    return values
