"""Retry waits kept in the database (`services/backoffs.py`), on SQLite and
PostgreSQL: a failure makes a key wait, failures in a row wait longer, a success
ends the wait, and another server on the same database (a restart) still sees
it. The reconcilers that use it: `tests/test_fleets.py` (stock-outs, refusals,
boot failures) and `tests/test_ssh_fleets.py` (a refused host)."""

from __future__ import annotations

from datetime import timedelta

from flotilla.core.backoff import doubling
from flotilla.server.services import backoffs
from tests.conftest import Api, make_settings, open_api


async def test_a_wait_grows_ends_and_survives_a_restart(api: Api) -> None:
    now = api.ctx.clock.now()

    def grow(failures: int) -> float:
        return doubling(10, failures, 300)

    async with api.ctx.transaction() as session:
        assert await backoffs.failed(session, "k", now, grow) == 10
        assert await backoffs.failed(session, "k", now, grow, version=3) == 20
    async with api.ctx.sessions() as session:
        held = await backoffs.waiting(session, ["k", "other"], now)
        assert list(held) == ["k"] and held["k"].failures == 2 and held["k"].version == 3
        assert await backoffs.waiting(session, ["k"], now + timedelta(seconds=21)) == {}
    # Another server on the same database (a restart) waits too.
    settings = make_settings(api.ctx.settings.data_dir, api.ctx.settings.database_url)
    async for again in open_api(settings):
        async with again.ctx.sessions() as session:
            assert list(await backoffs.waiting(session, ["k"], now)) == ["k"]
        async with again.ctx.transaction() as session:
            await backoffs.succeeded(session, "k")
        async with again.ctx.sessions() as session:
            assert await backoffs.waiting(session, ["k"], now) == {}
