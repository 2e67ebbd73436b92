"""Which runs and nodes committed transactions changed, for the loops that work
from what changed between steps (the scheduler's `services/runs/capacity.py`,
the metering reconciler).

A `StoreSession` collects, at each flush, the ids of the runs and nodes it
updated or deleted (a task written counts as its run), and hands them to its
factory's `WriteLog` once the commit has happened, so that a reader looking then
sees the new rows. Each loop reads through its own `WriteReader`: what one takes,
the others still get. Ids flushed in a
transaction that rolled back go with the session's next commit, if any: a
reader reloading a row that did not change costs only the read. Every ORM write
in the server passes through such a session, so nobody has to remember to say
what they touched. Inserted runs are not collected: a new run is pending and
holds nothing (`Change.RUNS_QUEUED` says it came). A write made outside the
server's sessions (another process, raw SQL) is seen at the readers' next full
reload.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from flotilla.server.db.models import NodeModel, RunModel, TaskModel
from flotilla.server.db.unix_ids import StoreSession

# Where a session finds its factory's log (`Session.info`), and keeps its own
# uncommitted ids.
LOG_INFO = "flotilla.write_log"
_UNCOMMITTED = "flotilla.uncommitted_writes"


@dataclass(eq=False)
class WriteReader:
    """Ids of runs and nodes changed by committed transactions since its last `take`."""

    runs: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)

    def take(self) -> tuple[set[str], set[str]]:
        runs, nodes = self.runs, self.nodes
        self.runs, self.nodes = set(), set()
        return runs, nodes


class WriteLog:
    """Hands what each commit changed to every reader still in use (a reader that
    is dropped stops collecting)."""

    def __init__(self) -> None:
        self._readers: weakref.WeakSet[WriteReader] = weakref.WeakSet()

    def reader(self) -> WriteReader:
        """A reader that collects from now on."""
        reader = WriteReader()
        self._readers.add(reader)
        return reader

    def publish(self, runs: set[str], nodes: set[str]) -> None:
        for reader in self._readers:
            reader.runs |= runs
            reader.nodes |= nodes


def _collect(session: Session, _flush_context: object) -> None:
    if LOG_INFO not in session.info:
        return
    runs, nodes = session.info.setdefault(_UNCOMMITTED, (set(), set()))
    for obj in (*session.dirty, *session.deleted):
        if isinstance(obj, RunModel):
            runs.add(obj.id)
        elif isinstance(obj, NodeModel):
            nodes.add(obj.id)
    for obj in (*session.dirty, *session.deleted, *session.new):
        if isinstance(obj, TaskModel):
            runs.add(obj.run_id)
    for obj in session.new:
        if isinstance(obj, NodeModel):
            nodes.add(obj.id)


def _publish(session: Session) -> None:
    written: Any = session.info.pop(_UNCOMMITTED, None)
    log = session.info.get(LOG_INFO)
    if written and isinstance(log, WriteLog):
        log.publish(*written)


event.listen(StoreSession, "after_flush", _collect)
event.listen(StoreSession, "after_commit", _publish)
