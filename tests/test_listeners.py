"""Closing a listening server while clients connect loses no connection: each one
the kernel accepted reaches its protocol, so none is dropped unclosed (which on
CPython 3.11 leaves the client hanging and the socket to the garbage collector;
warnings are errors here, so this test fails if `close_server` regresses)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import socket

import pytest

from flotilla.listeners import close_server

pytestmark = pytest.mark.timeout(60)


class Recorder(asyncio.Protocol):
    def __init__(self, made: list[asyncio.BaseTransport]) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)


async def test_connections_accepted_as_the_server_closes_reach_their_protocol() -> None:
    loop = asyncio.get_running_loop()
    for _ in range(20):
        made: list[asyncio.BaseTransport] = []
        server = await loop.create_server(
            functools.partial(Recorder, made), "127.0.0.1", 0, backlog=200
        )
        port = server.sockets[0].getsockname()[1]
        clients = []
        for _ in range(100):
            client = socket.socket()
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):  # connecting in the background
                client.connect(("127.0.0.1", port))
            clients.append(client)
        # Two turns: the loop accepts in the first and makes the transports in the
        # next, and the server closes in between.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await close_server(server)
        await asyncio.sleep(0.05)
        for transport in made:
            transport.close()
        for client in clients:
            client.close()
    gc.collect()  # an unclosed transport would warn now
