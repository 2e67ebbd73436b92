"""The secret store: named values owned by a user, a group or a project, encrypted
at rest, never returned after creation. Recipes attach them by name; values are
resolved only when a task is launched and handed straight to the node, and masked
in every log the API returns (`log_redactor`): with the values the run was given,
kept sealed with the run (`remember_given`), so rotating or deleting a secret
does not unmask it in the logs of the runs that had it.

Who may use a secret (see its metadata, attach it, replace or delete it): the
owning user; members of the owning group; members and admins of the owning project
(viewers read only, and secrets are not theirs to read); platform admins.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.redact import Redactor
from flotilla.errors import ClientError, FieldProblem, Forbidden, InvalidRecipe, NotFound
from flotilla.recipes.job import JobSpec, SecretRef
from flotilla.server.db.models import (
    GroupModel,
    ProjectModel,
    RecipeModel,
    RunModel,
    SecretModel,
)
from flotilla.server.identity import Identity, Role
from flotilla.server.secretbox import SecretBox
from flotilla.server.services.events import record_event


class OwnerKind(StrEnum):
    USER = "user"
    GROUP = "group"
    PROJECT = "project"


def may_use(identity: Identity, kind: str, owner: str) -> bool:
    if identity.is_admin:
        return True
    if kind == OwnerKind.USER:
        return owner == identity.name
    if kind == OwnerKind.GROUP:
        return owner in identity.groups
    role = identity.projects.get(owner)
    return role is not None and role.rank >= Role.MEMBER.rank


async def resolve_owner(
    session: AsyncSession, identity: Identity, owner: str | None, kind: str | None
) -> tuple[str, str]:
    """(kind, owner) for a request: the caller by default; a name the caller is a
    member of is taken as that group; otherwise the kind must be said."""
    if owner is None:
        return OwnerKind.USER.value, identity.name
    if kind is None:
        if owner == identity.name:
            kind = OwnerKind.USER
        elif owner in identity.groups or await _exists(session, GroupModel, owner):
            kind = OwnerKind.GROUP
        elif await _exists(session, ProjectModel, owner):
            kind = OwnerKind.PROJECT
        else:
            kind = OwnerKind.USER
    return OwnerKind(kind).value, owner


async def _exists(session: AsyncSession, model: type[GroupModel | ProjectModel], name: str) -> bool:
    return (await session.execute(select(model.id).where(model.name == name))).first() is not None


async def put_secret(
    session: AsyncSession,
    box: SecretBox,
    identity: Identity,
    *,
    kind: str,
    owner: str,
    name: str,
    value: str,
    description: str,
    now: datetime,
) -> SecretModel:
    if not name or len(name) > 128:
        raise ClientError("secret name must be 1-128 characters", "invalid_secret", 422)
    if not may_use(identity, kind, owner):
        raise Forbidden(f"{identity.name} may not create secrets for the {kind} {owner!r}")
    existing = await find_secret(session, kind, owner, name)
    if existing is not None:
        existing.ciphertext = box.encrypt(value)
        existing.description = description
        existing.updated_at = now
        record_event(
            session, kind="secret", message=f"secret {name} updated", actor=identity.name, now=now
        )
        return existing
    model = SecretModel(
        id=uuid.uuid4().hex,
        owner=owner,
        owner_kind=kind,
        name=name,
        description=description,
        ciphertext=box.encrypt(value),
        created_at=now,
        updated_at=now,
    )
    session.add(model)
    record_event(
        session, kind="secret", message=f"secret {name} created", actor=identity.name, now=now
    )
    return model


async def find_secret(
    session: AsyncSession, kind: str, owner: str, name: str
) -> SecretModel | None:
    query = select(SecretModel).where(
        SecretModel.owner_kind == kind, SecretModel.owner == owner, SecretModel.name == name
    )
    return (await session.execute(query)).scalars().first()


async def list_secrets(
    session: AsyncSession, identity: Identity, owner: str | None
) -> Sequence[SecretModel]:
    """The secrets the caller may use, optionally of one owner."""
    query = select(SecretModel).order_by(SecretModel.owner, SecretModel.name)
    if owner:
        query = query.where(SecretModel.owner == owner)
    if not identity.is_admin:
        member_of = [p for p, role in identity.projects.items() if role.rank >= Role.MEMBER.rank]
        query = query.where(
            or_(
                and_(SecretModel.owner_kind == "user", SecretModel.owner == identity.name),
                and_(SecretModel.owner_kind == "group", SecretModel.owner.in_(identity.groups)),
                and_(SecretModel.owner_kind == "project", SecretModel.owner.in_(member_of)),
            )
        )
    return (await session.execute(query)).scalars().all()


async def delete_secret(
    session: AsyncSession, identity: Identity, kind: str, owner: str, name: str, now: datetime
) -> None:
    secret = await find_secret(session, kind, owner, name)
    if secret is None or not may_use(identity, kind, owner):
        raise NotFound(f"secret {name!r}")
    await session.delete(secret)
    record_event(
        session, kind="secret", message=f"secret {name} deleted", actor=identity.name, now=now
    )


async def attached_secret(
    session: AsyncSession, ref: SecretRef, recipe_owner: str, project: str | None
) -> SecretModel | None:
    """The secret `ref` names: by its explicit owner, else the recipe owner's (a
    user or a group), else the recipe's project's."""
    candidates: list[tuple[str, str]] = []
    if ref.owner:
        candidates = [("user", ref.owner), ("group", ref.owner), ("project", ref.owner)]
    else:
        candidates = [("user", recipe_owner), ("group", recipe_owner)]
        if project:
            candidates.append(("project", project))
    for kind, owner in candidates:
        found = await find_secret(session, kind, owner, ref.name)
        if found is not None:
            return found
    return None


async def check_attachments(
    session: AsyncSession,
    identity: Identity,
    refs: Sequence[SecretRef],
    owner: str,
    project: str | None,
) -> None:
    """At apply: every attached secret exists and the recipe may use it (it belongs
    to the recipe's owner, one of the applying user's groups, or its project).
    At launch the same lookup (`attached_secret`) finds it again.
    Errors name the field, never a value."""
    problems = []
    for index, ref in enumerate(refs):
        found = await attached_secret(session, ref, owner, project)
        path = f"spec.secrets[{index}].name"
        if found is None:
            problems.append(FieldProblem(path, f"no secret named {ref.name!r} is visible here"))
            continue
        # A user's secret only in their own recipes, a project's only in the
        # project's; a group's in recipes of anyone in the group.
        fits = {"user": found.owner == owner, "project": found.owner == project}
        if not fits.get(found.owner_kind, True) or not may_use(
            identity, found.owner_kind, found.owner
        ):
            problems.append(
                FieldProblem(path, f"secret {ref.name!r} of {found.owner!r} is not yours to attach")
            )
    if problems:
        raise InvalidRecipe(problems)


def remember_given(box: SecretBox, run: RunModel, values: Sequence[str]) -> None:
    """Keep with the run the secret values a launch of it was given (added to those
    of earlier attempts), sealed: its logs are masked with them even after the
    secrets are rotated or deleted (`log_redactor`)."""
    kept = given_values(box, run)
    merged = list(dict.fromkeys([*kept, *values]))
    if len(merged) > len(kept):
        run.secret_masks = box.encrypt(json.dumps(merged))


def given_values(box: SecretBox, run: RunModel) -> list[str]:
    """The values kept by `remember_given`; none for a run launched before they were."""
    if not run.secret_masks:
        return []
    values: list[str] = json.loads(box.decrypt(run.secret_masks))
    return values


async def log_redactor(
    session: AsyncSession, box: SecretBox, run: RunModel, recipe: RecipeModel
) -> Redactor:
    """A redactor for the logs of a run: the secret values its launches were given,
    and the current value of every secret it attaches (all a run launched before
    the values were kept has; masking more is harmless)."""
    values = given_values(box, run)
    if run.spec.get("secrets"):
        for ref in JobSpec.model_validate(run.spec).secrets:
            secret = await attached_secret(session, ref, recipe.owner, recipe.project)
            if secret is not None:
                values.append(box.decrypt(secret.ciphertext))
    return Redactor(values)


def secret_view(secret: SecretModel) -> dict[str, str]:
    """Metadata only: the value never leaves the server through the API."""
    return {
        "id": secret.id,
        "name": secret.name,
        "owner": secret.owner,
        "owner_kind": secret.owner_kind,
        "description": secret.description,
        "created_at": secret.created_at.isoformat(),
        "updated_at": secret.updated_at.isoformat(),
    }
