"""The replica count a deployment wants (autoscaling with delays, scale from zero),
restart back-off, the request meter, and deployment recipes' validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flotilla.core.replicas import (
    ScalePolicy,
    ScaleState,
    decide_scale,
    needed_replicas,
    restart_backoff,
)
from flotilla.errors import InvalidRecipe
from flotilla.recipes import parse_recipe
from flotilla.recipes.deployment import DeploymentSpec
from flotilla.server.traffic import RequestMeter

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
AUTO = ScalePolicy(low=0, high=4, target=2.0, up_delay=10, down_delay=60)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_needed_replicas_follow_load_within_the_range() -> None:
    assert [needed_replicas(AUTO, load) for load in (0, 1, 2, 2.5, 8, 100)] == [0, 1, 1, 2, 4, 4]
    fixed = ScalePolicy(low=3, high=3, target=None, up_delay=0, down_delay=0)
    assert decide_scale(fixed, ScaleState(0), 50, False, T0) == ScaleState(3)


def test_scaling_up_and_down_waits_for_the_delays() -> None:
    state = ScaleState(1)
    state = decide_scale(AUTO, state, 6, False, at(0))
    assert state == ScaleState(1, above_since=at(0))  # not yet
    state = decide_scale(AUTO, state, 6, False, at(9))
    assert state.desired == 1
    state = decide_scale(AUTO, state, 6, False, at(10))
    assert state == ScaleState(3)
    # A lull shorter than the down delay changes nothing; a load back at target resets it.
    state = decide_scale(AUTO, state, 0, False, at(20))
    assert state == ScaleState(3, below_since=at(20))
    state = decide_scale(AUTO, state, 6, False, at(50))
    assert state == ScaleState(3)
    state = decide_scale(AUTO, state, 0, False, at(60))
    state = decide_scale(AUTO, state, 0, False, at(120))
    assert state == ScaleState(0)  # to zero: MIN is 0


def test_a_waiting_client_scales_from_zero_at_once() -> None:
    assert decide_scale(AUTO, ScaleState(0), 0, True, T0) == ScaleState(1)
    at_least_two = ScalePolicy(low=2, high=4, target=1.0, up_delay=0, down_delay=0)
    assert decide_scale(at_least_two, ScaleState(0), 0, True, T0).desired == 2


def test_restart_back_off_doubles_up_to_a_minute() -> None:
    assert [restart_backoff(n) for n in (0, 1, 2, 3, 4, 8, 20)] == [0, 0, 1, 2, 4, 60, 60]


def test_request_meter_counts_rate_and_requests_in_flight() -> None:
    meter = RequestMeter(window=10)
    for _ in range(25):
        meter.hit("d")
    meter.started("d")
    meter.started("d")
    meter.finished("d")
    assert meter.rate("d") == 2.5 and meter.in_flight("d") == 1
    assert meter.rate("other") == 0 and meter.in_flight("other") == 0


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"replicas": "1..4"}, "spec", "needs `autoscale`"),
        ({"replicas": "4..1"}, "spec.replicas", "MIN..MAX"),
        ({"routes": [{"container_port": 80}, {"container_port": 80}]}, "spec.routes", "share"),
        ({"viewers": [{"route": {"container_port": 8000}}]}, "spec.viewers[0]", "user or group"),
        ({"autoscale": {"scale_up_delay": "1s"}}, "spec.autoscale", "target"),
        ({"health_check": {"interval": 0}}, "spec.health_check.interval", "greater than 0"),
        ({"wait_for_replica": "2h"}, "spec.wait_for_replica", "between 0 and 1h"),
        ({"wait_for_replica": "soon"}, "spec.wait_for_replica", "duration"),
    ],
)
def test_bad_deployments_name_the_field(spec: dict[str, object], field: str, message: str) -> None:
    recipe = {"type": "deployment", "spec": {"name": "web", "command": "serve", **spec}}
    with pytest.raises(InvalidRecipe) as caught:
        parse_recipe(recipe)
    assert any(p.path == field and message in p.message for p in caught.value.problems), (
        caught.value.problems
    )


def test_a_replica_runs_a_one_task_job_with_its_ports() -> None:
    spec = DeploymentSpec.model_validate(
        {
            "name": "web",
            "command": "serve",
            "routes": [{"container_port": 8000}, {"container_port": 9000, "protocol": "tcp"}],
            "environment_variables": {"A": "1"},
            "start_ssh": True,
        }
    )
    job = spec.replica_job({8000: 41000, 9000: 41001})
    assert job["environment_variables"] == {
        "A": "1",
        "PORT": "41000",
        "FLOTILLA_PORT_8000": "41000",
        "FLOTILLA_PORT_9000": "41001",
    }
    assert job["scale"] == 1 and job["retries"] == 0 and job["command"] == "serve"


def test_how_long_a_client_waits_for_a_replica() -> None:
    spec = DeploymentSpec.model_validate({"name": "web", "command": "serve"})
    assert spec.replica_wait_seconds() == 120.0
    big_model = DeploymentSpec.model_validate(
        {"name": "llm", "command": "serve", "wait_for_replica": "15m"}
    )
    assert big_model.replica_wait_seconds() == 900.0
