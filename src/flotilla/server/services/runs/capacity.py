"""The live nodes and the runs holding them, kept by the scheduler between its
steps and brought up to date from what changed.

Turning 10,000 nodes and the 10,000 runs on them into objects takes about a
second; a step that places one new run needs none of it again. `refresh` reads
everything at its first use and then every `FULL_RELOAD_SECONDS` (a safety net
for writes made outside the server's sessions), and otherwise only the runs and
nodes that committed transactions changed since (a `db/writes.WriteReader`): the work
of a step follows what happened, not how much there is.

The objects held are detached from any session: they are read, never changed.
Whoever changes one of those runs or nodes reads it again in its own session
first (`reconcilers/recovery.py`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.status import HOLDING
from flotilla.server.db.batches import chunks
from flotilla.server.db.models import NodeModel, RecipeModel, RunModel, TaskModel
from flotilla.server.db.writes import WriteReader
from flotilla.server.services.fleets.nodes import LIVE_STATES, live_nodes
from flotilla.server.services.runs.runs import current_tasks, run_tasks, with_recipes

FULL_RELOAD_SECONDS = 300.0


@dataclass
class Placed:
    """A run that holds nodes now."""

    run: RunModel
    recipe: RecipeModel
    tasks: list[TaskModel]


@dataclass
class Capacity:
    writes: WriteReader
    nodes: dict[str, NodeModel] = field(default_factory=dict)  # live nodes by name
    placed: dict[str, Placed] = field(default_factory=dict)  # holding runs by id
    # Bumped whenever what is held changed: equal versions, equal capacity.
    version: int = 0
    _names: dict[str, str] = field(default_factory=dict)  # node id -> name
    _loaded_at: float | None = None

    def reload(self) -> None:
        """Read everything again at the next `refresh` (after a transaction that
        loaded some of the objects rolled back: a rollback expires them)."""
        self._loaded_at = None

    async def refresh(self, session: AsyncSession) -> bool:
        """Bring the view up to date in `session`'s transaction. True (and a new
        `version`) if any node, or any run that held or holds nodes, was read
        again: runs that only wait (a new run's tasks) change nothing here."""
        runs, nodes = self.writes.take()  # before reading: later commits wait for next time
        stale = self._loaded_at is None or time.monotonic() - self._loaded_at > FULL_RELOAD_SECONDS
        if stale:
            await self._load_everything(session)
        else:
            held = runs & self.placed.keys()
            await self._load_nodes(session, nodes)
            holding = await self._load_runs(session, runs)
            if not (nodes or held or holding):
                return False
        self.version += 1
        return True

    async def _load_everything(self, session: AsyncSession) -> None:
        self._loaded_at = time.monotonic()
        self.nodes = {n.name: n for n in await live_nodes(session)}
        self._names = {n.id: n.name for n in self.nodes.values()}
        rows = await with_recipes(session, select(RunModel).where(RunModel.status.in_(HOLDING)))
        self.placed = {}
        self._add_runs(rows, await _tasks(session, [run.id for run, _ in rows]))

    async def _load_nodes(self, session: AsyncSession, ids: set[str]) -> None:
        found: set[str] = set()
        for chunk in chunks(ids):
            query = select(NodeModel).where(NodeModel.id.in_(chunk))
            for node in (await session.execute(query)).scalars():
                found.add(node.id)
                self._forget_node(node.id)
                if node.state in LIVE_STATES:
                    self.nodes[node.name] = node
                    self._names[node.id] = node.name
        for gone in ids - found:  # deleted
            self._forget_node(gone)

    def _forget_node(self, node_id: str) -> None:
        name = self._names.pop(node_id, None)
        if name is not None:
            self.nodes.pop(name, None)

    async def _load_runs(self, session: AsyncSession, ids: set[str]) -> bool:
        """Read `ids` again; True if any of them holds nodes now."""
        for run_id in ids:
            self.placed.pop(run_id, None)
        holding = False
        for chunk in chunks(ids):
            query = select(RunModel).where(RunModel.id.in_(chunk), RunModel.status.in_(HOLDING))
            rows = await with_recipes(session, query)
            self._add_runs(rows, await _tasks(session, [run.id for run, _ in rows]))
            holding = holding or bool(rows)
        return holding

    def _add_runs(
        self, rows: Iterable[tuple[RunModel, RecipeModel]], tasks: dict[str, list[TaskModel]]
    ) -> None:
        for run, recipe in rows:
            self.placed[run.id] = Placed(run, recipe, current_tasks(run, tasks.get(run.id, [])))


async def _tasks(session: AsyncSession, run_ids: Sequence[str]) -> dict[str, list[TaskModel]]:
    out: dict[str, list[TaskModel]] = {}
    for chunk in chunks(run_ids):
        out.update(await run_tasks(session, chunk))
    return out
