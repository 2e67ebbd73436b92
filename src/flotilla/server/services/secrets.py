"""The secret store: named values per owner, encrypted at rest, never returned
after creation. Runs reference them by name; values are resolved only when a task
is launched and handed straight to the node."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import ClientError, NotFound
from flotilla.server.db.models import SecretModel
from flotilla.server.secretbox import SecretBox
from flotilla.server.services.events import record_event


async def put_secret(
    session: AsyncSession,
    box: SecretBox,
    *,
    owner: str,
    name: str,
    value: str,
    description: str,
    actor: str,
    now: datetime,
) -> SecretModel:
    if not name or len(name) > 128:
        raise ClientError("secret name must be 1-128 characters", "invalid_secret", 422)
    existing = await find_secret(session, owner, name)
    if existing is not None:
        existing.ciphertext = box.encrypt(value)
        existing.description = description
        existing.updated_at = now
        record_event(session, kind="secret", message=f"secret {name} updated", actor=actor, now=now)
        return existing
    model = SecretModel(
        id=uuid.uuid4().hex,
        owner=owner,
        name=name,
        description=description,
        ciphertext=box.encrypt(value),
        created_at=now,
        updated_at=now,
    )
    session.add(model)
    record_event(session, kind="secret", message=f"secret {name} created", actor=actor, now=now)
    return model


async def find_secret(session: AsyncSession, owner: str, name: str) -> SecretModel | None:
    query = select(SecretModel).where(SecretModel.owner == owner, SecretModel.name == name)
    return (await session.execute(query)).scalars().first()


async def list_secrets(session: AsyncSession, owner: str | None) -> Sequence[SecretModel]:
    query = select(SecretModel).order_by(SecretModel.owner, SecretModel.name)
    if owner:
        query = query.where(SecretModel.owner == owner)
    return (await session.execute(query)).scalars().all()


async def delete_secret(
    session: AsyncSession, owner: str, name: str, actor: str, now: datetime
) -> None:
    secret = await find_secret(session, owner, name)
    if secret is None:
        raise NotFound(f"secret {name!r}")
    await session.delete(secret)
    record_event(session, kind="secret", message=f"secret {name} deleted", actor=actor, now=now)


def secret_view(secret: SecretModel) -> dict[str, str]:
    """Metadata only: the value never leaves the server through the API."""
    return {
        "id": secret.id,
        "name": secret.name,
        "owner": secret.owner,
        "description": secret.description,
        "created_at": secret.created_at.isoformat(),
        "updated_at": secret.updated_at.isoformat(),
    }
