"""Who is connecting over SSH and where to: the SSH user name names a running task,
the key names the user, and the usual access rules decide.

    ssh -p 2222 api@flotilla            a running replica of deployment `api`
    ssh -p 2222 api.3@flotilla          replica (run) number 3
    ssh -p 2222 train.12.1@flotilla     rank 1 of run 12 of job `train`
    ssh -p 2222 alice/api@flotilla      alice's `api`, when names clash

A shell runs the owner's code with the owner's secrets, so it needs write access to
the recipe (a viewer may not), and the recipe must say `start_ssh: true`. Called
by the gateway during authentication; every refusal carries a sentence for the
user.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.status import RunStatus, TaskStatus
from flotilla.runtime import proctree
from flotilla.server.db.models import RecipeModel, RunModel, TaskModel, UserModel
from flotilla.server.identity import ALL_SCOPES, Identity, load_identity
from flotilla.server.services.recipes import find_recipe

_LOGIN = re.compile(
    r"^(?:(?P<owner>[a-z0-9][a-z0-9-]*)/)?(?P<name>[a-z0-9][a-z0-9-]*)"
    r"(?:\.(?P<number>\d+))?(?:\.(?P<rank>\d+))?$"
)
SSH_TYPES = ("deployment", "job")


class Refused(Exception):
    """The connection may not go where it asked; the message is for the user."""


@dataclass(frozen=True)
class Login:
    name: str
    owner: str | None = None
    number: int | None = None
    rank: int = 0


@dataclass(frozen=True)
class Target:
    """A running task a shell may be opened in."""

    recipe_type: str
    recipe_name: str
    run_id: str
    run_number: int
    task_id: str
    rank: int
    pid: int  # the task's leading process: its environment and directory are the shell's
    gpus: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.recipe_type} {self.recipe_name} run {self.run_number} rank {self.rank}"


def parse_login(username: str) -> Login:
    match = _LOGIN.match(username)
    if not match:
        raise Refused(
            f"{username!r} names no deployment or job; log in as NAME, NAME.RUN, "
            "NAME.RUN.RANK or OWNER/NAME"
        )
    number = match.group("number")
    return Login(
        name=match.group("name"),
        owner=match.group("owner"),
        number=int(number) if number is not None else None,
        rank=int(match.group("rank") or 0),
    )


async def user_for_key(session: AsyncSession, key_blob: bytes) -> UserModel | None:
    """The unlocked person whose registered SSH keys include this one (service
    accounts have no SSH keys)."""
    users = (
        await session.execute(
            select(UserModel).where(
                UserModel.locked.is_(False), UserModel.is_service_account.is_(False)
            )
        )
    ).scalars()
    for user in users:
        for line in user.ssh_public_keys:
            parts = str(line).split()
            try:
                if len(parts) >= 2 and base64.b64decode(parts[1]) == key_blob:
                    return user
            except (binascii.Error, ValueError):
                continue
    return None


async def ssh_identity(session: AsyncSession, user: UserModel) -> Identity:
    """An SSH key is a login: the user's whole power, as with a password."""
    return await load_identity(session, user, ALL_SCOPES, "ssh_key")


async def resolve_target(session: AsyncSession, identity: Identity, login: Login) -> Target:
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
        task = (
            await session.execute(
                select(TaskModel).where(
                    TaskModel.run_id == run.id,
                    TaskModel.attempt == run.attempt,
                    TaskModel.rank == login.rank,
                    TaskModel.status == TaskStatus.RUNNING.value,
                )
            )
        ).scalar()
        if task is not None and task.pid and is_task_process(task.pid, run.id, login.rank):
            return Target(
                recipe_type=recipe.type,
                recipe_name=recipe.name,
                run_id=run.id,
                run_number=run.number,
                task_id=task.id,
                rank=task.rank,
                pid=task.pid,
                gpus=tuple(int(g) for g in task.gpus or ()),
            )
    raise Refused(
        f"{recipe.type} {recipe.name}: no running rank {login.rank} "
        f"in run {', '.join(str(r.number) for r in running)}"
    )


async def _recipe(session: AsyncSession, identity: Identity, login: Login) -> RecipeModel:
    for recipe_type in SSH_TYPES:
        recipe = await find_recipe(session, recipe_type, login.name, login.owner, identity)
        if recipe is None:
            continue
        if not identity.can_write(recipe.owner, recipe.project):
            raise Refused(
                f"{recipe_type} {recipe.name}: a shell needs write access, and "
                f"{identity.name} may only read it"
            )
        if not recipe.spec.get("start_ssh"):
            raise Refused(
                f"{recipe_type} {recipe.name} does not allow SSH: set `start_ssh: true` "
                "in its recipe and apply it"
            )
        return recipe
    owner = f" of {login.owner}" if login.owner else ""
    raise Refused(f"no deployment or job {login.name!r}{owner} that {identity.name} can see")


def is_task_process(pid: int, run_id: str, rank: int) -> bool:
    """Whether `pid` still is the task's process, not a stranger that reused the pid."""
    env = proctree.environment(pid)
    return (
        env is not None
        and env.get("FLOTILLA_RUN_ID") == run_id
        and env.get("FLOTILLA_RANK") == str(rank)
    )
