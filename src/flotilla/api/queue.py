"""The queue and the scheduler's policy (`/api/queue`, `/api/scheduler/policy`):
pending runs in order with why each waits, and the quotas, weights and preemption
rule the scheduler applies."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from flotilla.api.base import ApiModel

Gpus = Annotated[int, Field(ge=0)]
Weight = Annotated[float, Field(gt=0)]


class QueuedRun(ApiModel):
    position: int = Field(description="1 is next; counts every user's pending runs")
    run_id: str
    job: str
    job_id: str
    number: int
    attempt: int
    owner: str
    recipe_project: str | None  # the recipe's project (None: its owner's alone)
    project: str  # the project the run is charged to
    priority: int
    scale: int
    gpu: str | int | None  # GPUs per task, as the spec says (`H100:8`, 2)
    spot: bool
    queued_at: str
    waiting_seconds: float
    reason: str  # why the scheduler has not started it


class Queue(ApiModel):
    """One page of the queue: `GET /api/queue?limit=N&after=CURSOR`."""

    runs: list[QueuedRun]  # oldest first; only those the caller may read
    next: str | None = Field(
        None, description="the cursor of the next page (`after=`); None: this is the last"
    )


class SchedulerPolicy(ApiModel):
    user_quota: dict[str, Gpus] = Field(
        default_factory=dict, description="GPUs a user may hold at once (absent: no limit)"
    )
    project_quota: dict[str, Gpus] = Field(
        default_factory=dict, description="GPUs a project may hold at once"
    )
    user_weight: dict[str, Weight] = Field(
        default_factory=dict, description="fair-share weight per user (default 1)"
    )
    preempt_equal_priority: bool = Field(
        False, description="let runs preempt on-demand runs of the same priority"
    )
