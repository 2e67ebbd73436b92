"""Who is connecting over SSH and where to: the SSH user name names a running task,
the key names the user, and the usual access rules decide.

    ssh -p 2222 api@flotilla            a running replica of deployment `api`
    ssh -p 2222 api.3@flotilla          replica (run) number 3
    ssh -p 2222 train.12.1@flotilla     rank 1 of run 12 of job `train`
    ssh -p 2222 alice/api@flotilla      alice's `api`, when names clash

A shell runs the owner's code with the owner's secrets, so it needs write access to
the recipe (a viewer may not), and the recipe must say `start_ssh: true`. Called
by the gateway once the user's key is verified, never for a mere key probe (a
public key is no secret); every refusal carries a sentence for the user.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.compute.base import TaskRef
from flotilla.core.sshlogin import Login, parse_login
from flotilla.core.status import RunStatus, TaskStatus
from flotilla.runtime.sessions.target import Target, task_target
from flotilla.server.db.models import NodeModel, RecipeModel, RunModel, TaskModel, UserModel
from flotilla.server.identity import ALL_SCOPES, Identity, load_identity
from flotilla.server.services.fleets.node_isolation import has_own_agent
from flotilla.server.services.recipes import visible_to
from flotilla.server.services.runs.launch import task_ref

SSH_TYPES = ("deployment", "job")  # in this order when one of each has the name


class Refused(Exception):
    """The connection may not go where it asked; the message is for the user."""


@dataclass(frozen=True)
class RemoteTarget:
    """A running task on another host: its sessions go through that host's session
    relay (`remote.py`), which checks the process there."""

    label: str
    task: TaskRef
    gpus: tuple[int, ...]

    @property
    def run_id(self) -> str:
        return self.task.run_id


def login_of(username: str) -> Login:
    try:
        return parse_login(username)
    except ValueError as e:
        raise Refused(str(e)) from e


async def ssh_identity(session: AsyncSession, user: UserModel) -> Identity:
    """An SSH key is a login: the user's whole power, as with a password."""
    return await load_identity(session, user, ALL_SCOPES, "ssh_key")


async def resolve_target(
    session: AsyncSession, identity: Identity, login: Login
) -> Target | RemoteTarget:
    recipe = await _recipe(session, identity, login)
    runs = (
        await session.execute(
            select(RunModel).where(
                RunModel.recipe_id == recipe.id, RunModel.status == RunStatus.RUNNING.value
            )
        )
    ).scalars()
    running = sorted(runs, key=lambda r: r.number)
    if login.number is not None:
        running = [r for r in running if r.number == login.number]
    elif recipe.type == "job":
        running = running[-1:]  # the newest run of a job
    if not running:
        which = f" run {login.number}" if login.number is not None else ""
        raise Refused(f"{recipe.type} {recipe.name}{which} has nothing running to log in to")
    for run in running:
        if target := await running_task(session, recipe, run, login.rank):
            return target
    raise Refused(
        f"{recipe.type} {recipe.name}: no running rank {login.rank} "
        f"in run {', '.join(str(r.number) for r in running)}"
    )


async def running_task(
    session: AsyncSession, recipe: RecipeModel, run: RunModel, rank: int
) -> Target | RemoteTarget | None:
    """Rank `rank` of `run` as a target, if it runs; on this machine, if its process
    is still its own."""
    task = (
        await session.execute(
            select(TaskModel).where(
                TaskModel.run_id == run.id,
                TaskModel.attempt == run.attempt,
                TaskModel.rank == rank,
                TaskModel.status == TaskStatus.RUNNING.value,
            )
        )
    ).scalar()
    if task is None or not task.pid:
        return None
    label = f"{recipe.type} {recipe.name} run {run.number} rank {task.rank}"
    gpus = tuple(int(g) for g in task.gpus or ())
    if task.node and await _on_another_host(session, task.node):
        # Its pid is a process on that host: its agent's relay checks it there.
        return RemoteTarget(label, task_ref(task), gpus)
    return task_target(label, run.id, task.rank, task.pid, gpus)


async def _recipe(session: AsyncSession, identity: Identity, login: Login) -> RecipeModel:
    """The recipe the login names: among those the user can see, the ones they may
    change; then their own; then deployments before jobs. Several owners left means
    the login must say which."""
    query = select(RecipeModel).where(
        RecipeModel.type.in_(SSH_TYPES),
        RecipeModel.name == login.name,
        RecipeModel.deleted_at.is_(None),
    )
    if login.owner:
        query = query.where(RecipeModel.owner == login.owner)
    seen = list((await session.execute(visible_to(query, identity))).scalars())
    if not seen:
        owner = f" of {login.owner}" if login.owner else ""
        raise Refused(f"no deployment or job {login.name!r}{owner} that {identity.name} can see")
    writable = [r for r in seen if identity.can_write(r.owner, r.project)]
    if not writable:
        raise Refused(
            f"{seen[0].type} {seen[0].name}: a shell needs write access, and "
            f"{identity.name} may only read it"
        )
    candidates = [r for r in writable if r.owner == identity.name] or writable
    if len({r.owner for r in candidates}) > 1:
        owners = ", ".join(sorted(f"{r.owner}/{r.name}" for r in candidates))
        raise Refused(f"several owners have a {login.name!r} ({owners}): log in as OWNER/NAME")
    recipe = min(candidates, key=lambda r: SSH_TYPES.index(r.type))
    if not recipe.spec.get("start_ssh"):
        raise Refused(
            f"{recipe.type} {recipe.name} does not allow SSH: set `start_ssh: true` "
            "in its recipe and apply it"
        )
    return recipe


async def _on_another_host(session: AsyncSession, name: str) -> bool:
    node = (await session.execute(select(NodeModel).where(NodeModel.name == name))).scalar()
    return node is not None and has_own_agent(node)
