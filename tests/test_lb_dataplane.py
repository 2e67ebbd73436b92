"""The L4 data plane on real loopback sockets: splicing, half-close, back-pressure,
source-IP hashing, round robin, least connections, allow-list, connect failover.
The scenarios marked for uvloop run again on uvloop (what `serve.py` uses)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from flotilla.lb.choice import rendezvous_order
from flotilla.lb.config import Backend, HealthCheck
from flotilla.lb.proxy import WRITE_HIGH_WATER
from flotilla.lb.testing import SOURCES_FOR_TESTS, connect, eventually, greet, rig

SOURCES = SOURCES_FOR_TESTS


async def scenario_round_trip_and_half_close() -> None:
    async with rig("ab") as r:
        reader, writer = await connect(r.port)
        name = (await reader.readline()).decode().strip()
        assert name in ("a", "b")
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        # Half-close: our EOF reaches the backend, which only then answers.
        writer.write(b"tail")
        writer.write_eof()
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
        assert rest == b"tailbye 8\n"
        await eventually(lambda: not r.listener.connections, what="connection closed")
        stats = r.lb.snapshot()["listeners"][0]
        assert stats["accepted"] == 1
        chosen = next(b for b in r.backends if b.name == name)
        backend = next(b for b in stats["backends"] if b["key"] == chosen.backend.key)
        assert (backend["total_connections"], backend["active_connections"]) == (1, 0)
        assert (backend["bytes_in"], backend["bytes_out"]) == (8, len(f"{name}\nping") + 10)


async def scenario_large_transfer_both_ways() -> None:
    payload = os.urandom(8 * 1024 * 1024)
    async with rig("a") as r:
        reader, writer = await connect(r.port)
        assert await reader.readline() == b"a\n"

        async def send() -> None:
            for i in range(0, len(payload), 100_000):
                writer.write(payload[i : i + 100_000])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
        await sender
        assert await asyncio.wait_for(reader.read(), 5) == f"bye {len(payload)}\n".encode()
        writer.close()
        await writer.wait_closed()
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        backend = r.runtime(r.backends[0])
        assert backend.bytes_in == len(payload)
        assert backend.bytes_out == len(payload) + len(b"a\n") + len(f"bye {len(payload)}\n")


async def scenario_back_pressure_bounds_buffers() -> None:
    """A client that does not read stalls a streaming backend instead of growing
    the proxy's buffers; then everything arrives intact."""
    size = 64 * 1024 * 1024
    sent = 0
    stalled: list[asyncio.StreamWriter] = []

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        if await reader.read(2) != b"go":  # a health probe
            writer.close()
            return
        stalled.append(writer)
        chunk = b"x" * 65536
        while sent < size:
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(stream, "127.0.0.1", 0)
    try:
        async with rig("") as r:
            await r.point_at(server.sockets[0].getsockname()[1])
            reader, writer = await connect(r.port)
            writer.write(b"go")
            await eventually(lambda: bool(r.listener.connections), what="connection")
            conn = next(iter(r.listener.connections))
            await eventually(
                lambda: conn.peer is not None and not conn.peer.is_reading(),
                what="the proxy to pause reading from the backend",
            )
            assert conn.client is not None
            assert conn.client.get_write_buffer_size() <= WRITE_HIGH_WATER + 256 * 1024
            assert sent < size  # the backend was held back, not drained into memory
            received = 0
            while data := await asyncio.wait_for(reader.read(1 << 20), 10):
                assert data.count(b"x") == len(data)
                received += len(data)
            assert received == size
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        for w in stalled:
            w.transport.abort()


