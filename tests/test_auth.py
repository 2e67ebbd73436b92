"""Password logins, session JWTs, refresh-token rotation, logout and signing-key
rotation, on both stores, through the API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from flotilla.clock import FakeClock
from flotilla.server.auth.keys import signing_key
from flotilla.server.auth.passwords import hash_password, verify_password
from flotilla.server.auth.tokens import AUDIENCE
from flotilla.server.db.models import AuditModel, SigningKeyModel, UserModel
from tests.conftest import Api, make_settings, open_api
from tests.factories import add_password_user, add_user

PASSWORD = "correct horse battery staple"
ANON = {"Authorization": ""}


@pytest.fixture
async def clocked_api(data_dir: Path, database_url: str | None) -> AsyncIterator[Api]:
    """The app on each store with a clock that moves only when told."""
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    async for item in open_api(make_settings(data_dir, database_url), clock=clock):
        yield item


def clock_of(api: Api) -> FakeClock:
    assert isinstance(api.ctx.clock, FakeClock)
    return api.ctx.clock


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(api: Api, username: str, password: str = PASSWORD) -> httpx.Response:
    return await api.client.post(
        "/api/auth/login", json={"username": username, "password": password}, headers=ANON
    )


async def tokens_for(api: Api, username: str) -> dict[str, Any]:
    response = await login(api, username)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def whoami(api: Api, access_token: str) -> httpx.Response:
    return await api.client.get("/api/user", headers=bearer(access_token))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def test_password_login_gives_tokens_that_work(api: Api) -> None:
    await add_password_user(api.ctx, "alice", PASSWORD)
    response = await login(api, "alice")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    assert body["refresh_token"].startswith("flr_")

    me = await whoami(api, body["access_token"])
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "alice" and me.json()["admin"] is False
    # `token <JWT>` works too, like API tokens.
    me = await api.client.get(
        "/api/user", headers={"Authorization": f"token {body['access_token']}"}
    )
    assert me.status_code == 200

    header = jwt.get_unverified_header(body["access_token"])
    claims = claims_of(body["access_token"])
    jwks = (await api.client.get("/.well-known/jwks.json", headers=ANON)).json()
    assert header["alg"] == "RS256" and header["kid"] in [k["kid"] for k in jwks["keys"]]
    assert claims["aud"] == AUDIENCE and claims["iss"] == "flotilla"
    assert claims["name"] == "alice" and claims["scope"] == "read write"
    assert claims["exp"] - claims["iat"] == 900 and claims["jti"] and claims["sid"]


async def test_admin_sessions_carry_the_admin_scope(api: Api) -> None:
    await add_password_user(api.ctx, "root", PASSWORD, admin=True)
    tokens = await tokens_for(api, "root")
    assert claims_of(tokens["access_token"])["scope"] == "admin read write"
    assert (await whoami(api, tokens["access_token"])).json()["admin"] is True


async def test_wrong_password_and_unknown_user_get_the_same_401(api: Api) -> None:
    await add_password_user(api.ctx, "alice", PASSWORD)
    await add_user(api.ctx, "sso-only")  # no password: password login is off
    wrong = await login(api, "alice", "not the password")
    unknown = await login(api, "nobody")
    no_password = await login(api, "sso-only")
    assert wrong.status_code == unknown.status_code == no_password.status_code == 401
    assert wrong.json() == unknown.json() == no_password.json()
    assert wrong.json()["message"] == "invalid user name or password"

    # Who tried, and why it failed, is left for the audit log (never in the response).
    async with api.ctx.transaction() as session:
        rows = (
            await session.execute(
                select(AuditModel.actor, AuditModel.detail, AuditModel.status_code).where(
                    AuditModel.action == "POST /api/auth/login"
                )
            )
        ).all()
    assert ("alice", "login failed: bad password", 401) in rows
    assert ("nobody", "login failed: unknown user", 401) in rows
    assert (await login(api, "alice")).status_code == 200


async def test_locked_users_and_service_accounts_cannot_log_in(api: Api) -> None:
    await add_password_user(api.ctx, "locked", PASSWORD, locked=True)
    await add_password_user(api.ctx, "robot", PASSWORD, service_account=True)
    locked = await login(api, "locked")
    assert locked.status_code == 401 and "locked" in locked.json()["message"]
    robot = await login(api, "robot")
    assert robot.status_code == 401 and "service account" in robot.json()["message"]
    # Locking a user also ends the sessions they already have.
    await add_password_user(api.ctx, "bob", PASSWORD)
    tokens = await tokens_for(api, "bob")
    async with api.ctx.transaction() as session:
        user = (
            await session.execute(select(UserModel).where(UserModel.name == "bob"))
        ).scalar_one()
        user.locked = True
    assert (await whoami(api, tokens["access_token"])).status_code == 401
    refreshed = await api.client.post(
        "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}, headers=ANON
    )
    assert refreshed.status_code == 401 and "locked" in refreshed.json()["message"]


async def refresh(api: Api, refresh_token: str) -> httpx.Response:
    return await api.client.post(
        "/api/auth/refresh", json={"refresh_token": refresh_token}, headers=ANON
    )


async def test_refresh_rotates_and_reuse_revokes_the_session(api: Api) -> None:
    await add_password_user(api.ctx, "alice", PASSWORD)
    first = await tokens_for(api, "alice")
    second_response = await refresh(api, first["refresh_token"])
    assert second_response.status_code == 200, second_response.text
    second = second_response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert claims_of(second["access_token"])["sid"] == claims_of(first["access_token"])["sid"]
    assert (await whoami(api, second["access_token"])).status_code == 200
    third = (await refresh(api, second["refresh_token"])).json()

    # A token we made but that was rotated away: replayed, so the session ends.
    replayed = await refresh(api, first["refresh_token"])
    assert replayed.status_code == 401 and "already used" in replayed.json()["message"]
    assert (await refresh(api, third["refresh_token"])).status_code == 401
    gone = await whoami(api, third["access_token"])
    assert gone.status_code == 401 and "revoked" in gone.json()["message"]


async def test_forged_refresh_tokens_are_refused_and_revoke_nothing(api: Api) -> None:
    await add_password_user(api.ctx, "alice", PASSWORD)
    tokens = await tokens_for(api, "alice")
    sid = claims_of(tokens["access_token"])["sid"]
    for forged in ("nonsense", f"flr_{sid}", "flr_" + b64(f"{sid}:x".encode())):
        response = await refresh(api, forged)
        assert response.status_code == 401 and response.json()["message"] == "invalid refresh token"
    assert (await refresh(api, tokens["refresh_token"])).status_code == 200


async def test_logout_ends_the_session_at_once(api: Api) -> None:
    await add_password_user(api.ctx, "alice", PASSWORD)
    tokens = await tokens_for(api, "alice")
    other = await tokens_for(api, "alice")
    listed = (
        await api.client.get("/api/auth/sessions", headers=bearer(tokens["access_token"]))
    ).json()["sessions"]
    assert len(listed) == 2 and [s["current"] for s in listed].count(True) == 1
    assert all("hash" not in key for s in listed for key in s)

    out = await api.client.post("/api/auth/logout", headers=bearer(tokens["access_token"]))
    assert out.status_code == 200, out.text
    assert out.json()["revoked"] == claims_of(tokens["access_token"])["sid"]
    after = await whoami(api, tokens["access_token"])  # long before its exp
    assert after.status_code == 401 and "revoked" in after.json()["message"]
    assert (await refresh(api, tokens["refresh_token"])).status_code == 401
    assert (await whoami(api, other["access_token"])).status_code == 200  # the other session


async def test_logout_of_a_named_session(api: Api) -> None:
    bob = await add_password_user(api.ctx, "bob", PASSWORD)
    await add_password_user(api.ctx, "alice", PASSWORD)
    tokens = await tokens_for(api, "alice")
    sid = claims_of(tokens["access_token"])["sid"]
    # An API token is no session: it must name one. Others' sessions are invisible.
    assert (await api.client.post("/api/auth/logout", headers=bob)).status_code == 400
    theirs = await api.client.post("/api/auth/logout", headers=bob, json={"session_id": sid})
    assert theirs.status_code == 404
    # A platform admin may end anyone's session.
    ended = await api.client.post("/api/auth/logout", json={"session_id": sid})
    assert ended.status_code == 200, ended.text
    assert (await whoami(api, tokens["access_token"])).status_code == 401


async def test_expired_access_token_is_refused_and_refresh_still_works(clocked_api: Api) -> None:
    api = clocked_api
    await add_password_user(api.ctx, "alice", PASSWORD)
    tokens = await tokens_for(api, "alice")
    clock_of(api).advance(899)
    assert (await whoami(api, tokens["access_token"])).status_code == 200
    clock_of(api).advance(1)
    expired = await whoami(api, tokens["access_token"])
    assert expired.status_code == 401 and "expired" in expired.json()["message"]
    fresh = (await refresh(api, tokens["refresh_token"])).json()
    assert (await whoami(api, fresh["access_token"])).status_code == 200
    # The refresh token itself lapses after 14 days without use.
    clock_of(api).advance(14 * 24 * 3600)
    late = await refresh(api, fresh["refresh_token"])
    assert late.status_code == 401 and "expired" in late.json()["message"]


async def test_tampered_foreign_and_downgraded_tokens_are_refused(api: Api) -> None:
    await add_password_user(api.ctx, "alice", PASSWORD)
    tokens = await tokens_for(api, "alice")
    token = tokens["access_token"]
    header_part, payload_part, signature = token.split(".")
    kid = jwt.get_unverified_header(token)["kid"]
    claims = claims_of(token)

    # The payload changed (made an admin), the signature kept.
    forged_claims = {**claims, "scope": "admin read write", "name": "admin"}
    tampered = f"{header_part}.{b64(json.dumps(forged_claims).encode())}.{signature}"
    # Properly signed, by a key that is not ours, under our kid.
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    foreign = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": kid})
    # No signature at all.
    none_header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    unsigned = f"{none_header}.{payload_part}."
    # HS256 keyed with our public key (the classic algorithm confusion).
    async with api.ctx.transaction() as session:
        key = await signing_key(session, api.ctx.secret_box, api.ctx.clock.now())
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    mac = hmac.new(public_pem, f"{hs_header}.{payload_part}".encode(), hashlib.sha256).digest()
    confused = f"{hs_header}.{payload_part}.{b64(mac)}"
    # A token naming a key we never had.
    unknown_kid = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": "nope"})

    expected = {
        "tampered": (tampered, "signature"),
        "foreign key, our kid": (foreign, "signature"),
        "alg none": (unsigned, "only RS256"),
        "HS256": (confused, "only RS256"),
        "unknown kid": (unknown_kid, "does not trust"),
        "garbage": ("a.b.c", "malformed"),
    }
    for what, (bad, words) in expected.items():
        response = await whoami(api, bad)
        assert response.status_code == 401, (what, response.text)
        assert words in response.json()["message"], (what, response.json())
    assert (await whoami(api, token)).status_code == 200


async def test_wrong_audience_or_issuer_is_refused(api: Api) -> None:
    await add_password_user(api.ctx, "alice", PASSWORD)
    claims = claims_of((await tokens_for(api, "alice"))["access_token"])
    async with api.ctx.transaction() as session:
        key = await signing_key(session, api.ctx.secret_box, api.ctx.clock.now())
    for change in ({"aud": "someone-else"}, {"iss": "https://evil.example"}):
        token = jwt.encode(
            {**claims, **change}, key.private_key, algorithm="RS256", headers={"kid": key.kid}
        )
        response = await whoami(api, token)
        assert response.status_code == 401 and "invalid session token" in response.json()["message"]


async def test_key_rotation_keeps_old_tokens_until_they_expire(clocked_api: Api) -> None:
    api = clocked_api
    await add_password_user(api.ctx, "alice", PASSWORD)
    before = await tokens_for(api, "alice")
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
    # A token the old key signed with a far-off exp: only the key's retirement ends it.
    async with api.ctx.transaction() as session:
        old_key = await signing_key(session, api.ctx.secret_box, api.ctx.clock.now())
    long_lived = jwt.encode(
        {
            **claims_of(before["access_token"]),
            "exp": claims_of(before["access_token"])["exp"] + 10**6,
        },
        old_key.private_key,
        algorithm="RS256",
        headers={"kid": old_kid},
    )

    bob = await add_password_user(api.ctx, "bob", PASSWORD)
    assert (await api.client.post("/api/auth/keys/rotate", headers=bob)).status_code == 403
    rotated = await api.client.post("/api/auth/keys/rotate")
    assert rotated.status_code == 200, rotated.text
    new_kid = rotated.json()["kid"]
    assert new_kid != old_kid and rotated.json()["keys"] == [new_kid, old_kid]

    for path in ("/.well-known/jwks.json", "/api/auth/jwks"):
        jwks = (await api.client.get(path, headers=ANON)).json()
        assert [k["kid"] for k in jwks["keys"]] == [new_kid, old_kid]
        assert all(set(k) >= {"kty", "n", "e", "kid"} and "d" not in k for k in jwks["keys"])
    after = await tokens_for(api, "alice")
    assert jwt.get_unverified_header(after["access_token"])["kid"] == new_kid
    for token in (before["access_token"], long_lived, after["access_token"]):
        assert (await whoami(api, token)).status_code == 200

    clock_of(api).advance(900)  # one access-token lifetime after the rotation
    jwks = (await api.client.get("/.well-known/jwks.json", headers=ANON)).json()
    assert [k["kid"] for k in jwks["keys"]] == [new_kid]
    refused = await whoami(api, long_lived)
    assert refused.status_code == 401 and "does not trust" in refused.json()["message"]
    fresh = (await refresh(api, after["refresh_token"])).json()
    assert (await whoami(api, fresh["access_token"])).status_code == 200
    # The next rotation prunes the long-retired key.
    assert (await api.client.post("/api/auth/keys/rotate")).status_code == 200
    async with api.ctx.transaction() as session:
        kids = set((await session.execute(select(SigningKeyModel.kid))).scalars())
    assert old_kid not in kids and new_kid in kids and len(kids) == 2


async def test_keys_survive_a_restart_encrypted(data_dir: Path, database_url: str | None) -> None:
    settings = make_settings(data_dir, database_url)
    async for api in open_api(settings):
        await add_password_user(api.ctx, "alice", PASSWORD)
        tokens = await tokens_for(api, "alice")
        async with api.ctx.transaction() as session:
            stored = (await session.execute(select(SigningKeyModel.private_key))).scalars().all()
        assert len(stored) == 1 and "PRIVATE KEY" not in stored[0]
    async for api in open_api(settings):
        assert (await whoami(api, tokens["access_token"])).status_code == 200
        assert (await refresh(api, tokens["refresh_token"])).status_code == 200


async def test_auth_routes_validate_their_bodies(api: Api) -> None:
    response = await api.client.post("/api/auth/login", json={"username": "x"}, headers=ANON)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "body.password"
    response = await api.client.post("/api/auth/refresh", json={}, headers=ANON)
    assert response.status_code == 422
    assert (await api.client.get("/api/auth/sessions", headers=ANON)).status_code == 401
    assert (await api.client.post("/api/auth/keys/rotate", headers=ANON)).status_code == 401


def test_password_hashes_are_argon2id_and_rehashed_when_weak() -> None:
    stored = hash_password("s3cret-enough")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "s3cret-enough") == (True, None)
    assert verify_password(stored, "wrong").ok is False
    assert verify_password(None, "anything").ok is False
    assert verify_password(None, "flotilla: no such user").ok is False  # the dummy's own
    assert verify_password("not a hash", "anything").ok is False
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("s3cret-enough")
    check = verify_password(weak, "s3cret-enough")
    assert check.ok and check.rehashed is not None and check.rehashed != weak
    assert verify_password(check.rehashed, "s3cret-enough") == (True, None)


async def test_login_rehashes_an_outdated_password_hash(api: Api) -> None:
    await add_password_user(api.ctx, "alice", PASSWORD)
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    async with api.ctx.transaction() as session:
        user = (
            await session.execute(select(UserModel).where(UserModel.name == "alice"))
        ).scalar_one()
        user.password_hash = weak
    assert (await login(api, "alice")).status_code == 200
    async with api.ctx.transaction() as session:
        user = (
            await session.execute(select(UserModel).where(UserModel.name == "alice"))
        ).scalar_one()
        assert user.password_hash != weak and user.password_hash is not None
        assert verify_password(user.password_hash, PASSWORD) == (True, None)
