"""Users' SSH public keys: adding, removing, the API's view of them, and finding the
one user a key belongs to (the SSH gateway's login). A key identifies one person,
so it may be registered to one account only: otherwise someone could register a
colleague's public key (public keys are public) and have the colleague's logins
land in their own tasks. Called by `services/identity/users.py`, `routers/users.py` and
`server/ssh`."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import Conflict, NotFound
from flotilla.recipes.identity import invalid, parse_ssh_key
from flotilla.server.db.models import UserModel


def canonical_keys(keys: Sequence[str], field: str) -> list[str]:
    """Each key parsed and in canonical form; 422 naming the bad one's index."""
    out: list[str] = []
    for i, text in enumerate(keys):
        try:
            line = parse_ssh_key(text).line
        except ValueError as e:
            raise invalid(f"{field}[{i}]", str(e)) from e
        if line not in out:
            out.append(line)
    return out


async def check_keys_unclaimed(
    session: AsyncSession, lines: Sequence[str], user_id: str | None
) -> None:
    """409 if another account already has one of these keys (it is not named: who
    owns a key is nobody else's business)."""
    wanted = {_blob(line) for line in lines} - {None}
    if not wanted:
        return
    for other in await _users_with_keys(session):
        if other.id == user_id:
            continue
        for line in other.ssh_public_keys:
            if _blob(str(line)) in wanted:
                fingerprint = parse_ssh_key(str(line)).fingerprint
                raise Conflict(
                    f"the SSH key {fingerprint} is registered to another account; "
                    "a key identifies one person, so use a key of your own"
                )


async def add_ssh_key(session: AsyncSession, user: UserModel, text: str) -> dict[str, Any]:
    if user.is_service_account:
        raise invalid("key", "service accounts use API tokens only")
    try:
        key = parse_ssh_key(text)
    except ValueError as e:
        raise invalid("key", str(e)) from e
    if any(_fingerprint(k) == key.fingerprint for k in user.ssh_public_keys):
        raise Conflict(f"{user.name} already has the key {key.fingerprint}")
    await check_keys_unclaimed(session, [key.line], user.id)
    user.ssh_public_keys = [*user.ssh_public_keys, key.line]
    return ssh_key_view(key.line)


def remove_ssh_key(user: UserModel, fingerprint: str) -> None:
    wanted = fingerprint if fingerprint.startswith("SHA256:") else f"SHA256:{fingerprint}"
    kept = [k for k in user.ssh_public_keys if _fingerprint(k) != wanted.rstrip("=")]
    if len(kept) == len(user.ssh_public_keys):
        raise NotFound(f"SSH key {wanted} of user {user.name!r}")
    user.ssh_public_keys = kept


def ssh_key_view(line: str) -> dict[str, Any]:
    try:
        key = parse_ssh_key(line)
    except ValueError:  # stored before validation existed: show it, unfingerprinted
        return {"key": line, "type": None, "fingerprint": None, "comment": ""}
    return {
        "key": key.line,
        "type": key.key_type,
        "fingerprint": key.fingerprint,
        "comment": key.comment,
    }


async def user_for_key(session: AsyncSession, key_blob: bytes) -> UserModel | None:
    """The one unlocked person whose registered keys include this one (the key's
    wire form), or None. A key found on two accounts (registered before keys were
    checked for clashes) opens neither."""
    owners = [
        user
        for user in await _users_with_keys(session)
        if not user.locked and any(_blob(str(line)) == key_blob for line in user.ssh_public_keys)
    ]
    return owners[0] if len(owners) == 1 else None


async def _users_with_keys(session: AsyncSession) -> list[UserModel]:
    # Keys live in a JSON column: scanned, not indexed. Fine for thousands of users.
    users = (
        await session.execute(select(UserModel).where(UserModel.is_service_account.is_(False)))
    ).scalars()
    return [user for user in users if user.ssh_public_keys]


def _blob(line: str) -> bytes | None:
    parts = line.split()
    try:
        return base64.b64decode(parts[1], validate=True) if len(parts) >= 2 else None
    except (binascii.Error, ValueError):
        return None


def _fingerprint(line: str) -> str | None:
    try:
        return parse_ssh_key(line).fingerprint
    except ValueError:
        return None
