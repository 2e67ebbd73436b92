"""Turning a placed run into launch requests: the recipe's environment, the
environment contract and the attached secrets, resolved at the last moment."""

from __future__ import annotations

import socket

from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.compute.base import LaunchRequest, TaskRef
from flotilla.core.envcontract import TaskIdentity, process_environments, task_environment
from flotilla.errors import ClientError
from flotilla.recipes.job import JobSpec, SecretAttachment
from flotilla.server.db.models import RecipeModel, RunModel, TaskModel
from flotilla.server.secretbox import SecretBox
from flotilla.server.services.secrets import attached_secret, remember_given


def task_ref(task: TaskModel) -> TaskRef:
    return TaskRef(task.id, task.run_id, task.attempt, task.rank, task.node)


def free_port() -> int:
    """A port for the leader's rendezvous (MASTER_PORT), free at placement time."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def resolve_secrets(
    session: AsyncSession,
    box: SecretBox,
    spec: JobSpec,
    recipe: RecipeModel,
    run: RunModel | None = None,
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The attached secrets' values, as env vars and files, for launching `run`.
    The values are also kept (sealed) with the run, so its logs stay masked with
    them after the secrets change (`remember_given`)."""
    env: dict[str, str] = {}
    files: list[tuple[str, str]] = []
    for ref in spec.secrets:
        secret = await attached_secret(session, ref, recipe.owner, recipe.project)
        if secret is None:
            raise ClientError(
                f"secret {ref.name!r} (attached as {ref.location}) does not exist",
                "missing_secret",
                422,
            )
        value = box.decrypt(secret.ciphertext)
        if ref.attachment_type == SecretAttachment.ENV:
            env[ref.location] = value
        else:
            files.append((ref.location, value))
    if run is not None:
        remember_given(box, run, [*env.values(), *(value for _, value in files)])
    return env, files


def launch_requests(
    run: RunModel,
    tasks: list[TaskModel],
    job_name: str,
    secret_env: dict[str, str],
    secret_files: list[tuple[str, str]],
    leader_port: int,
    grace_seconds: float,
    checkpoint_dir: str | None = None,
) -> list[LaunchRequest]:
    spec = JobSpec.model_validate(run.spec)
    peers = tuple(t.address or "127.0.0.1" for t in sorted(tasks, key=lambda t: t.rank))
    requests = []
    for task in tasks:
        identity = TaskIdentity(
            run_id=run.id,
            job_name=job_name,
            rank=task.rank,
            scale=len(tasks),
            nprocs=spec.nprocs,
            leader_address=peers[0],
            leader_port=leader_port,
            peers=peers,
            gpus=tuple(task.gpus),
            checkpoint_dir=checkpoint_dir,
            node=task.node or "",
        )
        env = {**spec.environment_variables, **task_environment(identity), **secret_env}
        requests.append(
            LaunchRequest(
                task=task_ref(task),
                spec=spec,
                env=env,
                secret_files=secret_files,
                grace_seconds=grace_seconds,
                process_env=process_environments(identity),
                checkpoint_dir=checkpoint_dir,
            )
        )
    return requests
