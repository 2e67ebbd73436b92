"""Unix identities: every user and group gets a UID/GID once, never reused, in the
configured range, on both stores and under concurrent creates; migration 0006
numbers existing rows; account names on nodes; and a launch carries who the task
runs as (starter, owner group, cron ticks) to the TaskSpec the agent receives."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from flotilla.clock import FakeClock
from flotilla.compute.base import LaunchRequest
from flotilla.compute.local.backend import LocalBackend
from flotilla.config import Settings
from flotilla.core.unixids import (
    DEFAULT_UID_MAX,
    DEFAULT_UID_MIN,
    UNIX_NAME_MAX,
    UnixIdRange,
    UnixIdsExhausted,
    next_unix_ids,
    unix_name,
)
from flotilla.runtime.taskspec import RunAs, TaskSpec
from flotilla.server.db.engine import create_engine
from flotilla.server.db.migrate import alembic_config
from flotilla.server.db.models import UTCDateTime
from flotilla.server.reconcilers.cron import Cron
from tests.conftest import Api, make_settings, open_api
from tests.factories import add_user, job, wait_for

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
IN_RANGE = range(DEFAULT_UID_MIN, DEFAULT_UID_MAX + 1)


# --- the pure core ---------------------------------------------------------------


def test_numbers_follow_the_high_water_mark_and_skip_reserved() -> None:
    small = UnixIdRange(65530, 65540)
    assert next_unix_ids(None, small) == [65530]
    assert next_unix_ids(65532, small, 3) == [65533, 65536, 65537]  # no nobody, no -1
    # A range moved below the mark never gives a number again; one moved above starts fresh.
    assert next_unix_ids(65538, UnixIdRange(60000, 65540)) == [65539]
    assert next_unix_ids(10, small) == [65530]


def test_exhausted_range_names_the_setting() -> None:
    with pytest.raises(UnixIdsExhausted, match="FLOTILLA_UID_MAX"):
        next_unix_ids(5001, UnixIdRange(5000, 5002), 2)
    assert next_unix_ids(5001, UnixIdRange(5000, 5002), 1) == [5002]


def test_bad_ranges_are_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    for first, last in ((999, 5000), (6000, 5000), (5000, 2**31 - 1)):
        with pytest.raises(ValueError, match="FLOTILLA_UID_MIN"):
            Settings(uid_min=first, uid_max=last)
    monkeypatch.setenv("FLOTILLA_UID_MIN", "70000")
    monkeypatch.setenv("FLOTILLA_UID_MAX", "80000")
    assert Settings.from_env().unix_id_range == UnixIdRange(70000, 80000)
    assert Settings().unix_id_range == UnixIdRange(DEFAULT_UID_MIN, DEFAULT_UID_MAX)
    assert DEFAULT_UID_MAX < 2**31 - 1


def test_unix_names_are_portable_stable_and_injective() -> None:
    assert unix_name("alice") == "flo-alice"
    assert unix_name("ml_team-2") == "flo-ml_team-2"
    portable = re.compile(r"[a-z_][a-z0-9_-]*")
    long_name = "a" * 64
    dotted = "alice.smith"
    for name in (long_name, dotted, "a" * 26, "a" * 27):
        got = unix_name(name)
        assert portable.fullmatch(got) and len(got) <= UNIX_NAME_MAX, got
        assert unix_name(name) == got
    assert len(unix_name("a" * 26)) == 30  # the longest kept as is
    assert len(unix_name("a" * 27)) == len(unix_name(dotted)) == UNIX_NAME_MAX
    # A valid Flotilla name spelling out another's hashed form still maps elsewhere.
    lookalike = unix_name(dotted).removeprefix("flo-")
    names = [dotted, "alice_smith", lookalike, long_name, long_name[:-1] + "b", "a" * 27]
    assert len({unix_name(n) for n in names}) == len(names)


def test_run_as_travels_as_json_and_old_specs_still_load() -> None:
    spec = TaskSpec(task_id="t", task_dir="/d", workdir="/d/w", env={})
    old = spec.to_dict()
    del old["run_as"]
    assert TaskSpec.from_dict(old).run_as is None
    spec.run_as = RunAs("flo-alice", 2001000001, 2001000001, [("flo-team", 2001000002)])
    wire = json.loads(json.dumps(spec.to_dict()))
    assert TaskSpec.from_dict(wire).run_as == spec.run_as


# --- the API over both stores ------------------------------------------------------


async def _create_user(api: Api, name: str) -> dict[str, Any]:
    response = await api.client.post("/api/users", json={"username": name})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _create_group(api: Api, name: str, members: list[str]) -> dict[str, Any]:
    response = await api.client.post("/api/groups", json={"name": name, "members": members})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_users_and_groups_get_distinct_numbers_in_range(api: Api) -> None:
    alice = await _create_user(api, "alice")
    team = await _create_group(api, "team", ["alice"])
    headers = await add_user(api.ctx, "bob", groups=["lab"])  # made straight in the store
    assert alice["uid"] == alice["gid"] and alice["unix_name"] == "flo-alice"
    assert team["unix_name"] == "flo-team"
    shown = (await api.client.get("/api/users/alice")).json()
    assert (shown["uid"], shown["gid"]) == (alice["uid"], alice["uid"])
    assert (await api.client.get("/api/groups/team")).json()["gid"] == team["gid"]
    users = (await api.client.get("/api/users")).json()["users"]
    groups = (await api.client.get("/api/groups")).json()["groups"]
    numbers = [u["uid"] for u in users] + [g["gid"] for g in groups]
    assert len(users) == 3 and len(groups) == 2  # admin, alice, bob; team, lab
    assert len(set(numbers)) == len(numbers) and all(n in IN_RANGE for n in numbers)
    bob = (await api.client.get("/api/users/bob", headers=headers)).json()
    assert bob["uid"] in IN_RANGE
    # Read-only: clients cannot choose or change a number.
    for method, path, body in (
        ("POST", "/api/users", {"username": "carol", "uid": 5000}),
        ("PATCH", "/api/users/alice", {"uid": 5000}),
        ("POST", "/api/groups", {"name": "ops", "gid": 5000}),
    ):
        response = await api.client.request(method, path, json=body)
        assert response.status_code == 422, (path, response.text)


async def test_deleted_numbers_are_never_given_again(api: Api) -> None:
    first = await _create_user(api, "alice")
    assert (await api.client.delete("/api/users/alice")).status_code == 204
    again = await _create_user(api, "alice")
    group = await _create_group(api, "g", [])
    assert (await api.client.delete("/api/groups/g")).status_code == 204
    later = await _create_user(api, "dave")
    assert first["uid"] < again["uid"] < group["gid"] < later["uid"]


async def test_concurrent_creates_get_distinct_numbers(api: Api) -> None:
    users = await asyncio.gather(*(_create_user(api, f"user{i}") for i in range(10)))
    groups = await asyncio.gather(*(_create_group(api, f"group{i}", []) for i in range(5)))
    numbers = [u["uid"] for u in users] + [g["gid"] for g in groups]
    assert len(set(numbers)) == 15 and all(n in IN_RANGE for n in numbers)


async def test_null_numbers_are_refused_by_the_store(api: Api) -> None:
    """Writes that bypass the ORM hook (raw SQL) cannot leave a user without a UID."""
    users = sa.table("users", sa.column("id"), sa.column("name"), sa.column("is_admin"))
    users.append_column(sa.column("created_at", UTCDateTime(timezone=True)))
    with pytest.raises(IntegrityError, match="uid"):
        async with api.ctx.engine.begin() as conn:
            row = {"id": "raw", "name": "raw", "is_admin": False, "created_at": T0}
            await conn.execute(sa.insert(users).values(row))


@pytest.fixture
async def tight_api(data_dir: Path, database_url: str | None) -> AsyncIterator[Api]:
    """Three numbers: the bootstrap admin takes the first."""
    settings = make_settings(data_dir, database_url, uid_min=5000, uid_max=5002)
    async for api in open_api(settings):
        yield api


async def test_exhausted_range_is_a_clear_error(tight_api: Api) -> None:
    api = tight_api
    assert (await _create_user(api, "alice"))["uid"] == 5001
    assert (await _create_group(api, "team", []))["gid"] == 5002
    for path, body in (("/api/users", {"username": "bob"}), ("/api/groups", {"name": "ops"})):
        response = await api.client.post(path, json=body)
        assert response.status_code == 503, response.text
        assert response.json()["error_code"] == "unix_ids_exhausted"
        assert "FLOTILLA_UID_MAX" in response.json()["message"]
    assert (await api.client.get("/api/users/bob")).status_code == 404


# --- migration 0006 ----------------------------------------------------------------


def _alembic(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def test_migration_numbers_existing_rows_in_creation_order(
    database_url: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOTILLA_UID_MIN", "70000")  # the server's setting, from its environment
    when = UTCDateTime(timezone=True)
    users = sa.table(
        "users",
        sa.column("id"),
        sa.column("name"),
        sa.column("is_admin"),
        sa.column("created_at", when),
    )
    groups = sa.table(
        "groups",
        sa.column("id"),
        sa.column("name"),
        sa.column("description"),
        sa.column("created_at", when),
    )
    engine = create_engine(database_url or f"sqlite:///{tmp_path / 'm.db'}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "0005")
            for i, name in enumerate(("zed", "amy")):
                row = {
                    "id": name,
                    "name": name,
                    "is_admin": False,
                    "created_at": T0 + timedelta(seconds=2 * i),
                }
                await conn.execute(sa.insert(users).values(row))
            row = {
                "id": "g",
                "name": "team",
                "description": "",
                "created_at": T0 + timedelta(seconds=1),
            }
            await conn.execute(sa.insert(groups).values(row))
            await conn.run_sync(_alembic, "head")
            got: dict[str, int] = {}
            for table in (users, groups):
                column = "uid" if table is users else "gid"
                query = sa.select(table.c.name, sa.column(column)).select_from(table)
                got |= {name: number for name, number in await conn.execute(query)}
            counter = (
                await conn.execute(sa.text("SELECT value FROM settings WHERE key = 'unix_ids'"))
            ).scalar()
    finally:
        await engine.dispose()
    assert got == {"zed": 70000, "team": 70001, "amy": 70002}
    assert (json.loads(counter) if isinstance(counter, str) else counter) == {"last": 70002}


# --- who a task runs as ------------------------------------------------------------


class RecordingBackend(LocalBackend):
    """The local backend's TaskSpec for each launch, as the agent would receive it
    (JSON), kept instead of launched: a real launch as root would add the accounts
    to this machine's passwd (the node half, `runtime/isolation`)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, None, 60.0)
        self.sent: list[TaskSpec] = []

    async def launch(self, request: LaunchRequest) -> None:
        wire = json.loads(json.dumps(self.task_spec(request).to_dict()))
        self.sent.append(TaskSpec.from_dict(wire))


