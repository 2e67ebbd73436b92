"""Runs as real processes: logs, git, gangs and the environment contract, GPUs,
secrets, retries, time limits."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Api
from tests.factories import (
    apply_and_start,
    chown_tree,
    get_run,
    job,
    make_repo,
    tasks_uid,
    wait_for,
    wait_run,
)


async def test_logs_stream_while_running_and_are_kept(sqlite_api: Api) -> None:
    client = sqlite_api.client
    command = "echo first; sleep 1.5; echo second"
    job_id, run_id = await apply_and_start(client, job("talker", command))
    await wait_run(client, run_id, "running")

    async def first_line_only() -> str | None:
        text = (await client.get(f"/api/runs/{run_id}/logs")).text
        return text if "first" in text else None

    live = await wait_for(first_line_only, what="the first line while running")
    assert "second" not in live
    followed = b""
    async with client.stream(
        "GET", f"/api/runs/{run_id}/logs", params={"follow": "true"}
    ) as response:
        async for chunk in response.aiter_bytes():
            followed += chunk
    assert followed.decode() == "first\nsecond\n"
    run = await wait_run(client, run_id, "succeeded")
    assert run["exit_code"] == 0 and run["started_at"] and run["finished_at"]
    assert (await client.get(f"/api/runs/{run_id}/logs")).text == "first\nsecond\n"
    history = (await client.get(f"/api/jobs/{job_id}/logs")).json()["logs"]
    assert "second" in history


async def test_failed_command_records_exit_code(sqlite_api: Api) -> None:
    _, run_id = await apply_and_start(sqlite_api.client, job("fails", "echo oops >&2; exit 7"))
    run = await wait_run(sqlite_api.client, run_id, "failed")
    assert run["exit_code"] == 7 and "code 7" in run["reason"]
    assert (await sqlite_api.client.get(f"/api/runs/{run_id}/logs")).text == "oops\n"


async def test_list_command_runs_without_a_shell(sqlite_api: Api) -> None:
    # Each element is one argument: nothing is interpreted by a shell.
    _, run_id = await apply_and_start(sqlite_api.client, job("argv", ["echo", "$HOME; rm -rf /"]))
    await wait_run(sqlite_api.client, run_id, "succeeded")
    assert (await sqlite_api.client.get(f"/api/runs/{run_id}/logs")).text == "$HOME; rm -rf /\n"


async def test_git_clone_at_tag_commit_and_branch(sqlite_api: Api, readable_dir: Path) -> None:
    # As its user would have it: theirs, where their account can reach it (git
    # clones no repository someone else owns: "dubious ownership").
    repo = make_repo(readable_dir / "src-repo")
    from tests.factories import git

    first_commit = git(repo, "rev-list", "--max-parents=0", "HEAD").strip()
    chown_tree(repo, await tasks_uid(sqlite_api.client))
    recipe = job(
        "cloner",
        "cat at-tag/VERSION at-commit/VERSION src-repo/VERSION; pwd",
        git_repositories=[
            {"url": str(repo), "reference": "v1", "reference_type": "tag", "path": "at-tag"},
            {
                "url": str(repo),
                "reference": first_commit,
                "reference_type": "commit",
                "path": "at-commit",
            },
            {"url": f"file://{repo}", "reference": "main"},
        ],
        start_script="echo setting up > setup-was-here",
    )
    _, run_id = await apply_and_start(sqlite_api.client, recipe)
    run = await wait_run(sqlite_api.client, run_id, "succeeded", "failed")
    logs = (await sqlite_api.client.get(f"/api/runs/{run_id}/logs")).text
    assert run["status"] == "succeeded", (run, logs)
    assert logs.splitlines()[:3] == ["1", "1", "2"]
    setup = (
        await sqlite_api.client.get(f"/api/runs/{run_id}/logs", params={"container": "setup"})
    ).text
    assert "git clone" in setup


async def test_failed_clone_fails_the_run_with_a_reason(sqlite_api: Api, tmp_path: Path) -> None:
    recipe = job("badclone", "true", git_repositories=[{"url": str(tmp_path / "missing")}])
    _, run_id = await apply_and_start(sqlite_api.client, recipe)
    run = await wait_run(sqlite_api.client, run_id, "failed")
    assert "git clone" in run["reason"]


async def test_gang_of_two_gets_the_environment_contract(sqlite_api: Api) -> None:
    command = ["python3", "-c", "import json, os; print(json.dumps(dict(os.environ)))"]
    _, run_id = await apply_and_start(sqlite_api.client, job("gang", command, scale=2))
    run = await wait_run(sqlite_api.client, run_id, "succeeded")
    envs = []
    for rank in (0, 1):
        text = (await sqlite_api.client.get(f"/api/runs/{run_id}/logs", params={"rank": rank})).text
        envs.append(json.loads(text))
    for rank, env in enumerate(envs):
        assert (
            env["FLOTILLA_RANK"]
            == env["SATURN_JOB_RANK"]
            == env["NODE_RANK"]
            == env["RANK"]
            == str(rank)
        )
        assert env["SATURN_JOB_SCALE"] == env["NNODES"] == env["WORLD_SIZE"] == "2"
        assert env["SATURN_JOB_RUN"] == env["FLOTILLA_RUN_ID"] == run_id
        assert env["SATURN_JOB_LEADER"] == env["MASTER_ADDR"] == "127.0.0.1"
        assert env["CUDA_VISIBLE_DEVICES"] == ""
        assert "FLOTILLA_ADMIN_TOKEN" not in env
    assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"] and int(envs[0]["MASTER_PORT"]) > 0
    starts = sorted(t["started_at"] for t in run["tasks"])
    assert len(starts) == 2


async def test_gang_member_failure_stops_the_others(sqlite_api: Api) -> None:
    command = 'if [ "$SATURN_JOB_RANK" = 1 ]; then exit 3; fi; sleep 60'
    _, run_id = await apply_and_start(sqlite_api.client, job("halfgang", command, scale=2))
    run = await wait_run(sqlite_api.client, run_id, "failed")
    assert run["exit_code"] == 3 and "rank 1" in run["reason"]
    assert {t["status"] for t in run["tasks"]} == {"failed", "stopped"}


async def test_gpus_are_assigned_and_shortage_waits_with_reason(gpu_api: Api) -> None:
    client = gpu_api.client
    show = "echo $CUDA_VISIBLE_DEVICES; sleep 30"
    _, first = await apply_and_start(client, job("one", show, resources={"gpu": "H100:1"}))
    await wait_run(client, first, "running")
    _, big = await apply_and_start(
        client, job("two", "echo $CUDA_VISIBLE_DEVICES", resources={"gpu": "H100:2"})
    )

    async def pending_reason() -> str | None:
        run = await get_run(client, big)
        return (
            run["reason"]
            if "waiting for 2 H100 GPUs on one node: 1 of 2 free" in run["reason"]
            else None
        )

    await wait_for(pending_reason, what="a pending reason")
    assert (await get_run(client, big))["status"] == "pending"
    _, wrong = await apply_and_start(client, job("three", "true", resources={"gpu": "A100:1"}))
    await wait_for(
        lambda: _reason_has(client, wrong, "no ready on-demand A100 GPU node"), what="type reason"
    )
    _, huge = await apply_and_start(client, job("four", "true", resources={"gpu": "H100:4"}))
    await wait_for(lambda: _reason_has(client, huge, "only 2 exist"), what="too-big reason")

    await client.post(f"/api/jobs/{(await get_run(client, first))['job_id']}/stop")
    done = await wait_run(client, big, "succeeded")
    assert (await client.get(f"/api/runs/{big}/logs")).text == "0,1\n"
    assert done["tasks"][0]["gpus"] == [0, 1]


async def _reason_has(client: object, run_id: str, text: str) -> bool:
    run = await get_run(client, run_id)  # type: ignore[arg-type]
    return run["status"] == "pending" and text in run["reason"]


async def test_secrets_reach_the_process_as_env_and_file(sqlite_api: Api) -> None:
    client = sqlite_api.client
    created = await client.post("/api/secrets", json={"name": "api-key", "value": "s3cr3t-value"})
    assert created.status_code == 201 and "s3cr3t" not in created.text
    listed = await client.get("/api/secrets")
    assert "s3cr3t" not in listed.text and listed.json()["secrets"][0]["name"] == "api-key"
    recipe = job(
        "secretive",
        # Printed reversed, so the logs prove the value arrived without containing it.
        'echo "$API_KEY" | rev; rev keys/api',
        secrets=[
            {"name": "api-key", "location": "API_KEY", "attachment_type": "environment_variable"},
            {"name": "api-key", "location": "keys/api", "attachment_type": "file"},
        ],
    )
    job_id, run_id = await apply_and_start(client, recipe)
    run = await wait_run(client, run_id, "succeeded", "failed")
    assert run["status"] == "succeeded", run
    assert (await client.get(f"/api/runs/{run_id}/logs")).text.split() == [
        "eulav-t3rc3s",
        "eulav-t3rc3s",
    ]
    for path in (
        f"/api/runs/{run_id}",
        f"/api/jobs/{job_id}",
        f"/api/runs/{run_id}/events",
        "/api/recipes",
    ):
        assert "s3cr3t" not in (await client.get(path)).text


async def test_missing_secret_is_refused_at_apply_and_an_error_at_launch(sqlite_api: Api) -> None:
    client = sqlite_api.client
    recipe = job("nosecret", "true", secrets=[{"name": "absent", "location": "X"}])
    refused = await client.put("/api/recipes", json=recipe)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "spec.secrets[0].name"
    # Deleted after the apply: the run fails with the reason, not silently without it.
    await client.post("/api/secrets", json={"name": "absent", "value": "v-1234"})
    job_id, _ = await apply_and_start(client, recipe)
    assert (await client.delete("/api/secrets/absent")).status_code == 204
    started = await client.post(f"/api/jobs/{job_id}/start")
    run = await wait_run(client, started.json()["run"]["id"], "error")
    assert "secret 'absent'" in run["reason"]


async def test_retries_rerun_a_failing_command(sqlite_api: Api) -> None:
    _, run_id = await apply_and_start(sqlite_api.client, job("flaky", "exit 1", retries=2))
    run = await wait_run(sqlite_api.client, run_id, "failed", timeout=30)
    assert run["attempt"] == 2
    events = (await sqlite_api.client.get(f"/api/runs/{run_id}/events")).json()["events"]
    assert sum("retry" in e["message"] for e in events) == 2
    pods = (await sqlite_api.client.get(f"/api/jobs/{run['job_id']}/history")).json()["pods"]
    assert sorted(p["pod_name"] for p in pods) == [
        "flaky-1-0",
        "flaky-1-0-retry1",
        "flaky-1-0-retry2",
    ]


async def test_max_duration_stops_the_run(sqlite_api: Api) -> None:
    _, run_id = await apply_and_start(sqlite_api.client, job("slow", "sleep 60", max_duration="1s"))
    run = await wait_run(sqlite_api.client, run_id, "stopped", timeout=20)
    assert "max_duration" in run["stop_reason"]


async def test_stop_escalates_to_sigkill_after_grace(sqlite_api: Api) -> None:
    # The command ignores SIGTERM; the server's grace period in tests is 2 s.
    command = "trap '' TERM; echo ready; sleep 60"
    job_id, run_id = await apply_and_start(sqlite_api.client, job("stubborn", command))
    await wait_for(lambda: _log_has(sqlite_api, run_id, "ready"), what="ready")
    await sqlite_api.client.post(f"/api/jobs/{job_id}/stop")
    run = await wait_run(sqlite_api.client, run_id, "stopped", timeout=20)
    assert run["exit_code"] == 137  # 128 + SIGKILL


async def _log_has(api: Api, run_id: str, text: str) -> bool:
    return text in (await api.client.get(f"/api/runs/{run_id}/logs")).text