async def scenario_upload_back_pressure_bounds_buffers() -> None:
    """A backend that does not read stops the proxy reading from an uploading client
    instead of growing the proxy's buffers; then everything arrives intact."""
    size = 64 * 1024 * 1024
    go = asyncio.Event()
    received: list[int] = []

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go.wait()
        total = 0
        while data := await reader.read(1 << 20):
            total += len(data)
        if total:  # not a health probe
            received.append(total)
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with rig("") as r:
            await r.point_at(port)
            _, writer = await connect(r.port)
            chunk = b"y" * (1 << 20)

            async def upload() -> None:
                for _ in range(size // len(chunk)):
                    writer.write(chunk)
                    await writer.drain()
                writer.write_eof()

            uploading = asyncio.create_task(upload())
            await eventually(lambda: bool(r.listener.connections), what="connection")
            conn = next(iter(r.listener.connections))
            await eventually(
                lambda: conn.client is not None and not conn.client.is_reading(),
                what="the proxy to pause reading from the client",
            )
            assert conn.peer is not None
            assert conn.peer.get_write_buffer_size() <= WRITE_HIGH_WATER + 256 * 1024
            assert not uploading.done()  # the client was held back
            go.set()
            await asyncio.wait_for(uploading, 30)
            await eventually(lambda: received == [size], within=30, what="all bytes at the sink")
            writer.close()
            await writer.wait_closed()
    finally:
        go.set()
        server.close()


async def scenario_backend_half_closes_first() -> None:
    """The backend sends EOF first; the client keeps sending and all of it arrives."""
    got = bytearray()
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        writer.write_eof()
        mine = bytearray()
        while data := await reader.read(65536):
            mine.extend(data)
        if mine:  # not a health probe
            got.extend(mine)
            done.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with rig("") as r:
            await r.point_at(port)
            reader, writer = await connect(r.port)
            assert await asyncio.wait_for(reader.read(), 5) == b"hello"  # then EOF
            writer.write(b"after your eof" * 1000)
            writer.write_eof()
            await asyncio.wait_for(done.wait(), 5)
            assert bytes(got) == b"after your eof" * 1000
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()


async def scenario_chaos_leaves_nothing_behind() -> None:
    """Clients and backends that reset, half-close or vanish at random moments: the
    proxy survives (uvloop is picky about transports closed mid-shutdown), every
    connection ends and every backend's count returns to zero."""
    rng = random.Random(7)

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        roll = rng.random()
        try:
            if roll < 0.2:
                writer.transport.abort()
                return
            writer.write(b"hi\n" * 1000)
            if roll < 0.4:
                writer.transport.abort()
                return
            if roll < 0.6:
                writer.write_eof()
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, RuntimeError):
            pass
        writer.close()

    servers = [await asyncio.start_server(flaky, "127.0.0.1", 0) for _ in range(3)]

    async def client(port: int, source: str) -> None:
        roll = rng.random()
        try:
            reader, writer = await connect(port, source)
        except ConnectionError:
            return
        try:
            if roll < 0.2:
                writer.transport.abort()
                return
            writer.write(b"x" * rng.randrange(1, 200_000))
            if roll < 0.4:
                await asyncio.sleep(rng.random() / 100)
                writer.transport.abort()
                return
            await asyncio.wait_for(reader.read(rng.randrange(1, 100_000)), 5)
            if roll < 0.7:  # half-close, then take the rest
                writer.write_eof()
                await asyncio.wait_for(reader.read(), 5)
        except (ConnectionError, TimeoutError):
            pass
        writer.close()

    try:
        async with rig("") as r:
            await r.point_at(*(s.sockets[0].getsockname()[1] for s in servers))
            for start in range(0, 300, 50):
                batch = [SOURCES[i % len(SOURCES)] for i in range(start, start + 50)]
                await asyncio.gather(*(client(r.port, source) for source in batch))
            await eventually(lambda: not r.listener.connections, what="all connections to end")
            assert all(b.active == 0 for b in r.listener.backends.values())
            assert r.listener.accepted == 300
    finally:
        for server in servers:
            server.close()


UVLOOP_SCENARIOS = [
    scenario_round_trip_and_half_close,
    scenario_large_transfer_both_ways,
    scenario_back_pressure_bounds_buffers,
    scenario_upload_back_pressure_bounds_buffers,
    scenario_backend_half_closes_first,
    scenario_chaos_leaves_nothing_behind,
]


async def test_round_trip_and_half_close() -> None:
    await scenario_round_trip_and_half_close()


async def test_large_transfer_both_ways() -> None:
    await scenario_large_transfer_both_ways()


async def test_back_pressure_bounds_buffers() -> None:
    await scenario_back_pressure_bounds_buffers()


async def test_upload_back_pressure_bounds_buffers() -> None:
    await scenario_upload_back_pressure_bounds_buffers()


async def test_chaos_leaves_nothing_behind() -> None:
    await scenario_chaos_leaves_nothing_behind()


async def test_backend_half_closes_first() -> None:
    await scenario_backend_half_closes_first()


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS, ids=lambda s: s.__name__[9:])
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 60)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(bounded())


