"""The typed contract (`flotilla/api/`) of the identity routes: users, service
accounts, SSH keys, owners, groups, projects, tokens, logins and sessions, secrets
and the audit log. `/openapi.json` describes every success body and the errors each
route answers; every response, driven through the real app on both stores, parses
as its model and dumps back to exactly the JSON the server sent (no key lost,
none added, none renamed)."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from flotilla.api.audit import AuditPage
from flotilla.api.auth import Jwks, KeyRotation, LogoutResponse, SessionList, TokenResponse
from flotilla.api.groups import Group, GroupList
from flotilla.api.projects import Project, ProjectList
from flotilla.api.secrets import Secret, SecretList
from flotilla.api.tokens import CreatedToken, TokenList
from flotilla.api.users import (
    OwnerList,
    ServiceAccountCreated,
    ServiceAccountList,
    SshKey,
    User,
    UserBrief,
    UserList,
)
from tests.conftest import Api
from tests.factories import add_password_user, add_user, ssh_public_key

TAGS = {"users", "groups", "projects", "tokens", "auth", "secrets", "audit"}
# Routes that need no credential and never answer 401 (a login or a callback can).
NEVER_401 = {
    ("get", "/api/auth/jwks"),
    ("get", "/.well-known/jwks.json"),
    ("get", "/api/auth/oidc/login"),
}
PASSWORD = "correct horse battery staple"
ANON = {"Authorization": ""}
M = TypeVar("M", bound=BaseModel)


def typed(model: type[M], response: httpx.Response, status: int = 200) -> M:
    """The body as `model`, which must hold all of it: dumped back, it is the JSON."""
    assert response.status_code == status, response.text
    body = response.json()
    parsed = model.model_validate(body)
    assert parsed.model_dump(mode="json", exclude_unset=True) == body
    return parsed


async def spec_of(api: Api) -> dict[str, Any]:
    spec: dict[str, Any] = (await api.client.get("/openapi.json")).json()
    return spec


def identity_operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): op
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if TAGS & set(op.get("tags", []))
    }


async def test_every_identity_route_documents_its_success_body(sqlite_api: Api) -> None:
    from openapi_spec_validator import validate

    spec = await spec_of(sqlite_api)
    validate(spec)
    operations = identity_operations(spec)
    assert len(operations) >= 40
    undocumented = []
    for (method, path), op in operations.items():
        (status, success), *_ = [(s, r) for s, r in op["responses"].items() if s[0] in "23"]
        if status == "204":
            assert "content" not in success, (method, path)
        elif status == "302":
            assert "Location" in success["headers"], (method, path)
        elif not success.get("content", {}).get("application/json", {}).get("schema"):
            undocumented.append((method, path))  # none, or `{}` (any JSON at all)
    assert not undocumented


async def test_every_identity_route_documents_its_errors(sqlite_api: Api) -> None:
    operations = identity_operations(await spec_of(sqlite_api))
    for (method, path), op in operations.items():
        errors = {s for s in op["responses"] if s[0] in "45"}
        assert ("401" in errors) == ((method, path) not in NEVER_401), (method, path, errors)
        # FastAPI documents a 422 of its own on routes with parameters; the rest are ours.
        for status in errors - {"422"}:
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    assert set(operations[("post", "/api/users")]["responses"]) >= {"401", "403", "409", "422"}
    assert "401" not in operations[("get", "/api/auth/jwks")]["responses"]


async def test_the_errors_routes_answer_are_the_ones_they_document(api: Api) -> None:
    """Real refusals, each checked against its route's documented statuses."""
    client = api.client
    alice = await add_user(api.ctx, "alice", projects={"vision": "member"})
    await add_user(api.ctx, "bob")
    refusals: list[tuple[str, str, httpx.Response]] = [
        ("post", "/api/users", await client.post("/api/users", json={"username": "alice"})),
        ("post", "/api/users", await client.post("/api/users", json={}, headers=alice)),
        ("post", "/api/users", await client.post("/api/users", json={"username": "x", "y": 1})),
        ("get", "/api/users/{user_id}", await client.get("/api/users/bob", headers=alice)),
        ("delete", "/api/users/{user_id}", await client.delete("/api/users/admin")),
        (
            "patch",
            "/api/users/{user_id}",
            await client.patch("/api/users/alice", json={"admin": True}, headers=alice),
        ),
        ("get", "/api/groups/{group}", await client.get("/api/groups/nobody")),
        ("delete", "/api/projects/{project}", await client.delete("/api/projects/nowhere")),
        (
            "put",
            "/api/projects/{project}/members/{kind}/{name}",
            await client.put("/api/projects/vision/members/user/bob", json={}, headers=alice),
        ),
        (
            "get",
            "/api/tokens",
            await client.get("/api/tokens", params={"user": "bob"}, headers=alice),
        ),
        ("delete", "/api/tokens/{token_id}", await client.delete("/api/tokens/none")),
        (
            "post",
            "/api/tokens",
            await client.post(
                "/api/tokens", json={"name": "t", "scopes": ["admin"]}, headers=alice
            ),
        ),
        (
            "post",
            "/api/users/{user_id}/tokens",
            await client.post("/api/users/bob/tokens", json={"name": "t", "scopes": ["root"]}),
        ),
        (
            "post",
            "/api/secrets",
            await client.post(
                "/api/secrets", json={"name": "k", "value": "v", "owner": "bob"}, headers=alice
            ),
        ),
        ("delete", "/api/secrets/{name}", await client.delete("/api/secrets/none")),
        ("get", "/api/audit", await client.get("/api/audit", headers=alice)),
        ("get", "/api/audit", await client.get("/api/audit", params={"limit": 0})),
        ("post", "/api/auth/login", await client.post("/api/auth/login", json={}, headers=ANON)),
        (
            "post",
            "/api/auth/login",
            await client.post(
                "/api/auth/login", json={"username": "bob", "password": "nope"}, headers=ANON
            ),
        ),
        ("post", "/api/auth/logout", await client.post("/api/auth/logout")),
        (
            "post",
            "/api/auth/keys/rotate",
            await client.post("/api/auth/keys/rotate", headers=alice),
        ),
        (
            "get",
            "/api/auth/oidc/login",
            await client.get("/api/auth/oidc/login", headers=ANON, follow_redirects=False),
        ),
        ("get", "/api/orgs/{org_id}/owners", await client.get("/api/orgs/other/owners")),
    ]
    operations = identity_operations(await spec_of(api))
    for method, path, response in refusals:
        assert response.status_code >= 400, (method, path, response.text)
        documented = operations[(method, path)]["responses"]
        assert str(response.status_code) in documented, (method, path, response.status_code)


