"""What a user, a group or a project owns by name: its budgets and its secrets.
Deleting the owner deletes them, so whoever later takes the name inherits
nothing. Called by the users, groups and projects services."""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.server.db.models import BudgetModel, SecretModel


async def forget_owner(session: AsyncSession, kind: str, name: str) -> None:
    await session.execute(
        delete(BudgetModel).where(BudgetModel.scope_kind == kind, BudgetModel.scope_name == name)
    )
    await session.execute(
        delete(SecretModel).where(SecretModel.owner_kind == kind, SecretModel.owner == name)
    )
