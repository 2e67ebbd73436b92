"""A run's logs stay masked with the secret values that run was given: rotating or
deleting a secret (exactly what one does after it leaked) must not unmask the old
value in the logs of the runs that had it, for their owner or for a viewer."""

from __future__ import annotations

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import update

from flotilla.core.redact import MASK
from flotilla.server.db.models import RunModel
from flotilla.server.secretbox import SecretBox
from flotilla.server.services.identity.secrets import given_values, remember_given
from tests.conftest import Api
from tests.factories import add_user, job, wait_run

pytestmark = pytest.mark.timeout(90)

OLD = "leaked-4c1d9e7a"
NEW = "rotated-88b2f0c3"


async def _log_texts(client: httpx.AsyncClient, job_id: str, run_id: str, pod: str) -> list[str]:
    """The run's logs through every route that serves them."""
    return [
        (await client.get(f"/api/runs/{run_id}/logs")).text,
        (await client.get(f"/api/runs/{run_id}/logs", params={"follow": True})).text,
        (await client.get(f"/api/jobs/{job_id}/logs")).text,
        (await client.get(f"/api/jobs/{job_id}/logs", params={"pod_name": pod})).text,
        (await client.get(f"/api/active/pods/{pod}/logs")).text,
        (await client.get(f"/api/active/pods/{pod}")).text,
    ]


async def _assert_masked(client: httpx.AsyncClient, job_id: str, run_id: str, pod: str) -> None:
    for text in await _log_texts(client, job_id, run_id, pod):
        assert OLD not in text, text
        assert "token=" not in text or f"token={MASK}" in text, text


async def test_rotating_or_deleting_a_secret_keeps_old_runs_logs_masked(api: Api) -> None:
    client = api.client
    alice = await add_user(api.ctx, "alice", projects={"vision": "member"})
    viewer = await add_user(api.ctx, "vera", projects={"vision": "viewer"})
    created = await client.post("/api/secrets", json={"name": "tok", "value": OLD}, headers=alice)
    assert created.status_code == 201, created.text
    recipe = job(
        "leaky",
        'echo "token=$TOK"; cat keys/tok; echo',
        project="vision",
        secrets=[
            {"name": "tok", "location": "TOK"},
            {"name": "tok", "location": "keys/tok", "attachment_type": "file"},
        ],
    )
    applied = await client.put("/api/recipes", json=recipe, headers=alice)
    assert applied.status_code == 201, applied.text
    job_id = applied.json()["state"]["id"]
    started = await client.post(f"/api/jobs/{job_id}/start", headers=alice)
    run_id = started.json()["run"]["id"]
    run = await wait_run(client, run_id, "succeeded", "failed")
    assert run["status"] == "succeeded", run
    pod = run["tasks"][0]["name"]
    for who in (alice, viewer):
        client.headers.update(who)
        await _assert_masked(client, job_id, run_id, pod)
    # The run's view says nothing of what it keeps.
    assert "secret_masks" not in (await client.get(f"/api/runs/{run_id}")).text

    # Rotated (as `flo secret set` does): the old value is no longer the current one.
    client.headers.update(alice)
    rotated = await client.post("/api/secrets", json={"name": "tok", "value": NEW})
    assert rotated.status_code == 201, rotated.text
    for who in (alice, viewer):
        client.headers.update(who)
        await _assert_masked(client, job_id, run_id, pod)

    # Deleted: nothing current to mask with at all.
    client.headers.update(alice)
    gone = await client.delete("/api/secrets/tok")
    assert gone.status_code == 204, gone.text
    for who in (alice, viewer):
        client.headers.update(who)
        await _assert_masked(client, job_id, run_id, pod)


async def test_a_run_launched_before_values_were_kept_masks_with_the_current_ones(
    sqlite_api: Api,
) -> None:
    client = sqlite_api.client
    created = await client.post("/api/secrets", json={"name": "tok", "value": OLD})
    assert created.status_code == 201, created.text
    recipe = job("older", 'echo "token=$TOK"', secrets=[{"name": "tok", "location": "TOK"}])
    job_id = (await client.put("/api/recipes", json=recipe)).json()["state"]["id"]
    run_id = (await client.post(f"/api/jobs/{job_id}/start")).json()["run"]["id"]
    run = await wait_run(client, run_id, "succeeded", "failed")
    async with sqlite_api.ctx.transaction() as session:
        await session.execute(
            update(RunModel).where(RunModel.id == run_id).values(secret_masks=None)
        )
    await _assert_masked(client, job_id, run_id, run["tasks"][0]["name"])


def test_each_launch_adds_the_values_it_was_given() -> None:
    box = SecretBox(Fernet.generate_key())
    run = RunModel(id="r1", spec={})
    assert given_values(box, run) == []
    remember_given(box, run, [OLD])
    remember_given(box, run, [OLD, NEW])  # a requeued attempt, resolved after a rotation
    assert given_values(box, run) == [OLD, NEW]
    assert run.secret_masks is not None and OLD not in run.secret_masks  # sealed at rest
