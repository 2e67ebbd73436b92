"""Declarative identity: `type: user|group|project` recipes through `PUT /api/recipes`
apply idempotently, sync membership, and are for platform admins only."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Api
from tests.factories import add_user, ssh_public_key


def recipe(kind: str, **spec: Any) -> dict[str, Any]:
    return {"schema_version": "2025.10.01", "type": kind, "spec": spec}


async def apply(client: httpx.AsyncClient, document: dict[str, Any]) -> dict[str, Any]:
    response = await client.put("/api/recipes", json=document)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_identity_recipes_apply_idempotently_and_sync_members(api: Api) -> None:
    client = api.client
    key = ssh_public_key("alice@laptop")
    documents = [
        recipe("user", name="alice", email="alice@example.com", ssh_public_keys=[key]),
        recipe("user", name="bob", full_name="Bob"),
        recipe("user", name="carol"),
        recipe("user", name="ci-bot", service_account=True),
        recipe("group", name="ml", description="ML", members=["alice", "bob"]),
        recipe(
            "project",
            name="vision",
            members=[{"user": "alice", "role": "admin"}, {"group": "ml", "role": "viewer"}],
        ),
    ]
    first = [await apply(client, d) for d in documents]
    assert all(r["state"]["changed"] for r in first)
    assert first[0]["type"] == "user" and first[0]["spec"]["ssh_public_keys"] == [key]
    assert first[0]["state"]["version"] == 1  # what `flo apply` prints
    again = [await apply(client, d) for d in documents]
    assert not any(r["state"]["changed"] for r in again)
    assert [r["state"]["id"] for r in again] == [r["state"]["id"] for r in first]

    alice = (await client.get("/api/users/alice")).json()
    assert alice["groups"] == ["ml"] and alice["projects"] == {"vision": "admin"}
    assert alice["email"] == "alice@example.com" and len(alice["ssh_keys"]) == 1
    assert (await client.get("/api/users/ci-bot")).json()["service_account"] is True

    # Changed members: bob leaves ml, carol joins; the project drops the group.
    changed = await apply(client, recipe("group", name="ml", members=["alice", "carol"]))
    assert changed["state"]["changed"] and changed["spec"]["members"] == ["alice", "carol"]
    assert changed["spec"]["description"] == ""
    project = await apply(
        client,
        recipe(
            "project",
            name="vision",
            description="cameras",
            members=[{"user": "alice", "role": "member"}, {"user": "bob", "role": "admin"}],
        ),
    )
    assert project["spec"]["members"] == [
        {"user": "alice", "role": "member"},
        {"user": "bob", "role": "admin"},
    ]
    members = (await client.get("/api/projects/vision")).json()["members"]
    assert members == [
        {"kind": "user", "name": "alice", "role": "member"},
        {"kind": "user", "name": "bob", "role": "admin"},
    ]
    assert (await client.get("/api/users/carol")).json()["projects"] == {}

    # Read back as a recipe, and re-applied unchanged.
    exported = (await client.get("/api/recipes/group/ml")).json()
    assert exported["spec"] == {"name": "ml", "description": "", "members": ["alice", "carol"]}
    assert not (await apply(client, exported))["state"]["changed"]
    user = (await client.get("/api/recipes/users/alice")).json()
    assert user["spec"]["email"] == "alice@example.com"
    assert not (await apply(client, user))["state"]["changed"]


async def test_identity_recipe_errors(api: Api) -> None:
    client = api.client
    await apply(client, recipe("user", name="alice"))

    async def problems(document: dict[str, Any], status: int = 422) -> dict[str, str]:
        response = await client.put("/api/recipes", json=document)
        assert response.status_code == status, response.text
        return {e["field"]: e["message"] for e in response.json().get("errors", [])}

    assert "spec.name" in await problems(recipe("user", name="Alice"))
    assert "spec.ssh_public_keys[0]" in await problems(
        recipe("user", name="bob", ssh_public_keys=["ssh-ed25519 nope"])
    )
    assert "spec.emial" in await problems(recipe("user", name="bob", emial="b@example.com"))
    assert await problems(recipe("group", name="ml", members=["alice", "zed"])) == {
        "spec.members[1]": "no user named 'zed'"
    }
    assert "spec.members[0].group" in await problems(
        recipe("project", name="p", members=[{"group": "nobody", "role": "admin"}])
    )
    assert "spec.members[0].role" in await problems(
        recipe("project", name="p", members=[{"user": "alice", "role": "owner"}])
    )
    assert "spec.members[0]" in await problems(
        recipe("project", name="p", members=[{"user": "alice", "group": "ml"}])
    )
    # The shared namespace, the bootstrap admin and a user's kind are protected.
    await problems(recipe("group", name="alice"), 409)
    await problems(recipe("user", name="admin", admin=False), 409)
    await problems(recipe("user", name="alice", service_account=True), 409)
    # Nothing was half-applied.
    groups = (await client.get("/api/groups")).json()["groups"]
    assert groups == [] and (await client.get("/api/projects")).json()["projects"] == []

    alice = await add_user(api.ctx, "alice2", groups=["ml"])
    refused = await client.put("/api/recipes", json=recipe("group", name="ml"), headers=alice)
    assert refused.status_code == 403
    assert (await client.get("/api/recipes/user/admin", headers=alice)).status_code == 404
