"""Secrets: owned by a user, a group or a project; attached as env vars and files;
never returned, never in events, masked in every log the API serves even when the
process prints them; only their owners may see or attach them."""

from __future__ import annotations

import pytest

from flotilla.core.redact import MASK, Redactor, StreamRedactor
from tests.conftest import Api
from tests.factories import add_user, apply_and_start, job, wait_run

pytestmark = pytest.mark.timeout(90)

VALUE = "tok-7f3a9c1e55"
PEM = "-----BEGIN KEY-----\nQUJDREVGR0hJSktMTU5PUA==\nUVJTVFVWV1hZWmFiY2RlZg==\n-----END KEY-----\n"


async def test_printed_secrets_are_masked_everywhere_the_api_shows_them(sqlite_api: Api) -> None:
    client = sqlite_api.client
    for name, value in (("api-token", VALUE), ("pem", PEM)):
        created = await client.post("/api/secrets", json={"name": name, "value": value})
        assert created.status_code == 201 and value not in created.text
    recipe = job(
        "leaky",
        # Prints the env var, the file, and the env var split across two writes.
        'echo "token=$API_TOKEN"; cat keys/pem; printf "%s" "${API_TOKEN:0:5}"; '
        'sleep 0.3; echo "${API_TOKEN:5}"; echo "reversed: $(echo $API_TOKEN | rev)"',
        secrets=[
            {"name": "api-token", "location": "API_TOKEN"},
            {"name": "pem", "location": "keys/pem", "attachment_type": "file"},
        ],
    )
    job_id, run_id = await apply_and_start(client, recipe)
    run = await wait_run(client, run_id, "succeeded", "failed")
    assert run["status"] == "succeeded", run
    logs = (await client.get(f"/api/runs/{run_id}/logs")).text
    # The process did get the values (its reversed print is intact) ...
    assert VALUE[::-1] in logs
    # ... and no form of them comes back.
    # The PEM (with its final newline) and the token printed in two writes are
    # each masked whole.
    assert logs.splitlines() == [f"token={MASK}", MASK * 2, f"reversed: {VALUE[::-1]}"], logs
    pod = run["tasks"][0]["name"] if "tasks" in run else "leaky-1-0"
    followed = (await client.get(f"/api/runs/{run_id}/logs", params={"follow": True})).text
    texts = [
        logs,
        followed,
        (await client.get(f"/api/jobs/{job_id}/logs")).text,
        (await client.get(f"/api/active/pods/{pod}/logs")).text,
        (await client.get(f"/api/active/pods/{pod}")).text,
        (await client.get(f"/api/runs/{run_id}")).text,
        (await client.get(f"/api/runs/{run_id}/events")).text,
        (await client.get(f"/api/jobs/{job_id}")).text,
        (await client.get("/api/secrets")).text,
        (await client.get("/api/recipes")).text,
    ]
    for text in texts:
        assert VALUE not in text
        assert "QUJDREVGR0hJSktMTU5PUA==" not in text


async def test_secrets_belong_to_their_owners(api: Api) -> None:
    client = api.client
    alice = await add_user(api.ctx, "alice", groups=["nlp"], projects={"vision": "member"})
    bob = await add_user(api.ctx, "bob", projects={"vision": "viewer"})
    for body in (
        {"name": "mine", "value": "a-1234"},
        {"name": "team", "value": "b-1234", "owner": "nlp"},
        {"name": "proj", "value": "c-1234", "owner": "vision", "owner_kind": "project"},
    ):
        created = await client.post("/api/secrets", json=body, headers=alice)
        assert created.status_code == 201, created.text
    names = {
        s["name"]: s["owner_kind"]
        for s in (await client.get("/api/secrets", headers=alice)).json()["secrets"]
    }
    assert names == {"mine": "user", "team": "group", "proj": "project"}
    # A viewer of the project is not an owner of its secrets; bob sees none.
    assert (await client.get("/api/secrets", headers=bob)).json()["secrets"] == []
    refused = await client.post(
        "/api/secrets", json={"name": "x", "value": "y", "owner": "nlp"}, headers=bob
    )
    assert refused.status_code == 403
    gone = await client.delete("/api/secrets/mine", params={"owner": "alice"}, headers=bob)
    assert gone.status_code == 404
    # bob cannot attach alice's secret to his recipe; the error names the field.
    stolen = job("thief", "true", secrets=[{"name": "mine", "location": "X", "owner": "alice"}])
    response = await client.put("/api/recipes", json=stolen, headers=bob)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "spec.secrets[0].name"
    assert "a-1234" not in response.text
    # alice may attach her own, her group's and her project's.
    ok = job(
        "fine",
        "true",
        project="vision",
        secrets=[
            {"name": "mine", "location": "A"},
            {"name": "team", "location": "B", "owner": "nlp"},
            {"name": "proj", "location": "C"},
        ],
    )
    applied = await client.put("/api/recipes", json=ok, headers=alice)
    assert applied.status_code == 201, applied.text


def test_redactor_masks_whole_values_lines_and_values_split_across_chunks() -> None:
    redactor = Redactor([VALUE, PEM, "ab"])  # "ab" is too short to mask
    assert redactor.scrub(f"x {VALUE} y ab") == f"x {MASK} y ab"
    assert "QUJDREVGR0hJSktMTU5PUA==" not in redactor.scrub("line: QUJDREVGR0hJSktMTU5PUA==")
    stream = StreamRedactor(redactor)
    data = f"before {VALUE} after {VALUE}".encode()
    out = b"".join(stream.feed(data[i : i + 3]) for i in range(0, len(data), 3)) + stream.flush()
    assert out == f"before {MASK} after {MASK}".encode()
    assert StreamRedactor(Redactor([])).feed(b"plain") == b"plain"
