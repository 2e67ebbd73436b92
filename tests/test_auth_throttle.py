"""Password guessing is slowed down: after too many failed logins for a user name
(or from one address), logins are refused with 429 until the window frees up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flotilla.server.auth.throttle import retry_after
from tests.conftest import Api, make_settings, open_api
from tests.factories import add_password_user

pytestmark = pytest.mark.timeout(60)


def test_retry_after_counts_the_failures_left_in_the_window() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    failures = [now - timedelta(seconds=s) for s in (50, 30, 10)]
    assert retry_after(failures, 4, 60, now) == 0  # under the limit
    assert retry_after(failures, 3, 60, now) == 10  # free once the oldest leaves
    assert retry_after(failures, 2, 60, now) == 30  # two of three must leave


async def login(api: Api, username: str, password: str) -> int:
    response = await api.client.post(
        "/api/auth/login", json={"username": username, "password": password}
    )
    return response.status_code


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


async def test_a_success_clears_the_names_count(api: Api) -> None:
    await add_password_user(api.ctx, "alice", "correct horse")
    for _ in range(4):
        assert await login(api, "alice", "guess") == 401
    assert await login(api, "alice", "correct horse") == 200
    for _ in range(4):
        assert await login(api, "alice", "guess") == 401
    assert await login(api, "alice", "correct horse") == 200


async def test_one_address_guessing_many_names_is_refused(api: Api) -> None:
    for i in range(20):
        assert await login(api, f"nobody-{i}", "guess") == 401
    assert await login(api, "somebody-else", "guess") == 429


async def test_every_server_sharing_the_database_counts_the_same_failures(
    data_dir: Path, database_url: str | None
) -> None:
    """Two server processes on one database (or one restarted): a guesser gains
    nothing by spreading attempts over them."""
    settings = make_settings(data_dir, database_url)
    async for first in open_api(settings):
        await add_password_user(first.ctx, "alice", "correct horse")
        for _ in range(5):
            assert await login(first, "alice", "guess") == 401
        async for second in open_api(settings):
            assert await login(second, "alice", "correct horse") == 429
