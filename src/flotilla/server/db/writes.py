"""Which runs and nodes committed transactions changed, for the loops that work
from what changed between steps (the scheduler's `services/runs/capacity.py` and
`queue_head.py`, the metering reconciler).

A `StoreSession` collects, at each flush, the ids of the runs and nodes it
updated or deleted (a task written counts as its run), and hands them to its
factory's `WriteLog` once the commit has happened, so that a reader looking then
sees the new rows. Each loop reads through its own `WriteReader`: what one takes,
the others still get. Ids flushed in a transaction that rolled back go with the
session's next commit, if any: a reader reloading a row that did not change costs
only the read. Every ORM write in the server passes through such a session, so
nobody has to remember to say what they touched. Inserted runs are not collected:
a new run is pending and holds nothing (`Change.RUNS_QUEUED` says it came). A
write made outside the server's sessions (another process, raw SQL) is seen at
the readers' next full reload.

The log also counts the commits that changed who may do what (users, API tokens,
groups, projects and their members, by ORM object or by an UPDATE or DELETE
statement on them): `identity_version`, which the API's cache of token checks
compares (`server/auth/token_checks.py`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

from flotilla.server.db.models import (
    ApiTokenModel,
    GroupMemberModel,
    GroupModel,
    NodeModel,
    ProjectMemberModel,
    ProjectModel,
    RunModel,
    TaskModel,
    UserModel,
)
from flotilla.server.db.unix_ids import StoreSession

# Where a session finds its factory's log (`Session.info`), and keeps its own
# uncommitted ids.
LOG_INFO = "flotilla.write_log"
_UNCOMMITTED = "flotilla.uncommitted_writes"
_IDENTITY_TOUCHED = "flotilla.identity_touched"
IDENTITY_MODELS = (
    UserModel,
    ApiTokenModel,
    GroupModel,
    GroupMemberModel,
    ProjectModel,
    ProjectMemberModel,
)
_IDENTITY_TABLES = frozenset(m.__tablename__ for m in IDENTITY_MODELS)
# An execution option for a statement on an identity table that changes no one's
# rights (recording when a token was last used).
NOT_AN_IDENTITY_CHANGE = "flotilla_not_an_identity_change"


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
        self.identity_version = 0  # bumped by each commit that changed identities

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
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, TaskModel):
            runs.add(obj.run_id)
        elif isinstance(obj, RunModel) and obj not in session.new:
            runs.add(obj.id)
        elif isinstance(obj, NodeModel):
            nodes.add(obj.id)
        elif isinstance(obj, IDENTITY_MODELS):
            session.info[_IDENTITY_TOUCHED] = True


def _statement(state: ORMExecuteState) -> None:
    """An UPDATE or DELETE statement on an identity table (removing a project's
    members, say) changes identities without any ORM object saying so."""
    if not (state.is_update or state.is_delete) or LOG_INFO not in state.session.info:
        return
    if state.execution_options.get(NOT_AN_IDENTITY_CHANGE):
        return
    table = getattr(state.statement, "table", None)
    if getattr(table, "name", None) in _IDENTITY_TABLES:
        state.session.info[_IDENTITY_TOUCHED] = True


def _publish(session: Session) -> None:
    written: Any = session.info.pop(_UNCOMMITTED, None)
    identities = session.info.pop(_IDENTITY_TOUCHED, False)
    log = session.info.get(LOG_INFO)
    if not isinstance(log, WriteLog):
        return
    if written:
        log.publish(*written)
    if identities:
        log.identity_version += 1


event.listen(StoreSession, "after_flush", _collect)
event.listen(StoreSession, "after_commit", _publish)
event.listen(StoreSession, "do_orm_execute", _statement)
