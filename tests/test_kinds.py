"""The kinds registry and the changes the loops watch.

Every recipe type the parser knows has a kind (and no kind lacks a spec); every
change something announces wakes at least one loop of a running server, and only
the loops that watch it; applying a recipe announces its kind's changes after the
commit, so the loop that acts on it looks at once rather than at its resync."""

from __future__ import annotations

import asyncio

import pytest

from flotilla.recipes import recipe_types
from flotilla.server.changes import Change, Changes
from flotilla.server.kinds import KINDS, IdentityKind, identity_kind, kind_named
from tests.conftest import Api
from tests.factories import free_port, job


def test_every_recipe_type_has_one_kind() -> None:
    assert sorted(KINDS) == recipe_types()
    assert all(kind.type == name for name, kind in KINDS.items())
    assert kind_named("jobs") is None and kind_named(3) is None
    assert identity_kind("project") is KINDS["project"]
    assert identity_kind("job") is None
    assert {t for t, k in KINDS.items() if isinstance(k, IdentityKind)} == {
        "user",
        "group",
        "project",
    }


def test_an_announcement_wakes_only_the_loops_that_watch_it() -> None:
    changes = Changes()
    scheduler, cron = asyncio.Event(), asyncio.Event()
    changes.subscribe(scheduler, [Change.RUNS_QUEUED, Change.CAPACITY_FREED])
    changes.subscribe(cron, [Change.SCHEDULES])
    changes.announce(Change.CAPACITY_FREED)
    assert scheduler.is_set() and not cron.is_set()
    changes.unsubscribe(scheduler)
    scheduler.clear()
    changes.announce(Change.RUNS_QUEUED, Change.SCHEDULES)
    assert not scheduler.is_set() and cron.is_set()


async def test_every_change_wakes_some_loop_of_a_running_server(api: Api) -> None:
    unwatched = [c.name for c in Change if api.ctx.changes.watchers(c) == 0]
    assert unwatched == []


# What each kind's apply announces, among the changes only applies announce.
APPLIES = {
    "job": Change.SCHEDULES,
    "deployment": Change.DEPLOYMENTS,
    "load_balancer": Change.LOAD_BALANCERS,
    "project": Change.QUEUE_POLICY,
}
RECIPES = {
    "job": job("kinds-job", "true"),
    "deployment": {"type": "deployment", "spec": {"name": "kinds-web", "command": "sleep 60"}},
    "load_balancer": {
        "type": "load_balancer",
        "spec": {
            "name": "kinds-lb",
            "listeners": [{"host": "127.0.0.1", "port": free_port(), "backends": ["127.0.0.1:9"]}],
        },
    },
    "project": {"type": "project", "spec": {"name": "kinds-project"}},
}


@pytest.mark.parametrize("kind", sorted(APPLIES))
async def test_applying_a_recipe_announces_its_kinds_change(api: Api, kind: str) -> None:
    woken = {change: asyncio.Event() for change in APPLIES.values()}
    for change, event in woken.items():
        api.ctx.changes.subscribe(event, [change])
    r = await api.client.put("/api/recipes", json=RECIPES[kind])
    assert r.status_code == 201, r.text
    assert {c for c, e in woken.items() if e.is_set()} == {APPLIES[kind]}
    assert KINDS[kind].changes == (APPLIES[kind],)