async def test_source_hash_is_sticky_and_spreads_sources() -> None:
    async with rig("abc") as r:
        landed: dict[str, str] = {}
        for source in SOURCES:
            names = {await greet(r.port, source) for _ in range(4)}
            assert len(names) == 1, f"{source} moved between {names}"
            landed[source] = names.pop()
        assert len(set(landed.values())) >= 2, landed
        by_key = {b.backend.key: b.name for b in r.backends}
        runtimes = list(r.listener.backends.values())
        for source, name in landed.items():
            assert by_key[rendezvous_order(source, runtimes)[0].key] == name


async def test_refused_connect_tries_the_next_backend_in_hash_order() -> None:
    async with rig("abc") as r:  # quiet health checks: a stopped backend stays Online
        victim = r.backends[0]
        runtimes = list(r.listener.backends.values())
        sources = [s for s in SOURCES if rendezvous_order(s, runtimes)[0].key == victim.backend.key]
        assert sources
        await victim.stop()
        by_key = {b.backend.key: b.name for b in r.backends}
        for source in sources:
            expected = by_key[rendezvous_order(source, runtimes)[1].key]
            assert await greet(r.port, source) == expected
        assert r.runtime(victim).failed_connects == len(sources)
        assert r.listener.no_backend == 0


async def test_no_backend_closes_the_client() -> None:
    async with rig("a") as r:
        await r.backends[0].stop()
        reader, writer = await connect(r.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: r.listener.no_backend == 1, what="no_backend counted")
        assert r.runtime(r.backends[0]).active == 0


async def test_round_robin_takes_turns() -> None:
    async with rig("abc", algorithm="round_robin") as r:
        names = [await greet(r.port) for _ in range(9)]
        assert sorted(names[:3]) == ["a", "b", "c"]
        assert names == names[:3] * 3


async def test_least_connections_prefers_the_idle_backend() -> None:
    async with rig("ab", algorithm="least_connections") as r:
        first_reader, first = await connect(r.port)
        busy = (await first_reader.readline()).decode().strip()
        second_reader, second = await connect(r.port)
        assert (await second_reader.readline()).decode().strip() != busy
        third_reader, third = await connect(r.port)
        tied = (await third_reader.readline()).decode().strip()
        fourth_reader, fourth = await connect(r.port)
        assert (await fourth_reader.readline()).decode().strip() != tied
        busy_runtime = r.runtime(next(b for b in r.backends if b.name == busy))
        assert busy_runtime.active == 2
        first.close()
        await first.wait_closed()
        await eventually(lambda: busy_runtime.active == 1, what="the first connection to end")
        assert await greet(r.port) == busy  # 1 open there against 2 on the other
        for writer in (second, third, fourth):
            writer.close()
            await writer.wait_closed()


async def test_allow_list_refuses_other_sources() -> None:
    async with rig("a", allow=["127.0.0.1/32"]) as r:
        reader, writer = await connect(r.port, "127.0.0.2")
        try:
            data = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            data = b""
        assert data == b""
        writer.close()
        await writer.wait_closed()
        assert await greet(r.port, "127.0.0.1") == "a"
        stats = r.lb.snapshot()["listeners"][0]
        assert stats["refused"] == 1
        assert stats["accepted"] == 2
        assert r.runtime(r.backends[0]).total == 1  # the refused client never reached it


async def test_a_backend_that_never_answers_is_skipped_after_the_timeout() -> None:
    """A full accept queue drops SYNs, so connecting there hangs: after the health
    check's timeout the client goes to its next backend in hash order."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    queued = []
    for _ in range(4):  # fill the accept queue; nobody ever accepts
        waiting = socket.socket()
        waiting.setblocking(False)
        waiting.connect_ex(blackhole.getsockname())
        queued.append(waiting)
    check = HealthCheck(interval=30, timeout=0.2, failure_count=5)
    try:
        async with rig("a", health_check=check) as r:
            dead = Backend(address="127.0.0.1", port=blackhole.getsockname()[1])
            await r.point_at(dead.port, r.backends[0].port)
            runtimes = list(r.listener.backends.values())
            source = next(s for s in SOURCES if rendezvous_order(s, runtimes)[0].key == dead.key)
            started = time.monotonic()
            assert await greet(r.port, source) == "a"
            assert 0.2 <= time.monotonic() - started < 2
            assert r.listener.backends[dead.key].failed_connects == 1
    finally:
        for sock in [blackhole, *queued]:
            sock.close()
