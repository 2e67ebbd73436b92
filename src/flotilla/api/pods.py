"""Pods in Saturn's shapes: the active pods (`/api/active/pods`) as
PodRuntimeSummary with containers `setup` (init) and `main`, and a job's or
deployment's historical pods and logs (`…/history`, `…/logs`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from flotilla.api.base import ApiModel


class ContainerSummary(ApiModel):
    namespace: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]
    conditions: list[Any]
    name: str  # `setup` or `main`
    controller_uid: str | None
    controller_kind: str | None
    started_at: str | None
    deleted_at: str | None
    status: str = Field(description="waiting, running, completed or error")
    finished_at: str | None
    restart_policy: str
    image_pulled: bool
    exit_code: int | None
    reason: str | None
    previous: Any
    logs: str | None = Field(default=None, description="only when one pod is read")


class PodSummary(ApiModel):
    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]
    conditions: list[Any]
    controller_uid: str  # the run's id
    controller_kind: str
    started_at: str | None
    deleted_at: str | None
    completed_at: str | None
    status: str = Field(description="Saturn's PodStatus: pending, running, stopping, ...")
    node_name: str | None
    reason: str | None
    init_container_summaries: list[ContainerSummary]
    container_summaries: list[ContainerSummary]


class PodSummaryList(ApiModel):
    pod_summaries: list[PodSummary]  # the current attempt's tasks of the active runs
    next_key: str | None


class PodLogs(ApiModel):
    logs: str


class PodHistoryItem(ApiModel):
    pod_name: str
    status: str  # Saturn's PodStatus
    start_time: str | None
    end_time: str | None
    last_seen: str | None
    label_job_name: str
    run_id: str
    exit_code: int | None


class PodHistory(ApiModel):
    pods: list[PodHistoryItem]  # every run's tasks, newest first
