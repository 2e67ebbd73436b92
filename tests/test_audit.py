"""The audit log: every state-changing request, who made it, from where, what it
was and how it ended; readable by admins only; append-only down to the database."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, update
from sqlalchemy.exc import DBAPIError

from flotilla.server.db.models import AuditModel
from tests.conftest import Api
from tests.factories import add_user, job

pytestmark = pytest.mark.timeout(60)


async def audit(api: Api, **params: object) -> list[dict[str, object]]:
    response = await api.client.get("/api/audit", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    entries: list[dict[str, object]] = response.json()["entries"]
    return entries


async def test_every_state_change_is_recorded_with_who_what_where_and_outcome(api: Api) -> None:
    client = api.client
    carol = await add_user(api.ctx, "carol")
    before = len(await audit(api))
    applied = await client.put("/api/recipes", json=job("audited", "sleep 30"))
    job_id = applied.json()["state"]["id"]
    changes = [
        ("POST", f"/api/jobs/{job_id}/start", None, 200),
        ("POST", f"/api/jobs/{job_id}/stop", None, 200),
        ("POST", "/api/secrets", {"name": "k", "value": "never-in-the-log"}, 201),
        ("DELETE", "/api/secrets/k", None, 204),
        ("POST", "/api/jobs/nope/start", None, 404),
    ]
    for method, path, body, status in changes:
        response = await client.request(method, path, json=body)
        assert response.status_code == status, response.text
    denied = await client.delete(f"/api/jobs/{job_id}", headers=carol)
    assert denied.status_code == 404  # carol may not even see it
    await client.get("/api/jobs")  # reads are not audited

    entries = list(reversed(await audit(api)))[before:]
    assert [(e["method"], e["path"], e["status_code"]) for e in entries] == [
        ("PUT", "/api/recipes", 201),
        *[(m, p, s) for m, p, _, s in changes],
        ("DELETE", f"/api/jobs/{job_id}", 404),
    ]
    first = entries[0]
    assert first["actor"] == "admin" and first["auth_method"] == "api_token"
    assert first["source_ip"] and first["outcome"] == "success"
    assert entries[1]["action"] == "POST /api/jobs/{job_id}/start"
    assert entries[-2]["outcome"] == "failure"
    assert entries[-1]["actor"] == "carol"
    assert "never-in-the-log" not in str(entries)
    # Filters: by actor and by outcome.
    assert [e["actor"] for e in await audit(api, actor="carol")] == ["carol"]
    assert {e["outcome"] for e in await audit(api, outcome="failure")} == {"failure"}


async def test_unauthenticated_and_forbidden_attempts_are_recorded(api: Api) -> None:
    reader = await add_user(api.ctx, "rick", scopes=("read",))
    await api.client.post("/api/jobs/x/start", headers={"Authorization": "token flo_wrong"})
    await api.client.put("/api/recipes", json=job("r", "true"), headers=reader)
    entries = await audit(api, outcome="denied")
    assert [(e["actor"], e["status_code"]) for e in entries[:2]] == [
        ("rick", 403),
        ("anonymous", 401),
    ]


async def test_only_admins_read_the_audit_log(api: Api) -> None:
    member = await add_user(api.ctx, "mia")
    response = await api.client.get("/api/audit", headers=member)
    assert response.status_code == 403


async def test_the_database_refuses_to_rewrite_history(api: Api) -> None:
    await api.client.put("/api/recipes", json=job("h", "true"))
    for statement in (update(AuditModel).values(actor="someone-else"), delete(AuditModel)):
        with pytest.raises(DBAPIError, match="append-only"):
            async with api.ctx.transaction() as session:
                await session.execute(statement)
    assert (await audit(api))[0]["actor"] == "admin"