async def test_users_service_accounts_keys_and_owners_round_trip(api: Api) -> None:
    client = api.client
    alice = await add_user(api.ctx, "alice", groups=["vision"])
    created = typed(
        User,
        await client.post(
            "/api/users",
            json={"username": "carol", "email": "c@example.com", "password": PASSWORD},
        ),
        201,
    )
    assert created.username == "carol" and created.has_password and created.uid == created.gid
    await client.put(f"/api/groups/vision/members/{created.id}")
    patched = typed(User, await client.patch("/api/users/carol", json={"full_name": "Carol"}))
    assert patched.full_name == "Carol" and patched.groups == ["vision"]
    key = typed(
        SshKey, await client.post("/api/users/carol/ssh_keys", json={"key": ssh_public_key()}), 201
    )
    assert key.fingerprint is not None and key.fingerprint.startswith("SHA256:")
    # Alice sees carol (a fellow member of `vision`) by name only, herself in full.
    brief = TypeAdapter(User | UserBrief)
    assert (
        type(brief.validate_python((await client.get("/api/users/carol", headers=alice)).json()))
        is UserBrief
    )
    assert type(typed(User, await client.get("/api/users/alice", headers=alice))) is User
    seen = typed(UserList, await client.get("/api/users", headers=alice))
    assert {type(u).__name__ for u in seen.users} == {"User", "UserBrief"}
    assert len(typed(UserList, await client.get("/api/users")).users) == 3

    robot = typed(
        ServiceAccountCreated,
        await client.post("/api/service_accounts", json={"name": "robot"}),
        201,
    )
    assert robot.service_account.service_account and not robot.service_account.has_password
    accounts = typed(ServiceAccountList, await client.get("/api/service_accounts"))
    assert [a.username for a in accounts.service_accounts] == ["robot"]

    owners = await client.get("/api/orgs/default/owners", headers=alice)
    assert [set(o) for o in owners.json()["owners"]] == [{"id", "name", "identity_type"}] * 2
    typed(OwnerList, owners)
    detailed = typed(
        OwnerList,
        await client.get("/api/orgs/default/owners", params={"details": "true"}, headers=alice),
    )
    assert [(o.name, o.identity_type, o.description) for o in detailed.owners] == [
        ("alice", "user", ""),
        ("vision", "group", ""),
    ]


