"""API tokens and service accounts: a token's plaintext is shown once, scopes never
grow beyond the holder's or the creating token's, revoked and expired tokens stop
working; service accounts have tokens and no password."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from flotilla.clock import FakeClock
from tests.conftest import Api, make_settings, open_api
from tests.factories import add_user, job


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def mint(
    client: httpx.AsyncClient,
    headers: httpx.Headers | dict[str, str] | None = None,
    path: str = "/api/tokens",
    **body: object,
) -> httpx.Response:
    """POST a token request (as the admin unless `headers` say otherwise)."""
    return await client.post(path, json={"name": "t", **body}, headers=headers)


@pytest.fixture
async def clocked_api(data_dir: Path) -> AsyncIterator[Api]:
    """The app on SQLite with a clock the test moves."""
    async for item in open_api(make_settings(data_dir), clock=FakeClock()):
        yield item


async def test_token_is_shown_once_listed_without_secret_and_revocable(api: Api) -> None:
    client = api.client
    alice = await add_user(api.ctx, "alice")
    created = await mint(client, alice, name="laptop", scopes=["read", "write"])
    assert created.status_code == 201, created.text
    body = created.json()
    token = body["token"]
    assert token.startswith("flo_") and body["scopes"] == ["read", "write"]
    assert body["user"] == "alice" and body["expires_at"] is None

    me = await client.get("/api/user", headers=auth(token))
    assert me.status_code == 200 and me.json()["username"] == "alice"

    listed = await client.get("/api/tokens", headers=alice)
    assert listed.status_code == 200
    assert token not in listed.text and "token_hash" not in listed.text
    tokens = {t["name"]: t for t in listed.json()["tokens"]}
    assert set(tokens) == {"test", "laptop"}  # the factory's token and the new one
    assert tokens["laptop"]["last_used_at"] is not None and "token" not in tokens["laptop"]
    assert tokens["laptop"]["revoked_at"] is None

    # Others' tokens are neither listed nor revocable.
    bob = await add_user(api.ctx, "bob")
    assert "laptop" not in (await client.get("/api/tokens", headers=bob)).text
    assert (await client.delete(f"/api/tokens/{body['id']}", headers=bob)).status_code == 404
    assert (await client.get("/api/tokens?user=alice", headers=bob)).status_code == 404

    assert (await client.delete(f"/api/tokens/{body['id']}", headers=alice)).status_code == 204
    revoked = await client.get("/api/user", headers=auth(token))
    assert revoked.status_code == 401 and "revoked" in revoked.json()["message"]
    after = {
        t["name"]: t for t in (await client.get("/api/tokens", headers=alice)).json()["tokens"]
    }
    assert after["laptop"]["revoked_at"] is not None
    # An admin sees and revokes anyone's.
    admin_view = await client.get("/api/users/alice/tokens")
    assert {t["name"] for t in admin_view.json()["tokens"]} == {"test", "laptop"}


async def test_scopes_never_exceed_the_holder_or_the_creating_token(api: Api) -> None:
    client = api.client
    alice = await add_user(api.ctx, "alice")
    refused = await mint(client, alice, scopes=["read", "admin"])
    assert refused.status_code == 403 and "not a platform admin" in refused.json()["message"]

    read_only = (await mint(client, alice, scopes=["read"])).json()["token"]
    assert (await client.get("/api/recipes", headers=auth(read_only))).status_code == 200
    write = await client.put("/api/recipes", json=job("x"), headers=auth(read_only))
    assert write.status_code == 403 and "write" in write.json()["message"]
    escalate = await mint(client, auth(read_only), scopes=["read", "write"])
    assert escalate.status_code == 403

    # An admin whose token lacks `admin` cannot mint one that has it.
    root = await add_user(api.ctx, "root", admin=True, scopes=("read", "write"))
    escalate = await mint(client, root, scopes=["read", "write", "admin"])
    assert escalate.status_code == 403 and "beyond" in escalate.json()["message"]
    own = await mint(client, root, scopes=["read"])
    assert own.status_code == 201
    # The bootstrap admin's token has every scope and may mint an admin token.
    admin_token = (await mint(client, scopes=["read", "write", "admin"])).json()["token"]
    assert (await client.get("/api/users", headers=auth(admin_token))).status_code == 200

    for bad, field in (
        ({"scopes": []}, "scopes"),
        ({"scopes": ["read", "root"]}, "scopes"),
        ({"expires_in_days": 0}, "expires_in_days"),
        ({"expires_at": "2000-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "2999-01-01T00:00:00"}, "expires_at"),
        ({"expires_in_days": 3, "expires_at": "2999-01-01T00:00:00Z"}, "expires_at"),
    ):
        response = await mint(client, alice, **bad)
        assert response.status_code == 422, (bad, response.text)
        assert [e["field"] for e in response.json()["errors"]] == [field]


async def test_tokens_for_others_need_a_platform_admin(api: Api) -> None:
    client = api.client
    alice = await add_user(api.ctx, "alice", groups=["ml"])
    await add_user(api.ctx, "bob", groups=["ml"])
    assert (await mint(client, alice, path="/api/users/bob/tokens")).status_code == 403
    # An admin gives a new user their first token.
    first = await mint(client, path="/api/users/bob/tokens", scopes=["read"])
    assert first.status_code == 201 and first.json()["user"] == "bob"
    me = (await client.get("/api/user", headers=auth(first.json()["token"]))).json()
    assert me["username"] == "bob" and me["scopes"] == ["read"]
    # A locked user gets none and cannot use the ones they have.
    assert (await client.patch("/api/users/bob", json={"locked": True})).status_code == 200
    assert (await mint(client, path="/api/users/bob/tokens")).status_code == 409
    assert (await client.get("/api/user", headers=auth(first.json()["token"]))).status_code == 401


async def test_service_accounts_use_tokens_and_have_no_password(api: Api) -> None:
    client = api.client
    created = await client.post(
        "/api/service_accounts", json={"name": "ci-bot", "cloud_role": "", "auto_associate": False}
    )
    assert created.status_code == 201, created.text
    account = created.json()["service_account"]
    assert account["service_account"] is True and account["has_password"] is False
    listed = (await client.get("/api/service_accounts")).json()["service_accounts"]
    assert [a["username"] for a in listed] == ["ci-bot"]

    password = await client.patch("/api/users/ci-bot", json={"password": "long enough pw"})
    assert password.status_code == 422 and password.json()["errors"][0]["field"] == "password"
    # A person may have one (admins set it).
    await client.post("/api/users", json={"username": "alice", "password": "long enough pw"})
    alice = (await client.get("/api/users/alice")).json()
    assert alice["has_password"] is True and "argon2" not in str(alice)
    short = await client.post("/api/users", json={"username": "bob", "password": "short"})
    assert short.status_code == 422

    token = await mint(client, path=f"/api/service_accounts/{account['id']}/tokens")
    assert token.status_code == 201, token.text
    headers = auth(token.json()["token"])
    me = (await client.get("/api/user", headers=headers)).json()
    assert me["username"] == "ci-bot" and me["service_account"] is True
    applied = await client.put("/api/recipes", json=job("nightly"), headers=headers)
    assert applied.status_code == 201 and applied.json()["spec"]["owner"] == "ci-bot"
    admin_scope = await mint(
        client, path="/api/service_accounts/ci-bot/tokens", scopes=["read", "admin"]
    )
    assert admin_scope.status_code == 403
    not_an_account = await mint(client, path="/api/service_accounts/alice/tokens")
    assert not_an_account.status_code == 404
    # Minting for a service account is an admin's job, even for the account itself.
    own = await mint(client, headers, path="/api/service_accounts/ci-bot/tokens")
    assert own.status_code == 403
    assert (await mint(client, headers, scopes=["read"])).status_code == 403


async def test_expired_tokens_stop_working(clocked_api: Api) -> None:
    client = clocked_api.client
    clock = clocked_api.ctx.clock
    assert isinstance(clock, FakeClock)
    alice = await add_user(clocked_api.ctx, "alice")
    created = (await mint(client, alice, expires_in_days=1)).json()
    assert datetime.fromisoformat(created["expires_at"]) == clock.now() + timedelta(days=1)
    at = (clock.now() + timedelta(hours=2)).isoformat()
    pinned = (await mint(client, alice, expires_at=at)).json()
    assert datetime.fromisoformat(pinned["expires_at"]) == clock.now() + timedelta(hours=2)

    assert (await client.get("/api/user", headers=auth(created["token"]))).status_code == 200
    clock.advance(3 * 3600)
    assert (await client.get("/api/user", headers=auth(pinned["token"]))).status_code == 401
    assert (await client.get("/api/user", headers=auth(created["token"]))).status_code == 200
    clock.advance(24 * 3600)
    expired = await client.get("/api/user", headers=auth(created["token"]))
    assert expired.status_code == 401 and "expired" in expired.json()["message"]
