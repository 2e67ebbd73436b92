"""Closing an asyncio listening server without losing connections in flight.

CPython 3.11's selector loop accepts a connection in one step and makes its
transport in the next; if the server is closed in between, making the transport
fails (`Server._attach` asserts) and the socket is dropped without being closed:
the connecting client hangs until the kernel gives up, and the socket object is
collected with a ResourceWarning. Stopping the accepts first and letting the loop
turn once hands every accepted connection to its protocol (which can refuse it)
before the server closes. Used by the load balancer's listeners and the SSH
gateway; harmless on uvloop, where the listening socket has no asyncio reader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def stop_accepting(sockets: Iterable[Any]) -> None:
    """Stop accepting on `sockets` (a server's) and let accepted connections reach
    their protocols; then the server may be closed."""
    loop = asyncio.get_running_loop()
    for sock in sockets:
        loop.remove_reader(sock.fileno())
    await asyncio.sleep(0)


async def close_server(server: asyncio.AbstractServer) -> None:
    sockets = getattr(server, "sockets", None) or ()
    await stop_accepting(sockets)
    server.close()
