"""Live reconfiguration: listeners and backends come and go, the algorithm changes,
and established connections keep flowing through all of it."""

from __future__ import annotations

import asyncio

import pytest

from flotilla.lb.balancer import ListenError
from flotilla.lb.choice import rendezvous_order
from flotilla.lb.config import Listener, LoadBalancerConfig
from flotilla.lb.runtime import BackendState
from flotilla.lb.testing import (
    SOURCES_FOR_TESTS,
    TagBackend,
    connect,
    eventually,
    free_port,
    greet,
    rig,
)


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    message = f"still here {n}".encode()
    writer.write(message)
    assert await asyncio.wait_for(reader.readexactly(len(message)), 5) == message


async def test_established_connection_survives_every_kind_of_change() -> None:
    async with rig("ab") as r:
        a, b = r.backends
        reader, writer = await connect(r.port, "127.0.0.9")
        held = (await reader.readline()).decode().strip()
        kept = a if held == a.name else b
        spare = b if kept is a else a
        await exchange(reader, writer, 0)

        c = await TagBackend("c").start()
        r.backends.append(c)
        await r.lb.apply(r.config())  # add a backend
        await exchange(reader, writer, 1)
        await r.lb.apply(r.config(algorithm="round_robin"))  # change the algorithm
        await exchange(reader, writer, 2)
        assert sorted([await greet(r.port) for _ in range(3)]) == ["a", "b", "c"]
        await r.lb.apply(r.config(backends=[kept, c], algorithm="least_connections"))
        await exchange(reader, writer, 3)  # removed the other backend
        assert r.listener.backends.keys() == {kept.backend.key, c.backend.key}

        await r.lb.apply(r.config(backends=[spare, c]))  # remove the one we are on
        await exchange(reader, writer, 4)
        draining = r.listener.backends[kept.backend.key]
        assert draining.state is BackendState.DRAINING
        assert {await greet(r.port, s) for s in SOURCES_FOR_TESTS[:8]} <= {spare.name, "c"}
        states = {b["key"]: b["state"] for b in r.lb.snapshot()["listeners"][0]["backends"]}
        assert states[kept.backend.key] == "draining"

        writer.write_eof()
        assert (
            await asyncio.wait_for(reader.read(), 5)
            == b"bye " + str(sum(len(f"still here {n}") for n in range(5))).encode() + b"\n"
        )
        writer.close()
        await writer.wait_closed()
        await eventually(
            lambda: kept.backend.key not in r.listener.backends, what="the drained backend to go"
        )
        await c.stop()


async def test_removing_a_backend_moves_only_its_own_clients() -> None:
    async with rig("abc") as r:
        before = {s: await greet(r.port, s) for s in SOURCES_FOR_TESTS}
        gone = r.backends[1]
        assert gone.name in before.values()
        runtimes = list(r.listener.backends.values())
        await r.lb.apply(r.config(backends=[r.backends[0], r.backends[2]]))
        after = {s: await greet(r.port, s) for s in SOURCES_FOR_TESTS}
        names = {b.backend.key: b.name for b in r.backends}
        for source, name in before.items():
            if name != gone.name:
                assert after[source] == name, f"{source} moved although its backend stayed"
            else:
                assert after[source] == names[rendezvous_order(source, runtimes)[1].key]


async def test_readding_a_draining_backend_serves_again() -> None:
    async with rig("a") as r:
        reader, writer = await connect(r.port)
        assert await reader.readline() == b"a\n"
        await r.lb.apply(r.config(backends=[]))
        assert r.runtime(r.backends[0]).state is BackendState.DRAINING
        await r.lb.apply(r.config())
        assert r.runtime(r.backends[0]).state is BackendState.ONLINE
        assert await greet(r.port) == "a"
        await exchange(reader, writer, 0)
        writer.close()
        await writer.wait_closed()


async def test_listeners_are_added_and_removed_live() -> None:
    async with rig("a") as r:
        reader, writer = await connect(r.port)
        assert await reader.readline() == b"a\n"
        second = free_port()
        listener = r.config().listeners[0]
        moved = LoadBalancerConfig(
            name="test", listeners=[listener.model_copy(update={"port": second})]
        )
        await r.lb.apply(moved)  # the first port goes, a second comes
        assert await greet(second) == "a"
        with pytest.raises(ConnectionRefusedError):
            await connect(r.port)
        await exchange(reader, writer, 0)  # the old port's connection continues
        snap = r.lb.snapshot()["listeners"]
        assert [(li["port"], li["draining"]) for li in snap] == [(second, False), (r.port, True)]
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: not r.lb.retired, what="the old listener to finish")
        assert [li["port"] for li in r.lb.snapshot()["listeners"]] == [second]
        r.port = second  # so the rig's helpers follow


async def test_a_port_in_use_fails_only_its_listener() -> None:
    async with rig("a") as r:
        blocker = await asyncio.start_server(lambda *_: None, "127.0.0.1", 0)
        busy = blocker.sockets[0].getsockname()[1]
        listener = r.config().listeners[0]
        config = LoadBalancerConfig(
            name="test", listeners=[listener, Listener(port=busy, host="127.0.0.1")]
        )
        with pytest.raises(ListenError, match=str(busy)):
            await r.lb.apply(config)
        assert await greet(r.port) == "a"
        assert list(r.lb.listeners) == [r.port]
        blocker.close()
        await blocker.wait_closed()