async def test_groups_and_projects_round_trip(api: Api) -> None:
    client = api.client
    await add_user(api.ctx, "alice")
    group = typed(
        Group,
        await client.post("/api/groups", json={"name": "vision", "members": ["alice"]}),
        201,
    )
    assert group.members == ["alice"] and group.unix_name
    typed(Group, await client.patch("/api/groups/vision", json={"description": "eyes"}))
    typed(Group, await client.put("/api/groups/vision/members/admin"))
    assert typed(Group, await client.get("/api/groups/vision")).members == ["admin", "alice"]
    assert [g.name for g in typed(GroupList, await client.get("/api/groups")).groups] == ["vision"]

    project = typed(
        Project,
        await client.post(
            "/api/projects",
            json={"name": "moon", "members": [{"group": "vision", "role": "viewer"}]},
        ),
        201,
    )
    assert [(m.kind, m.name, m.role) for m in project.members] == [("group", "vision", "viewer")]
    typed(Project, await client.patch("/api/projects/moon", json={"description": "far"}))
    changed = typed(
        Project, await client.put("/api/projects/moon/members/user/alice", json={"role": "admin"})
    )
    assert [(m.kind, m.name) for m in changed.members] == [("group", "vision"), ("user", "alice")]
    typed(Project, await client.get("/api/projects/moon"))
    listed = typed(ProjectList, await client.get("/api/projects"))
    assert [p.name for p in listed.projects] == ["moon"] and listed.next_key is None


async def test_tokens_and_secrets_round_trip(api: Api) -> None:
    client = api.client
    await add_user(api.ctx, "alice")
    mine = typed(CreatedToken, await client.post("/api/tokens", json={"name": "ci"}), 201)
    assert mine.token and mine.scopes == ["read", "write"] and mine.user == "admin"
    theirs = typed(
        CreatedToken,
        await client.post("/api/users/alice/tokens", json={"name": "t", "expires_in_days": 1}),
        201,
    )
    assert theirs.expires_at is not None
    await client.post("/api/service_accounts", json={"name": "robot"})
    typed(
        CreatedToken,
        await client.post("/api/service_accounts/robot/tokens", json={"name": "bot"}),
        201,
    )
    response = await client.get("/api/tokens")
    assert [t.name for t in typed(TokenList, response).tokens][-1] == "ci"
    assert all("token" not in t for t in response.json()["tokens"])
    assert [
        t.name for t in typed(TokenList, await client.get("/api/users/alice/tokens")).tokens
    ] == [
        "test",
        "t",
    ]

    put = {"name": "k", "value": "hunter2-xyzzy"}
    secret = typed(Secret, await client.post("/api/secrets", json=put), 201)
    assert (secret.owner, secret.owner_kind) == ("admin", "user")
    assert "hunter2-xyzzy" not in (await client.get("/api/secrets")).text
    assert [s.name for s in typed(SecretList, await client.get("/api/secrets")).secrets] == ["k"]


async def test_logins_sessions_keys_and_audit_round_trip(api: Api) -> None:
    client = api.client
    await add_password_user(api.ctx, "bob", PASSWORD)
    login = {"username": "bob", "password": PASSWORD}
    tokens = typed(TokenResponse, await client.post("/api/auth/login", json=login, headers=ANON))
    refreshed = typed(
        TokenResponse,
        await client.post(
            "/api/auth/refresh", json={"refresh_token": tokens.refresh_token}, headers=ANON
        ),
    )
    bob = {"Authorization": f"Bearer {refreshed.access_token}"}
    sessions = typed(SessionList, await client.get("/api/auth/sessions", headers=bob))
    assert [s.current for s in sessions.sessions] == [True]
    rotated = typed(KeyRotation, await client.post("/api/auth/keys/rotate"))
    for url in ("/api/auth/jwks", "/.well-known/jwks.json"):
        response = await client.get(url, headers=ANON)
        assert response.headers["cache-control"] == "public, max-age=300"
        assert [k.kid for k in typed(Jwks, response).keys] == rotated.keys
    out = typed(LogoutResponse, await client.post("/api/auth/logout", headers=bob))
    assert out.revoked == sessions.sessions[0].id

    page = typed(AuditPage, await client.get("/api/audit", params={"limit": 1}))
    assert len(page.entries) == 1 and page.next_before_id == page.entries[0].id
    everything = typed(AuditPage, await client.get("/api/audit"))
    assert everything.next_before_id is None
    assert {"POST /api/auth/login", "POST /api/auth/logout"} <= {
        e.action for e in everything.entries
    }
