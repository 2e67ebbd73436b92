"""API token checks are remembered for a few seconds (`server/auth/token_checks.py`)
and forgotten the moment this server commits a change to who may do what: a
revoked token, a locked user, a removed membership count from the next request,
whether the change was an ORM object or a DELETE statement. A change the server
did not make (another server, raw SQL) counts once the entry is older than its TTL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import delete, event, update

from flotilla.server.auth.token_checks import Checked, TokenChecks
from flotilla.server.db.models import ApiTokenModel, ProjectMemberModel, UserModel
from flotilla.server.identity import Identity
from tests.conftest import Api
from tests.factories import add_user, job

NOW = datetime(2026, 12, 4, tzinfo=UTC)


def _identity() -> Identity:
    return Identity(
        user_id="u1", name="alice", is_admin=False, scopes=frozenset({"read"}),
        groups=frozenset(), projects={}, auth_method="api_token",
        is_service_account=False,
    )  # fmt: skip


def test_an_entry_lasts_its_ttl_its_identity_version_and_its_token() -> None:
    t = [0.0]
    checks = TokenChecks(ttl=5.0, clock=lambda: t[0])
    found = Checked(_identity(), "tok1", None, NOW + timedelta(hours=1))
    checks.put("h", found, version=3)
    assert checks.get("h", 3, NOW) == found
    assert checks.get("h", 4, NOW) is None  # an identity changed: asked again
    checks.put("h", found, version=4)
    t[0] = 5.0
    assert checks.get("h", 4, NOW) is None  # too old
    checks.put("h", found, version=4)
    assert checks.get("h", 4, NOW + timedelta(hours=1)) is None  # the token expired
    assert checks.get("other", 4, NOW) is None


@contextmanager
def token_lookups(api: Api) -> Iterator[list[str]]:
    """The statements that read API tokens while the block runs."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM api_tokens" in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    target = api.ctx.engine.sync_engine
    event.listen(target, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(target, "before_cursor_execute", count)


async def _get(api: Api, path: str, headers: httpx.Headers) -> int:
    return (await api.client.get(path, headers=headers)).status_code


async def test_a_busy_client_is_checked_once_and_revocation_counts_at_once(api: Api) -> None:
    alice = await add_user(api.ctx, "alice")
    with token_lookups(api) as lookups:
        for _ in range(5):
            assert await _get(api, "/api/user", alice) == 200
    assert len(lookups) == 1

    tokens = (await api.client.get("/api/tokens", headers=alice)).json()["tokens"]
    revoked = await api.client.delete(f"/api/tokens/{tokens[0]['id']}", headers=alice)
    assert revoked.status_code == 204, revoked.text
    assert await _get(api, "/api/user", alice) == 401


async def test_a_locked_user_and_a_removed_membership_count_at_once(api: Api) -> None:
    bob = await add_user(api.ctx, "bob", projects={"vision": "member"})
    r = await api.client.put("/api/recipes", json=job("seen", "true", project="vision"))
    assert r.status_code == 201, r.text
    job_id = r.json()["state"]["id"]
    assert await _get(api, f"/api/jobs/{job_id}", bob) == 200  # remembered now

    # Removed by a DELETE statement, as deleting a project or a group does.
    async with api.ctx.transaction() as session:
        await session.execute(delete(ProjectMemberModel))
    assert await _get(api, f"/api/jobs/{job_id}", bob) == 404

    carol = await add_user(api.ctx, "carol")
    assert await _get(api, "/api/user", carol) == 200
    async with api.ctx.transaction() as session:  # an ORM update
        await session.execute(
            update(UserModel).where(UserModel.name == "carol").values(locked=True)
        )
    assert await _get(api, "/api/user", carol) == 401


async def test_a_change_made_elsewhere_counts_within_the_ttl(api: Api) -> None:
    assert api.app is not None
    api.app.state.token_checks = TokenChecks(ttl=0.3)
    dave = await add_user(api.ctx, "dave")
    me = await api.client.get("/api/user", headers=dave)
    assert me.status_code == 200
    # Another server revokes the token: this one's sessions never see the write.
    async with api.ctx.engine.begin() as connection:
        revoke = update(ApiTokenModel).where(ApiTokenModel.user_id == me.json()["id"])
        await connection.execute(revoke.values(revoked_at=datetime.now(UTC)))
    assert await _get(api, "/api/user", dave) == 200  # remembered, for the TTL at most
    await asyncio.sleep(0.35)
    assert await _get(api, "/api/user", dave) == 401
