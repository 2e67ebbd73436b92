"""Jobs in Saturn's shape (`/api/jobs`): a job is its recipe envelope with the
`state` of its runs; actions answer with it, a start with the run it queued.
Runs are `api/runs.py`'s `Run` and `RunSummary`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flotilla.api.base import ApiModel
from flotilla.api.runs import Run, RunSummary


class JobState(ApiModel):
    id: str
    status: str = Field(description="Saturn's JobStatus: pending, running, stopping, ...")
    version: int
    created_at: str | None
    updated_at: str | None
    scheduled: bool
    next_scheduled_at: str | None  # None unless scheduled
    active_runs: int
    last_run: RunSummary | None


class Job(ApiModel):
    schema_version: str
    type: str
    spec: dict[str, Any]  # the job recipe's spec (`recipes/envelope.py`)
    state: JobState


class JobList(ApiModel):
    jobs: list[Job]
    next_key: str | None


class JobStopped(Job):
    stopped_runs: int


class JobRestarted(Job):
    run: RunSummary  # the run the restart queued


class JobStarted(ApiModel):
    id: str  # the job's
    run: RunSummary
    status: Literal["pending"]
    warnings: list[str] = Field(description="budgets nearly used up")


class JobRunList(ApiModel):
    runs: list[Run]  # newest first


class CronScheduleOptions(ApiModel):
    """Saturn's cron options; they set the recipe's `schedule`,
    `concurrency_policy` and `retries` (`backoff_limit`)."""

    schedule: str | None = None
    concurrency_policy: str | None = None
    backoff_limit: int | None = None


class JobUpdate(BaseModel):
    """`PATCH /api/jobs/{id}` (Saturn's JobUpdate): `cron_schedule_options`, and
    any other field of the job's spec (`command`, `scale`, `retries`, ...). The
    merged spec is validated as an apply would be, so a bad field is named as
    `spec.FIELD`."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"additionalProperties": {"description": "a job spec field"}},
    )

    cron_schedule_options: CronScheduleOptions | None = None


class JobSchedule(CronScheduleOptions):
    """`POST /api/jobs/{id}/schedule`: enable the schedule, after optionally
    changing it (an empty body enables the one the recipe has)."""
