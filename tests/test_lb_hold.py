"""Holding a connection for a backend (`hold_seconds`): a listener with none online
keeps the client, asks its owner for one (`on_demand`), and connects it once one
comes; with none in time, or without `hold_seconds`, it closes the connection."""

from __future__ import annotations

import asyncio

import pytest

from flotilla.lb.testing import connect, greet, rig

pytestmark = pytest.mark.timeout(30)


async def test_a_held_connection_reaches_the_backend_that_comes_later() -> None:
    async with rig("a", hold_seconds=10) as r:
        (backend,) = r.backends
        await r.lb.apply(r.config(backends=[]))
        asked: list[int] = []
        r.listener.on_demand = lambda: asked.append(1)
        held = asyncio.create_task(greet(r.port))
        await asyncio.sleep(0.3)
        assert asked == [1] and not held.done()  # held, not refused
        await r.lb.apply(r.config(backends=[backend]))
        assert await asyncio.wait_for(held, 5) == "a"
        assert r.listener.no_backend == 0


async def test_without_a_backend_in_time_the_connection_is_closed() -> None:
    async with rig("a", hold_seconds=0.3) as r:
        await r.lb.apply(r.config(backends=[]))
        reader, writer = await connect(r.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, after the hold
        writer.close()
        assert r.listener.no_backend == 1


async def test_without_hold_seconds_no_backend_means_closed_at_once() -> None:
    async with rig("a") as r:
        await r.lb.apply(r.config(backends=[]))
        reader, writer = await connect(r.port)
        assert await asyncio.wait_for(reader.read(), 1) == b""
        writer.close()
        assert r.listener.no_backend == 1
