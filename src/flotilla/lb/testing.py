"""Test helpers for the data plane: a tagged echo backend on loopback, clients that
connect from a chosen 127.x.y.z source, and a condition poll with a deadline. Used by
`tests/test_lb_*.py`; kept in the package so other suites can drive a balancer too."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from flotilla.lb.balancer import LoadBalancer
from flotilla.lb.config import Backend, HealthCheck, Listener, LoadBalancerConfig
from flotilla.lb.runtime import BackendRuntime, ListenerRuntime
from flotilla.listeners import close_server

QUIET_CHECKS = HealthCheck(interval=30, timeout=1)  # a probe at start, then none in a test
SOURCES_FOR_TESTS = [f"127.0.{i}.{j}" for i in range(1, 4) for j in range(1, 9)]  # 24 clients


class TagBackend:
    """A TCP server that greets each connection with `<name>\\n`, echoes what it
    reads, and on the client's EOF answers `bye <bytes read>\\n` and closes. That
    tells a test which backend it reached, and that a half-closed client still gets
    everything sent after its EOF."""

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.port = port
        self.accepted = 0
        self.open = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[object]] = set()

    @property
    def backend(self) -> Backend:
        return Backend(address="127.0.0.1", port=self.port)

    async def start(self) -> TagBackend:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self, *, drop: bool = True) -> None:
        """Stop listening (new connects are refused); `drop` also resets the open
        connections."""
        if self._server is not None:
            await close_server(self._server)
            self._server = None
        # A connection accepted just now reaches its handler a few loop turns later
        # (transport, then protocol, then the handler task): let it register, or
        # its socket would outlive the test.
        await asyncio.sleep(0.05)
        if drop:
            for writer in list(self._writers):
                writer.transport.abort()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self.accepted += 1
        self.open += 1
        self._writers.add(writer)
        total = 0
        try:
            writer.write(f"{self.name}\n".encode())
            while data := await reader.read(256 * 1024):
                total += len(data)
                writer.write(data)
                await writer.drain()
            writer.write(f"bye {total}\n".encode())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()


async def connect(
    port: int, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a loopback `port` from `source` (any 127.x.y.z works on Linux)."""
    return await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source, 0), limit=4 * 1024 * 1024
    )


async def greet(port: int, source: str = "127.0.0.1") -> str:
    """Open a connection, return the backend's name and close cleanly."""
    reader, writer = await connect(port, source)
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 5)
        return line.decode().strip()
    finally:
        writer.close()
        await writer.wait_closed()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def eventually(
    condition: Callable[[], bool], within: float = 5.0, what: str = "condition"
) -> None:
    """Poll `condition` until true; fail with `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Rig:
    """A started balancer with one listener on `port` in front of `backends`."""

    lb: LoadBalancer
    port: int
    backends: list[TagBackend]

    @property
    def listener(self) -> ListenerRuntime:
        return self.lb.listeners[self.port]

    def runtime(self, backend: TagBackend) -> BackendRuntime:
        return self.listener.backends[backend.backend.key]

    def config(
        self, backends: list[TagBackend] | None = None, **listener: Any
    ) -> LoadBalancerConfig:
        """The rig's config with other backends or listener fields."""
        current = self.lb.config.listeners[0]
        chosen = self.backends if backends is None else backends
        fields = {**current.model_dump(), "backends": [b.backend for b in chosen], **listener}
        return LoadBalancerConfig(name=self.lb.name, listeners=[Listener.model_validate(fields)])

    async def point_at(self, *ports: int) -> None:
        """Replace the backends with servers of the test's own on loopback `ports`."""
        listener = self.lb.config.listeners[0]
        backends = [Backend(address="127.0.0.1", port=port) for port in ports]
        await self.lb.apply(
            LoadBalancerConfig(
                name=self.lb.name, listeners=[listener.model_copy(update={"backends": backends})]
            )
        )


@asynccontextmanager
async def rig(names: str = "ab", **listener: Any) -> AsyncIterator[Rig]:
    """Backends named by the letters of `names`, a balancer in front of them on a
    free loopback port (health checks quiet unless `health_check` is given)."""
    backends = [await TagBackend(name).start() for name in names]
    port = free_port()
    fields: dict[str, Any] = {"health_check": QUIET_CHECKS, **listener}
    config = LoadBalancerConfig(
        name="test",
        listeners=[
            Listener(port=port, host="127.0.0.1", backends=[b.backend for b in backends], **fields)
        ],
    )
    lb = LoadBalancer(config)
    await lb.start()
    try:
        yield Rig(lb, port, backends)
    finally:
        await lb.stop()
        for backend in backends:
            await backend.stop()
