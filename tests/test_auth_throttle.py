"""Password guessing is slowed down: after too many failed logins for a user name
(or from one address), logins are refused with 429 until the window frees up."""

from __future__ import annotations

import pytest

from flotilla.server.auth.throttle import LoginThrottle, TooManyAttempts
from tests.conftest import Api
from tests.factories import add_password_user

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limits_per_user_and_per_address_over_a_sliding_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(per_user=3, per_address=5, window=60, clock=clock)
    for _ in range(3):
        throttle.check("alice", "10.0.0.1")
        throttle.failed("alice", "10.0.0.1")
        clock.now += 1
    with pytest.raises(TooManyAttempts) as caught:
        throttle.check("alice", "10.0.0.9")  # the name is locked from anywhere
    assert caught.value.status == 429 and 57 <= caught.value.retry_after <= 58
    throttle.check("bob", "10.0.0.2")  # others are not
    for name in ("bob", "carol"):
        throttle.failed(name, "10.0.0.1")
    with pytest.raises(TooManyAttempts):
        throttle.check("dave", "10.0.0.1")  # five failures from one address
    clock.now += 60
    throttle.check("alice", "10.0.0.1")  # the window moved on
    throttle.failed("erin", "10.0.0.3")
    throttle.succeeded("erin")
    assert throttle._wait(("user", "erin"), clock.now) == 0


async def test_the_login_route_refuses_a_guesser_even_with_the_right_password(api: Api) -> None:
    await add_password_user(api.ctx, "alice", "correct horse")
    for _ in range(5):
        bad = await api.client.post(
            "/api/auth/login", json={"username": "alice", "password": "guess"}
        )
        assert bad.status_code == 401
    refused = await api.client.post(
        "/api/auth/login", json={"username": "alice", "password": "correct horse"}
    )
    assert refused.status_code == 429, refused.text
    assert "too many failed logins" in refused.json()["message"]
    audit = (await api.client.get("/api/audit", params={"actor": "alice"})).json()["entries"]
    assert audit[0]["status_code"] == 429 and "too many" in audit[0]["detail"]
