"""Users, service accounts, groups, projects and roles through the REST API on both
stores: CRUD, the shared user/group namespace, validation, who may do what."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx

from flotilla.recipes.identity import parse_ssh_key
from tests.conftest import Api
from tests.factories import add_user, job, ssh_public_key


def fields(response: httpx.Response) -> dict[str, str]:
    """The 422 body's field -> message."""
    assert response.status_code == 422, response.text
    return {e["field"]: e["message"] for e in response.json()["errors"]}


async def create_user(api: Api, name: str, **body: Any) -> dict[str, Any]:
    response = await api.client.post("/api/users", json={"username": name, **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    line = ssh_public_key("alice@laptop")
    (tmp_path / "k.pub").write_text(line + "\n")
    printed = subprocess.run(
        ["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True, check=True
    ).stdout.split()
    key = parse_ssh_key("  " + line.replace(" alice", "   alice") + "\n")
    assert key.fingerprint == printed[1]
    assert key.line == line  # canonical: single spaces, comment kept
    assert parse_ssh_key(line.rsplit(" ", 1)[0]).comment == ""


async def test_user_crud_and_ssh_keys(api: Api) -> None:
    client = api.client
    key = ssh_public_key("alice@laptop")
    alice = await create_user(
        api,
        "alice",
        email="alice@example.com",
        full_name="Alice A",
        ssh_public_keys=[key],
        send_reset_email=True,  # saturn-client's field
    )
    assert alice["username"] == "alice" and alice["email"] == "alice@example.com"
    assert alice["admin"] is False and alice["service_account"] is False
    assert alice["ssh_keys"][0]["key"] == key
    assert alice["ssh_keys"][0]["fingerprint"] == parse_ssh_key(key).fingerprint
    assert "password" not in str(alice).replace("has_password", "")

    by_id = (await client.get(f"/api/users/{alice['id']}")).json()
    by_name = (await client.get("/api/users/alice")).json()
    assert by_id == by_name
    listed = (await client.get("/api/users")).json()
    assert [u["username"] for u in listed["users"]] == ["admin", "alice"]
    assert listed["next_key"] is None

    patched = await client.patch("/api/users/alice", json={"full_name": "Alice B"})
    assert patched.status_code == 200 and patched.json()["full_name"] == "Alice B"

    second = ssh_public_key("alice@desktop")
    added = await client.post("/api/users/alice/ssh_keys", json={"key": second})
    assert added.status_code == 201 and added.json()["comment"] == "alice@desktop"
    again = await client.post("/api/users/alice/ssh_keys", json={"key": second})
    assert again.status_code == 409
    fingerprint = added.json()["fingerprint"]
    removed = await client.delete(f"/api/users/alice/ssh_keys/{fingerprint}")
    assert removed.status_code == 204
    keys = (await client.get("/api/users/alice")).json()["ssh_keys"]
    assert [k["key"] for k in keys] == [key]
    assert (await client.delete(f"/api/users/alice/ssh_keys/{fingerprint}")).status_code == 404

    assert (await client.post("/api/users", json={"username": "alice"})).status_code == 409
    assert (await client.delete("/api/users/alice")).status_code == 204
    assert (await client.get("/api/users/alice")).status_code == 404
    bootstrap = await client.delete("/api/users/admin")
    assert bootstrap.status_code == 409 and "bootstrap" in bootstrap.json()["message"]


async def test_user_and_group_names_share_one_namespace(api: Api) -> None:
    client = api.client
    await create_user(api, "ml")
    clash = await client.post("/api/groups", json={"name": "ml"})
    assert clash.status_code == 409 and "taken by a user" in clash.json()["message"]
    assert (await client.post("/api/groups", json={"name": "vision-team"})).status_code == 201
    clash = await client.post("/api/users", json={"username": "vision-team"})
    assert clash.status_code == 409 and "taken by a group" in clash.json()["message"]
    clash = await client.post("/api/service_accounts", json={"name": "vision-team"})
    assert clash.status_code == 409
    assert (await client.post("/api/groups", json={"name": "vision-team"})).status_code == 409


async def test_invalid_names_and_keys_are_422_naming_the_field(api: Api) -> None:
    client = api.client
    assert "username" in fields(await client.post("/api/users", json={"username": "Alice"}))
    assert "name" in fields(await client.post("/api/groups", json={"name": "-ml"}))
    assert "name" in fields(await client.post("/api/projects", json={"name": "a b"}))
    assert "name" in fields(await client.post("/api/service_accounts", json={"name": "x" * 65}))
    assert "email" in fields(
        await client.post("/api/users", json={"username": "bob", "email": "nope"})
    )
    problems = fields(
        await client.post(
            "/api/users",
            json={"username": "bob", "ssh_public_keys": [ssh_public_key(), "ssh-ed25519 AAAA"]},
        )
    )
    assert "not a valid OpenSSH public key" in problems["ssh_public_keys[1]"]
    await create_user(api, "bob")
    for bad in (
        "hello",
        ssh_public_key(rsa_bits=1024),
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        ssh_public_key() + "\n" + ssh_public_key(),
    ):
        response = await client.post("/api/users/bob/ssh_keys", json={"key": bad})
        assert "key" in fields(response), bad
    assert (
        "2048 bits"
        in fields(
            await client.post(
                "/api/users/bob/ssh_keys", json={"key": ssh_public_key(rsa_bits=1024)}
            )
        )["key"]
    )
    ok = await client.post("/api/users/bob/ssh_keys", json={"key": ssh_public_key(rsa_bits=2048)})
    assert ok.status_code == 201 and ok.json()["type"] == "ssh-rsa"


async def test_members_cannot_manage_identities(api: Api) -> None:
    alice = await add_user(api.ctx, "alice", projects={"vision": "member"})
    client = api.client
    attempts = [
        client.post("/api/users", json={"username": "eve"}, headers=alice),
        client.post("/api/service_accounts", json={"name": "bot"}, headers=alice),
        client.post("/api/groups", json={"name": "g"}, headers=alice),
        client.post("/api/projects", json={"name": "p"}, headers=alice),
        client.patch("/api/projects/vision", json={"description": "x"}, headers=alice),
        client.delete("/api/projects/vision", headers=alice),
        client.delete("/api/users/admin", headers=alice),
        client.patch("/api/users/alice", json={"admin": True}, headers=alice),
        client.patch("/api/users/alice", json={"locked": True}, headers=alice),
        client.put("/api/recipes", json={"type": "user", "spec": {"name": "eve"}}, headers=alice),
    ]
    for attempt in attempts:
        response = await attempt
        assert response.status_code == 403, response.text
    # An admin user whose token lacks the admin scope is not a platform admin.
    root = await add_user(api.ctx, "root", admin=True, scopes=("read", "write"))
    response = await client.post("/api/users", json={"username": "eve"}, headers=root)
    assert response.status_code == 403 and "admin" in response.json()["message"]


async def test_users_edit_themselves_and_see_their_peers_by_name(api: Api) -> None:
    client = api.client
    alice = await add_user(api.ctx, "alice", groups=["ml"], projects={"vision": "member"})
    await add_user(api.ctx, "bob", groups=["ml"])
    await add_user(api.ctx, "vic", projects={"vision": "viewer"})
    await add_user(api.ctx, "carol")
    await client.patch("/api/users/bob", json={"email": "bob@example.com"})

    me = await client.patch(
        "/api/users/alice",
        # saturn-client's update_user always sends admin and locked: unchanged is fine.
        json={"email": "a@example.com", "full_name": "Alice", "admin": False, "locked": False},
        headers=alice,
    )
    assert me.status_code == 200, me.text
    assert me.json()["email"] == "a@example.com"
    key = ssh_public_key()
    assert (
        await client.post("/api/users/alice/ssh_keys", json={"key": key}, headers=alice)
    ).status_code == 201

    current = (await client.get("/api/user", headers=alice)).json()
    assert current["username"] == "alice" and current["email"] == "a@example.com"
    assert current["full_name"] == "Alice" and current["locked"] is False
    assert current["groups"] == ["ml"] and current["projects"] == {"vision": "member"}
    assert current["scopes"] == ["read", "write"] and current["admin"] is False

    listed = (await client.get("/api/users", headers=alice)).json()["users"]
    assert [u["username"] for u in listed] == ["alice", "bob", "vic"]
    bob = (await client.get("/api/users/bob", headers=alice)).json()
    assert bob["username"] == "bob" and "email" not in bob and "ssh_keys" not in bob
    assert (await client.get("/api/users/carol", headers=alice)).status_code == 404
    # Visible but not theirs to change.
    edit_bob = await client.patch("/api/users/bob", json={"full_name": "B"}, headers=alice)
    assert edit_bob.status_code == 403
    add_key = await client.post("/api/users/bob/ssh_keys", json={"key": key}, headers=alice)
    assert add_key.status_code == 403
    rename = await client.patch("/api/users/alice", json={"username": "al"}, headers=alice)
    assert rename.status_code == 409


async def test_project_admins_manage_members_of_their_project_only(api: Api) -> None:
    client = api.client
    lead = await add_user(api.ctx, "lead", projects={"vision": "admin"})
    member = await add_user(api.ctx, "mia", projects={"vision": "member"})
    viewer = await add_user(api.ctx, "vic", projects={"vision": "viewer"})
    await add_user(api.ctx, "bob")
    await add_user(api.ctx, "carol", groups=["nlp-team"], projects={"nlp": "admin"})

    added = await client.put(
        "/api/projects/vision/members/user/bob", json={"role": "member"}, headers=lead
    )
    assert added.status_code == 200, added.text
    assert {"kind": "user", "name": "bob", "role": "member"} in added.json()["members"]
    group = await client.put(
        "/api/projects/vision/members/group/nlp-team", json={"role": "viewer"}, headers=lead
    )
    assert {"kind": "group", "name": "nlp-team", "role": "viewer"} in group.json()["members"]
    # Not their project: it is invisible to them.
    other = await client.put(
        "/api/projects/nlp/members/user/bob", json={"role": "member"}, headers=lead
    )
    assert other.status_code == 404
    for who in (member, viewer):
        refused = await client.put(
            "/api/projects/vision/members/user/bob", json={"role": "admin"}, headers=who
        )
        assert refused.status_code == 403, refused.text
        gone = await client.delete("/api/projects/vision/members/user/bob", headers=who)
        assert gone.status_code == 403
    assert "viewer" in refused.json()["message"]

    bad_role = await client.put(
        "/api/projects/vision/members/user/bob", json={"role": "owner"}, headers=lead
    )
    assert "role" in fields(bad_role)
    bad_kind = await client.put(
        "/api/projects/vision/members/team/bob", json={"role": "member"}, headers=lead
    )
    assert "kind" in fields(bad_kind)
    missing = await client.put(
        "/api/projects/vision/members/user/nobody", json={"role": "member"}, headers=lead
    )
    assert missing.status_code == 404

    demoted = await client.put(
        "/api/projects/vision/members/user/bob", json={"role": "viewer"}, headers=lead
    )
    assert {"kind": "user", "name": "bob", "role": "viewer"} in demoted.json()["members"]
    assert (
        await client.delete("/api/projects/vision/members/user/bob", headers=lead)
    ).status_code == 204
    assert (
        await client.delete("/api/projects/vision/members/user/bob", headers=lead)
    ).status_code == 404
    # Members see their project and who is in it; others do not see it.
    seen = (await client.get("/api/projects", headers=viewer)).json()["projects"]
    assert [p["name"] for p in seen] == ["vision"]
    assert (await client.get("/api/projects/nlp", headers=viewer)).status_code == 404


async def test_groups_crud_and_membership(api: Api) -> None:
    client = api.client
    await create_user(api, "alice")
    await create_user(api, "bob")
    bad = await client.post("/api/groups", json={"name": "ml", "members": ["alice", "zed"]})
    assert fields(bad) == {"members[1]": "no user named 'zed'"}
    created = await client.post(
        "/api/groups", json={"name": "ml", "description": "ML", "members": ["alice"]}
    )
    assert created.status_code == 201 and created.json()["members"] == ["alice"]
    gid = created.json()["id"]
    for _ in range(2):  # idempotent
        put = await client.put("/api/groups/ml/members/bob")
        assert put.status_code == 200 and put.json()["members"] == ["alice", "bob"]
    assert (await client.get(f"/api/groups/{gid}")).json()["members"] == ["alice", "bob"]
    assert (await client.delete("/api/groups/ml/members/alice")).status_code == 204
    assert (await client.delete("/api/groups/ml/members/alice")).status_code == 404
    patched = await client.patch("/api/groups/ml", json={"description": "machine learning"})
    assert patched.json()["description"] == "machine learning"
    assert [g["name"] for g in (await client.get("/api/groups")).json()["groups"]] == ["ml"]
    # bob's own view: his groups only.
    bob_user = (await client.get("/api/users/bob")).json()
    assert bob_user["groups"] == ["ml"]

    # A group that owns live work cannot be deleted.
    owned = await client.put("/api/recipes", json=job("trainer", owner="ml"))
    assert owned.status_code == 201, owned.text
    refused = await client.delete("/api/groups/ml")
    assert refused.status_code == 409 and "job trainer" in refused.json()["message"]
    await client.delete(f"/api/jobs/{owned.json()['state']['id']}")
    assert (await client.delete("/api/groups/ml")).status_code == 204
    assert (await client.get("/api/groups/ml")).status_code == 404
    assert (await client.get("/api/users/bob")).json()["groups"] == []


async def test_projects_crud(api: Api) -> None:
    client = api.client
    await create_user(api, "alice")
    await client.post("/api/groups", json={"name": "ml"})
    bad = await client.post(
        "/api/projects", json={"name": "vision", "members": [{"user": "zed", "role": "admin"}]}
    )
    assert fields(bad) == {"members[0].user": "no user named 'zed'"}
    both = await client.post(
        "/api/projects", json={"name": "vision", "members": [{"user": "alice", "group": "ml"}]}
    )
    assert both.status_code == 422
    created = await client.post(
        "/api/projects",
        json={
            "name": "vision",
            "description": "cameras",
            "members": [{"user": "alice", "role": "admin"}, {"group": "ml", "role": "viewer"}],
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["members"] == [
        {"kind": "group", "name": "ml", "role": "viewer"},
        {"kind": "user", "name": "alice", "role": "admin"},
    ]
    assert (await client.post("/api/projects", json={"name": "vision"})).status_code == 409
    patched = await client.patch("/api/projects/vision", json={"description": "eyes"})
    assert patched.json()["description"] == "eyes"
    assert (await client.get("/api/users/alice")).json()["projects"] == {"vision": "admin"}

    in_project = await client.put("/api/recipes", json=job("cam", project="vision"))
    assert in_project.status_code == 201, in_project.text
    refused = await client.delete("/api/projects/vision")
    assert refused.status_code == 409 and "job cam" in refused.json()["message"]
    await client.delete(f"/api/jobs/{in_project.json()['state']['id']}")
    assert (await client.delete("/api/projects/vision")).status_code == 204
    assert (await client.get("/api/users/alice")).json()["projects"] == {}


async def test_deleting_a_user_refused_while_they_own_work_then_cleans_up(api: Api) -> None:
    client = api.client
    alice = await add_user(api.ctx, "alice", groups=["ml"], projects={"vision": "member"})
    applied = await client.put("/api/recipes", json=job("mine"), headers=alice)
    assert applied.status_code == 201, applied.text
    refused = await client.delete("/api/users/alice")
    assert refused.status_code == 409 and "job mine" in refused.json()["message"]
    assert (await client.delete(f"/api/jobs/{applied.json()['state']['id']}")).status_code == 204
    assert (await client.delete("/api/users/alice")).status_code == 204
    assert (await client.get("/api/user", headers=alice)).status_code == 401
    assert (await client.get("/api/groups/ml")).json()["members"] == []
    assert (await client.get("/api/projects/vision")).json()["members"] == []


async def test_org_owners(api: Api) -> None:
    client = api.client
    alice = await add_user(api.ctx, "alice", groups=["ml"])
    await add_user(api.ctx, "bob", groups=["nlp"])

    def names(response: httpx.Response) -> list[tuple[str, str]]:
        assert response.status_code == 200, response.text
        return [(o["identity_type"], o["name"]) for o in response.json()["owners"]]

    assert names(await client.get("/api/orgs/default/owners", headers=alice)) == [
        ("user", "alice"),
        ("group", "ml"),
    ]
    # all_users asks for more than a member may see: they still get their own.
    assert names(await client.get("/api/orgs/default/owners?all_users=true", headers=alice)) == [
        ("user", "alice"),
        ("group", "ml"),
    ]
    everyone = names(await client.get("/api/orgs/default/owners?all_users=true&all_groups=true"))
    assert everyone == [
        ("user", "admin"),
        ("user", "alice"),
        ("user", "bob"),
        ("group", "ml"),
        ("group", "nlp"),
    ]
    groups_only = await client.get(
        "/api/orgs/default/owners?all_groups=true&identity_type=group&details=true"
    )
    assert names(groups_only) == [("group", "ml"), ("group", "nlp")]
    assert "description" in groups_only.json()["owners"][0]
    assert (await client.get("/api/orgs/acme/owners")).status_code == 404
