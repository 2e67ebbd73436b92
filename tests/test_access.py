"""Who may see and touch what: a foreign user walks every route of the API against
another user's resources; viewers read only; groups share; read-only tokens
cannot write; platform routes need an admin."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Api
from tests.factories import add_user, free_port, job, ssh_public_key, wait_run

pytestmark = pytest.mark.timeout(120)

SIM_FLEET = {
    "type": "fleet",
    "spec": {
        "name": "victim-pool",
        "provider": "sim",
        "instance_type": "h100-80gb-sxm-ib.8x",
        "region": "us-east1",
        "nodes": "0..1",
    },
}


VICTIM_LB = {
    "type": "load_balancer",
    "spec": {"name": "victim-lb", "listeners": [{"port": free_port(), "host": "127.0.0.1"}]},
}
VICTIM_DEPLOYMENT = {"type": "deployment", "spec": {"name": "victim-web", "command": "sleep 60"}}


class Victim:
    """Everything one user owns, made through the API with their own token."""

    def __init__(self, api: Api, headers: httpx.Headers) -> None:
        self.api = api
        self.headers = headers
        self.ids: dict[str, str] = {}

    async def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self.api.client.request(method, path, headers=self.headers, **kwargs)
        assert response.status_code < 300, (method, path, response.text)
        return response.json() if response.content else {}

    async def build(self) -> None:
        await self.call("POST", "/api/secrets", json={"name": "victim-key", "value": "v-s3cret"})
        recipe = job("victim-job", "echo private-output", project="vision")
        applied = await self.call("PUT", "/api/recipes", json=recipe)
        self.ids["job_id"] = applied["state"]["id"]
        started = await self.call("POST", f"/api/jobs/{self.ids['job_id']}/start")
        self.ids["run_id"] = started["run"]["id"]
        await wait_run(self.api.client, self.ids["run_id"], "succeeded")
        run = await self.call("GET", f"/api/runs/{self.ids['run_id']}")
        self.ids["pod"] = run["tasks"][0]["name"] if "tasks" in run else "victim-job-1-0"
        await self.call("PUT", "/api/recipes", json=SIM_FLEET)
        for recipe in (VICTIM_LB, VICTIM_DEPLOYMENT):
            await self.call("PUT", "/api/recipes", json=recipe)
        key = await self.call("POST", "/api/users/victim/ssh_keys", json={"key": ssh_public_key()})
        self.ids["fingerprint"] = key["fingerprint"]
        token = await self.call("POST", "/api/tokens", json={"name": "ci"})
        self.ids["token_id"] = token["id"]


def fill(path: str, victim: Victim) -> str | None:
    """The route with the victim's resource in every path parameter; None for a
    parameter the walk does not know (the test then fails: classify new routes)."""
    values = {
        "job_id": victim.ids["job_id"],
        "run_id": victim.ids["run_id"],
        "recipe_type": "job",
        "run_name": "1",
        "user_id": "victim",
        "user": "victim",
        "fingerprint": victim.ids["fingerprint"],
        "group": "victims",
        "project": "vision",
        "kind": "user",
        "token_id": victim.ids["token_id"],
        "account_id": "robot",
        "org": "default",
        "org_id": "default",
        "scope_kind": "project",
        "scope_name": "vision",
    }
    if path.startswith("/api/active/pods/"):
        values["name"] = victim.ids["pod"]
    elif path.startswith("/api/secrets/"):
        values["name"] = "victim-key"
    elif path.startswith("/api/fleets/"):
        values["name"] = "victim-pool"
    elif path.startswith("/api/recipes/"):
        values["name"] = "victim-job"
    elif path.startswith("/api/nodes/"):
        values["name"] = "local"
    elif path.startswith("/api/load_balancers/"):
        values["name"] = "victim-lb"
    elif path.startswith("/api/deployments/"):
        values["name"] = "victim-web"
    elif path.startswith("/api/projects/"):
        values["name"] = "victim"
    out = path
    while "{" in out:
        param = out[out.index("{") + 1 : out.index("}")]
        if param not in values:
            return None
        out = out.replace("{" + param + "}", values[param])
    return out


# Platform resources everyone may read (their holders are redacted, see below).
SHARED_READS = {("GET", "/api/nodes/{name}")}
# Listings under a path parameter (the one organisation): 200, filtered.
FILTERED_LISTS = {
    ("GET", "/api/orgs/{org}/usage/daily"),
    ("GET", "/api/orgs/{org_id}/owners"),
}
# Routes open to anyone, or acting only on the caller's own session, by design.
PUBLIC = {
    ("GET", "/api/auth/jwks"),
    ("GET", "/api/auth/oidc/login"),
    ("GET", "/api/auth/oidc/callback"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/auth/logout"),
    # Authenticated by its one-time join token, not an API credential
    # (tests/test_agent_tls.py).
    ("POST", "/api/agents/join"),
}
# Mutations without a path parameter, each with a body aimed at the victim.
FOREIGN_BODIES: dict[tuple[str, str], Any] = {
    ("PUT", "/api/recipes"): {
        **job("victim-job", "true"),
        "spec": {"name": "victim-job", "command": "true", "owner": "victim"},
    },
    ("POST", "/api/recipes"): {
        "type": "job",
        "spec": {"name": "x", "command": "true", "owner": "victim"},
    },
    ("POST", "/api/secrets"): {"name": "victim-key", "value": "overwrite", "owner": "victim"},
    ("PUT", "/api/scheduler/policy"): {"user_quota": {"victim": 0}},
    ("PUT", "/api/load_balancers/policy"): {"allowed_backend_cidrs": ["127.0.0.0/8"]},
    ("POST", "/api/agents/join-tokens"): {"node": "victim-node"},
    ("POST", "/api/users"): {"username": "victim2", "email": "v@example.com"},
    ("POST", "/api/service_accounts"): {"name": "robot2"},
    ("POST", "/api/groups"): {"name": "victims2"},
    ("POST", "/api/projects"): {"name": "vision2"},
    ("POST", "/api/auth/keys/rotate"): {},
}
# Mutations that can only act on the caller's own things (no target to aim).
SELF = {("POST", "/api/tokens")}
# Valid bodies for mutations of a named resource, so that a refusal is the access
# check's and not the body validation's.
PARAM_BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/api/users/{user_id}/ssh_keys"): {"key": ssh_public_key()},
    ("POST", "/api/users/{user_id}/tokens"): {"name": "stolen"},
    ("POST", "/api/service_accounts/{account_id}/tokens"): {"name": "stolen"},
    ("PUT", "/api/projects/{project}/members/{kind}/{name}"): {"role": "admin"},
    ("PUT", "/api/budgets/{scope_kind}/{scope_name}"): {"dollars_per_month": 1},
    ("PATCH", "/api/users/{user_id}"): {"email": "mallory@example.com"},
    ("PATCH", "/api/groups/{group}"): {"description": "mine now"},
    ("PATCH", "/api/projects/{project}"): {"description": "mine now"},
}


async def test_a_foreign_user_can_touch_nothing_of_anothers(api: Api) -> None:
    victim = Victim(
        api, await add_user(api.ctx, "victim", groups=["victims"], projects={"vision": "member"})
    )
    await victim.build()
    robot = await api.client.post("/api/service_accounts", json={"name": "robot"})
    assert robot.status_code == 201, robot.text
    budget = {"dollars_per_month": 100}
    assert (await api.client.put("/api/budgets/project/vision", json=budget)).status_code == 200
    mallory = await add_user(api.ctx, "mallory", projects={"other": "admin"})
    spec = (await api.client.get("/openapi.json")).json()
    unknown, leaks = [], []
    for path, operations in spec["paths"].items():
        for method in (m.upper() for m in operations):
            if (method, path) in PUBLIC or (method, path) in SELF:
                continue
            url = fill(path, victim)
            if url is None:
                unknown.append((method, path))
                continue
            if "{" in path and (method, path) not in FILTERED_LISTS:
                params = (
                    {"workload_type": "job", "workload_id": victim.ids["job_id"]}
                    if path == "/api/active/pods"
                    else None
                )
                body = PARAM_BODIES.get((method, path), {})
                response = await api.client.request(
                    method, url, headers=mallory, params=params, json=body
                )
                allowed = (200,) if (method, path) in SHARED_READS else (403, 404)
                if response.status_code not in allowed:
                    leaks.append((method, path, response.status_code))
                elif response.status_code == 200 and "victim-job" in response.text:
                    leaks.append((method, path, "shows the victim's job"))
            elif method == "GET":
                params = (
                    {"workload_type": "job", "workload_id": victim.ids["job_id"]}
                    if path == "/api/active/pods"
                    else None
                )
                response = await api.client.get(url, headers=mallory, params=params)
                if response.status_code == 200:
                    text = response.text
                    for secret in (
                        "victim-job",
                        "victim-key",
                        "victim-pool",
                        "victim-lb",
                        "victim-web",
                        "victims",
                        '"victim"',
                        victim.ids["run_id"],
                    ):
                        if secret in text:
                            leaks.append((method, path, f"lists {secret}"))
                elif response.status_code not in (403, 404):
                    leaks.append((method, path, response.status_code))
            else:
                if (method, path) not in FOREIGN_BODIES:
                    unknown.append((method, path))
                    continue
                response = await api.client.request(
                    method, url, headers=mallory, json=FOREIGN_BODIES[(method, path)]
                )
                if response.status_code not in (403, 404):
                    leaks.append((method, path, response.status_code))
    assert not leaks, leaks
    assert not unknown, f"routes the walk cannot aim at another user's resource: {unknown}"
    assert not leaks, leaks
    # Nothing changed: the victim's job is intact and its secret still theirs.
    job_view = await victim.call("GET", f"/api/jobs/{victim.ids['job_id']}")
    assert job_view["spec"]["command"] == "echo private-output"


async def test_viewers_read_members_write_their_own_project_admins_all(api: Api) -> None:
    owner = await add_user(api.ctx, "olga", projects={"vision": "member"})
    viewer = await add_user(api.ctx, "vic", projects={"vision": "viewer"})
    peer = await add_user(api.ctx, "pete", projects={"vision": "member"})
    boss = await add_user(api.ctx, "ada", projects={"vision": "admin"})
    client = api.client
    applied = await client.put(
        "/api/recipes", json=job("shared", "sleep 30", project="vision"), headers=owner
    )
    assert applied.status_code == 201, applied.text
    job_id = applied.json()["state"]["id"]
    for who in (viewer, peer, boss):
        assert (await client.get(f"/api/jobs/{job_id}", headers=who)).status_code == 200
        listed = (await client.get("/api/jobs", headers=who)).json()["jobs"]
        assert [j["spec"]["name"] for j in listed] == ["shared"]
    refused = await client.post(f"/api/jobs/{job_id}/start", headers=viewer)
    assert refused.status_code == 403 and "viewer" in refused.json()["message"]
    # A fellow member reads but does not run someone else's job; a project admin does.
    assert (await client.post(f"/api/jobs/{job_id}/start", headers=peer)).status_code == 403
    started = await client.post(f"/api/jobs/{job_id}/start", headers=boss)
    assert started.status_code == 200, started.text
    run_id = started.json()["run"]["id"]
    assert (await client.post(f"/api/jobs/{job_id}/stop", headers=viewer)).status_code == 403
    assert (await client.delete(f"/api/jobs/{job_id}", headers=viewer)).status_code == 403
    assert (await client.get(f"/api/runs/{run_id}/events", headers=viewer)).status_code == 200
    assert (await client.post(f"/api/jobs/{job_id}/stop", headers=owner)).status_code == 200
    await wait_run(client, run_id, "stopped")
    # A viewer cannot put work into the project either.
    mine = await client.put("/api/recipes", json=job("v", "true", project="vision"), headers=viewer)
    assert mine.status_code == 403


async def test_group_members_share_the_groups_recipes(api: Api) -> None:
    ann = await add_user(api.ctx, "ann", groups=["nlp"])
    ben = await add_user(api.ctx, "ben", groups=["nlp"])
    eve = await add_user(api.ctx, "eve")
    client = api.client
    applied = await client.put("/api/recipes", json=job("tok", "true", owner="nlp"), headers=ann)
    assert applied.status_code == 201, applied.text
    job_id = applied.json()["state"]["id"]
    started = await client.post(f"/api/jobs/{job_id}/start", headers=ben)
    assert started.status_code == 200, started.text
    assert (await client.get(f"/api/jobs/{job_id}", headers=eve)).status_code == 404
    # Owning as a group one is not in is refused, with the reason.
    foreign = await client.put("/api/recipes", json=job("x", "true", owner="nlp"), headers=eve)
    assert foreign.status_code == 403 and "nlp" in foreign.json()["message"]


async def test_read_only_tokens_cannot_change_anything(api: Api) -> None:
    reader = await add_user(api.ctx, "rita", scopes=("read",))
    client = api.client
    assert (await client.get("/api/jobs", headers=reader)).status_code == 200
    refused = await client.put("/api/recipes", json=job("r", "true"), headers=reader)
    assert refused.status_code == 403 and "write" in refused.json()["message"]
    assert (
        await client.post("/api/secrets", json={"name": "a", "value": "b"}, headers=reader)
    ).status_code == 403


async def test_admin_scope_is_needed_for_admin_powers(api: Api) -> None:
    # A platform admin whose token lacks the admin scope is an ordinary user.
    limited = await add_user(api.ctx, "root2", admin=True, scopes=("read", "write"))
    full = await add_user(api.ctx, "root3", admin=True, scopes=("read", "write", "admin"))
    client = api.client
    body = {"reason": "maintenance"}
    assert (
        await client.post("/api/nodes/local/cordon", json=body, headers=limited)
    ).status_code == 403
    assert (
        await client.post("/api/nodes/local/cordon", json=body, headers=full)
    ).status_code == 200
    assert (await client.get("/api/audit", headers=limited)).status_code == 403
