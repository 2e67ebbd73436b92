"""Runs (`/api/runs/{id}`): one run with its tasks (one per rank of the current
attempt and of earlier ones), and its events. Jobs' run listings show the same
`Run`; a recipe's `state.last_run` is a `RunSummary`."""

from __future__ import annotations

from pydantic import Field

from flotilla.api.base import ApiModel
from flotilla.api.nodes import Event
from flotilla.core.status import RunStatus, TaskStatus


class Task(ApiModel):
    name: str  # Saturn's pod name
    rank: int
    attempt: int
    status: TaskStatus
    node: str | None  # None until placed
    gpus: list[int]  # the node's GPU indices it holds
    pid: int | None
    exit_code: int | None
    message: str
    started_at: str | None
    finished_at: str | None


class RunSummary(ApiModel):
    id: str
    number: int  # the job's nth run
    status: RunStatus
    reason: str  # why it waits, or how it ended
    exit_code: int | None
    queued_at: str
    started_at: str | None
    finished_at: str | None


class Run(RunSummary):
    job: str
    job_id: str
    attempt: int  # 0 first; a requeue starts the next
    trigger: str
    created_by: str
    stop_requested: bool
    stop_reason: str | None
    tasks: list[Task] = Field(description="every attempt's, by attempt then rank")


class RunEvents(ApiModel):
    events: list[Event]  # oldest first
