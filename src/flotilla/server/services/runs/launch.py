"""Turning a placed run into launch requests: the recipe's environment, the
environment contract, the attached secrets and the Unix account the tasks run as,
resolved at the last moment; with an account, what confines the task (its cgroup
limits from `resources`, the control plane's paths hidden), on the nodes that run
tasks as their users (`node_isolation.confined_nodes`). Called by the scheduler
(`reconcilers/scheduler.py`); `pick_run_user` also by `node_trust.py`."""

from __future__ import annotations

import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from sqlalchemy import make_url, select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.compute.base import Checkout, LaunchRequest, TaskRef, Workload
from flotilla.config import Settings
from flotilla.core.envcontract import TaskIdentity, process_environments, task_environment
from flotilla.core.units import parse_memory
from flotilla.core.unixids import unix_name
from flotilla.errors import ClientError
from flotilla.recipes.job import JobSpec, SecretAttachment
from flotilla.runtime.taskspec import Limits, RunAs
from flotilla.server.db.models import (
    GroupMemberModel,
    GroupModel,
    RecipeModel,
    RecipeVersionModel,
    RunModel,
    TaskModel,
    UserModel,
)
from flotilla.server.secretbox import SecretBox
from flotilla.server.services.identity.secrets import attached_secret, remember_given


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


# Runs a person started through the API (`created_by` is their name). Others (cron
# ticks, deployment replicas) were started by the platform on the recipe's behalf.
PERSON_TRIGGERS = frozenset({"manual", "restart"})


def pick_run_user(
    run: RunModel,
    recipe: RecipeModel,
    users: Mapping[str, UserModel],
    owner_is_group: bool,
    last_applier: str | None,
) -> UserModel | None:
    """The user a run is on behalf of: the user who started it; for runs the
    platform started, the recipe's owner if a user owns it, else the user who last
    applied it. `users` holds (at least) those of these names that exist. Who the
    tasks run as (`resolve_run_as`) and whose work a node that cannot isolate
    takes (`services/fleets/node_trust.py`) both ask this."""
    user = users.get(run.created_by or "") if run.trigger in PERSON_TRIGGERS else None
    if user is None and not owner_is_group:
        user = users.get(recipe.owner)
    if user is None and last_applier is not None:
        user = users.get(last_applier)
    return user


async def resolve_run_as(session: AsyncSession, run: RunModel, recipe: RecipeModel) -> RunAs | None:
    """Who the run's tasks run as (`pick_run_user`), with that user's Flotilla
    groups and the owning group as supplementary groups. None when no such user
    exists (any more)."""
    owner_group = await _group_named(session, recipe.owner)
    users: dict[str, UserModel] = {}
    for name in (run.created_by, recipe.owner):
        if name and (found := await _user_named(session, name)) is not None:
            users[name] = found
    applier = None
    if pick_run_user(run, recipe, users, owner_group is not None, None) is None:
        applier = await _last_applier(session, recipe)
        if applier and (found := await _user_named(session, applier)) is not None:
            users[applier] = found
    user = pick_run_user(run, recipe, users, owner_group is not None, applier)
    if user is None:
        return None
    groups = {g.id: g for g in await _groups_of(session, user)}
    if owner_group is not None:
        groups[owner_group.id] = owner_group
    return RunAs(
        user=unix_name(user.name),
        uid=user.uid,
        gid=user.uid,  # the user's private group
        groups=sorted((unix_name(g.name), g.gid) for g in groups.values()),
    )


async def _user_named(session: AsyncSession, name: str | None) -> UserModel | None:
    if name is None:
        return None
    query = select(UserModel).where(UserModel.name == name)
    return (await session.execute(query)).scalar()


async def _group_named(session: AsyncSession, name: str) -> GroupModel | None:
    query = select(GroupModel).where(GroupModel.name == name)
    return (await session.execute(query)).scalar()


async def _last_applier(session: AsyncSession, recipe: RecipeModel) -> str | None:
    query = select(RecipeVersionModel.created_by).where(
        RecipeVersionModel.recipe_id == recipe.id, RecipeVersionModel.version == recipe.version
    )
    return (await session.execute(query)).scalar()