@pytest.fixture
async def launching(
    data_dir: Path, database_url: str | None
) -> AsyncIterator[tuple[Api, RecordingBackend, FakeClock]]:
    clock = FakeClock(T0)
    backend = RecordingBackend(data_dir)
    async for api in open_api(
        make_settings(data_dir, database_url, run_as_user=True), clock=clock, backend=backend
    ):
        yield api, backend, clock


async def _run_as(backend: RecordingBackend, run_id: str) -> RunAs | None:
    async def sent() -> TaskSpec | None:
        return next((s for s in backend.sent if f"{run_id}" in s.task_dir), None)

    spec: TaskSpec = await wait_for(sent, what=f"a launch of run {run_id}")
    return spec.run_as


async def _numbers(api: Api) -> dict[str, int]:
    users = (await api.client.get("/api/users")).json()["users"]
    groups = (await api.client.get("/api/groups")).json()["groups"]
    return {u["username"]: u["uid"] for u in users} | {g["name"]: g["gid"] for g in groups}


async def _apply(api: Api, headers: Any, recipe: dict[str, Any]) -> str:
    applied = await api.client.put("/api/recipes", json=recipe, headers=headers)
    assert applied.status_code == 201, applied.text
    return str(applied.json()["state"]["id"])


async def _start(api: Api, headers: Any, job_id: str) -> str:
    started = await api.client.post(f"/api/jobs/{job_id}/start", headers=headers)
    assert started.status_code == 200, started.text
    return str(started.json()["run"]["id"])