async def _groups_of(session: AsyncSession, user: UserModel) -> list[GroupModel]:
    query = (
        select(GroupModel)
        .join(GroupMemberModel, GroupMemberModel.group_id == GroupModel.id)
        .where(GroupMemberModel.user_id == user.id)
    )
    return list((await session.execute(query)).scalars())


# Processes (threads count too) a task may have per process it starts (`nprocs`)
# when it runs as its user: ends a fork bomb long before the node's own limit
# (~96k here) while leaving room for data loader workers and their thread pools.
PIDS_PER_PROCESS = 4096


def task_limits(spec: JobSpec) -> Limits:
    """A task's cgroup limits: `resources.memory` (RAM, no swap beyond it) and
    `resources.cpu` (CPU time as cores) for the whole task, its `nprocs` processes
    together, and PIDS_PER_PROCESS per process."""
    memory = spec.resources.memory
    return Limits(
        memory_bytes=parse_memory(memory) if memory is not None else None,
        cpus=spec.resources.cpu,
        pids=PIDS_PER_PROCESS * max(spec.nprocs, 1),
    )


def protected_paths(settings: Settings) -> list[str]:
    """What a task running as its user must not see: the data dir (tokens, the
    secrets key, the agent's socket, every task's files), the checkpoint root (other
    runs' checkpoints) and the SQLite database's directory, where they are apart."""
    paths = [settings.data_dir, settings.checkpoints]
    url = make_url(settings.db_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        paths.append(Path(str(url.database)).resolve().parent)
    found: list[str] = []
    for path in paths:
        if str(path) not in found:
            found.append(str(path))
    return found


def workload_of(spec: JobSpec) -> Workload:
    """The backend's view of a job: what to run, nothing of the recipe's bookkeeping."""
    argv, shell = spec.argv_or_shell()
    unsupported = []
    image = spec.image if isinstance(spec.image, str) and spec.image else None
    if isinstance(spec.image, dict):
        unsupported.append(f"image {spec.image!s} is not used: only a reference is run")
    if spec.instance_type:
        unsupported.append(f"instance_type {spec.instance_type} is recorded only")
    checkouts = tuple(
        Checkout(r.url, r.path, r.reference, r.reference_type.value) for r in spec.git_repositories
    )
    return Workload(
        argv=argv,
        shell=shell,
        start_script=spec.start_script,
        working_directory=spec.working_directory,
        checkouts=checkouts,
        image=image,
        unsupported=tuple(unsupported),
    )


def launch_requests(
    run: RunModel,
    tasks: list[TaskModel],
    job_name: str,
    secret_env: dict[str, str],
    secret_files: list[tuple[str, str]],
    leader_port: int,
    grace_seconds: float,
    checkpoint_dir: str | None = None,
    run_as: RunAs | None = None,
    hide: Sequence[str] = (),
    confined_on: Collection[str] | None = None,
    virtual_on: Collection[str] = (),
    spec: JobSpec | None = None,
) -> list[LaunchRequest]:
    """One request per task; with `run_as`, confined: `task_limits` and `hide`
    (`protected_paths`). `confined_on`: the nodes whose tasks run as `run_as`
    (`node_isolation.confined_nodes`); None: every node. `virtual_on`: the nodes
    that time their tasks instead of running them (`nodes.virtual_nodes`). `spec`:
    `run.spec` already validated (the scheduler has it), else it is validated here."""
    spec = spec or JobSpec.model_validate(run.spec)
    limits = task_limits(spec) if run_as is not None else None
    peers = tuple(t.address or "127.0.0.1" for t in sorted(tasks, key=lambda t: t.rank))
    workload = workload_of(spec)
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
        confined = run_as is not None and (confined_on is None or task.node in confined_on)
        # Its GPUs fenced: the node's others cannot be opened from it.
        fenced = replace(limits, gpus=[int(g) for g in task.gpus or ()]) if limits else None
        requests.append(
            LaunchRequest(
                task=task_ref(task),
                workload=workload,
                env=env,
                secret_files=secret_files,
                grace_seconds=grace_seconds,
                process_env=process_environments(identity),
                checkpoint_dir=checkpoint_dir,
                run_as=run_as if confined else None,
                limits=fenced if confined else None,
                hide=list(hide) if confined else [],
                virtual=task.node in virtual_on,
            )
        )
    return requests