async def test_a_run_runs_as_its_starter_with_their_groups(
    launching: tuple[Api, RecordingBackend, FakeClock],
) -> None:
    api, backend, _ = launching
    alice = await add_user(api.ctx, "alice", groups=["team", "lab"])
    await add_user(api.ctx, "bob", groups=["team"])
    ids = await _numbers(api)
    mine = await _apply(api, alice, job("mine", "true"))
    run_id = await _start(api, alice, mine)
    assert await _run_as(backend, run_id) == RunAs(
        user="flo-alice",
        uid=ids["alice"],
        gid=ids["alice"],
        groups=[("flo-lab", ids["lab"]), ("flo-team", ids["team"])],
    )
    # A group's job started by the admin (no member): the admin, plus the owning group.
    shared = await _apply(api, alice, job("shared", "true", owner="team"))
    run_id = await _start(api, None, shared)
    assert await _run_as(backend, run_id) == RunAs(
        user="flo-admin", uid=ids["admin"], gid=ids["admin"], groups=[("flo-team", ids["team"])]
    )


async def test_cron_ticks_run_as_the_owner_or_the_last_applier(
    launching: tuple[Api, RecordingBackend, FakeClock],
) -> None:
    api, backend, clock = launching
    alice = await add_user(api.ctx, "alice", groups=["team"])
    bob = await add_user(api.ctx, "bob", groups=["team"])
    ids = await _numbers(api)
    schedule = {"schedule": "*/5 * * * *"}
    mine = await _apply(api, alice, job("mine", "true", **schedule))
    # Applied by alice, then last by bob: bob's ticks, with the owning group.
    shared = await _apply(api, alice, job("shared", "true", owner="team", **schedule))
    await _apply(api, bob, job("shared", "echo v2", owner="team", **schedule))
    clock.advance(5 * 60)
    await Cron(api.ctx).step()
    for job_id, expected in (
        (mine, RunAs("flo-alice", ids["alice"], ids["alice"], [("flo-team", ids["team"])])),
        (shared, RunAs("flo-bob", ids["bob"], ids["bob"], [("flo-team", ids["team"])])),
    ):
        runs = await wait_for(partial(_runs, api, job_id), what=f"a cron run of {job_id}")
        assert runs[0]["trigger"] == "cron"
        assert await _run_as(backend, runs[0]["id"]) == expected


async def _runs(api: Api, job_id: str) -> list[dict[str, Any]]:
    return list((await api.client.get(f"/api/jobs/{job_id}/runs")).json()["runs"])
