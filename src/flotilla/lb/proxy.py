"""The data path: one `ClientSide` protocol per accepted connection and one
`BackendSide` per connection it opens, splicing bytes both ways.

Back-pressure is transport-level: when one side's write buffer passes its high-water
mark, asyncio calls that side's `pause_writing()`, which pauses reading on the other
side until `resume_writing()`. Half-close is forwarded: an EOF from one side becomes
`write_eof()` on the other and the opposite direction keeps flowing; the pair is
closed once both directions have ended (or either side is lost).

Created by the listening servers of `balancer.LoadBalancer`; counters live on
`runtime.BackendRuntime` / `runtime.ListenerRuntime`.
"""

from __future__ import annotations

import asyncio
from typing import cast

from flotilla.lb.runtime import BackendRuntime, ListenerRuntime

WRITE_HIGH_WATER = 512 * 1024  # per transport; past it the other side stops reading
PENDING_LIMIT = 256 * 1024  # read from a client while its backend connection opens
# Why reading from the client is paused (either keeps it paused).
CONNECTING = 1  # PENDING_LIMIT reached before the backend answered
PRESSURE = 2  # the backend's write buffer is full


class ClientSide(asyncio.Protocol):
    __slots__ = (
        "backend",
        "client",
        "client_eof",
        "closed",
        "connecting",
        "held",
        "ip",
        "listener",
        "peer",
        "peer_eof",
        "pending",
        "timed_out",
    )

    def __init__(self, listener: ListenerRuntime) -> None:
        self.listener = listener
        self.client: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.backend: BackendRuntime | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.pending: list[bytes] = []  # read before the backend answered
        self.ip = ""
        self.client_eof = False
        self.peer_eof = False
        self.closed = False
        self.held = 0  # CONNECTING | PRESSURE: why client reading is paused
        self.timed_out = False

    # -- accept ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = self.client = cast(asyncio.Transport, transport)
        listener = self.listener
        if listener.draining:
            # Accepted by the kernel just before the listener closed, and handed to
            # us after: nobody would ever close it (a stopped balancer included).
            self.closed = True
            client.abort()
            return
        listener.accepted += 1
        ip = self.ip = client.get_extra_info("peername")[0]
        if not listener.allowed(ip):
            listener.refused += 1
            self.closed = True
            client.abort()
            return
        backend = listener.selector.pick(ip)
        if backend is None:
            if listener.config.hold_seconds > 0:
                self._hold_for_backend()
                return
            listener.no_backend += 1
            self.closed = True
            client.abort()
            return
        client.set_write_buffer_limits(WRITE_HIGH_WATER)
        backend.active += 1
        self.backend = backend
        listener.connections.add(self)
        # A fixed name: the default "Task-<n>" costs more to format than the task itself.
        self.connecting = asyncio.get_running_loop().create_task(
            self._connect(backend), name="lb-connect"
        )

    def _hold_for_backend(self) -> None:
        """No backend is online: keep the client (what it sends is buffered) while
        the listener's owner is asked for one, up to `hold_seconds`."""
        assert self.client is not None
        self.client.set_write_buffer_limits(WRITE_HIGH_WATER)
        self.listener.connections.add(self)
        self.connecting = asyncio.get_running_loop().create_task(
            self._wait_then_connect(), name="lb-hold"
        )

    async def _wait_then_connect(self) -> None:
        listener = self.listener
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        listener.waiters.append(waiter)
        if listener.on_demand is not None:
            listener.on_demand()
        try:
            await asyncio.wait_for(waiter, listener.config.hold_seconds)
        except TimeoutError:
            if waiter in listener.waiters:
                listener.waiters.remove(waiter)
        backend = listener.selector.pick(self.ip)
        if backend is None or self.closed:
            if backend is None:
                listener.no_backend += 1
            self._close(None)
            return
        backend.active += 1
        self.backend = backend
        await self._connect(backend)

    async def _connect(self, backend: BackendRuntime) -> None:
        """Connect to `backend`, or on refusal/timeout to the selector's next choice.
        The timeout is a bare timer rather than `asyncio.timeout()`: this runs once
        per accepted connection and the context manager costs several times more."""
        listener = self.listener
        loop = asyncio.get_running_loop()
        tried: list[BackendRuntime] = []
        while True:
            timer = loop.call_later(listener.connect_timeout, self._connect_timed_out)
            try:
                await loop.create_connection(self._backend_side, backend.address, backend.port)
            except (OSError, asyncio.CancelledError) as e:
                if isinstance(e, asyncio.CancelledError):
                    if not self.timed_out:
                        raise  # the client left, or the balancer stopped
                    self.timed_out = False
                    if self.connecting is not None:
                        self.connecting.uncancel()
                backend.failed_connects += 1
                tried.append(backend)
                nxt = listener.selector.fallback(self.ip, tried)
                if nxt is None or self.closed:
                    if nxt is None:
                        listener.no_backend += 1
                    self._close(None)
                    return
                listener.release(backend)
                nxt.active += 1
                self.backend = backend = nxt
                continue
            finally:
                timer.cancel()
            break
        self.connecting = None
        if self.closed:
            return
        backend.total += 1
        self.release(CONNECTING)

    def _connect_timed_out(self) -> None:
        if self.connecting is not None and self.peer is None:  # not connected meanwhile
            self.timed_out = True
            self.connecting.cancel()

    def hold(self, reason: int) -> None:
        """Pause reading from the client for `reason` (see CONNECTING, PRESSURE)."""
        if not self.held and self.client is not None:
            self.client.pause_reading()
        self.held |= reason

    def release(self, reason: int) -> None:
        if self.held & reason:
            self.held &= ~reason
            if not self.held and self.client is not None:
                self.client.resume_reading()

    def _backend_side(self) -> BackendSide:
        return BackendSide(self)

    # -- client → backend ------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:  # still connecting: hold it, and stop reading if it piles up
            self.pending.append(data)
            if sum(map(len, self.pending)) >= PENDING_LIMIT:
                self.hold(CONNECTING)
            return
        peer.write(data)
        self.backend.bytes_in += len(data)  # type: ignore[union-attr]

    def peer_connected(self, peer: asyncio.Transport) -> None:
        """The backend accepted: forward what arrived meanwhile, EOF included."""
        self.peer = peer
        if self.pending:
            for data in self.pending:
                peer.write(data)
                self.backend.bytes_in += len(data)  # type: ignore[union-attr]
            self.pending.clear()
        if self.client_eof:
            peer.write_eof()

    def eof_received(self) -> bool:
        self.client_eof = True
        peer = self.peer
        if peer is not None and not peer.is_closing():
            peer.write_eof()
        if self.peer_eof:
            self._close(None)
        return True  # keep our write side open for the rest of the reply

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._close(exc)

    # -- backend side callbacks ------------------------------------------------

    def backend_eof(self) -> None:
        self.peer_eof = True
        client = self.client
        if client is not None and not client.is_closing():
            client.write_eof()
        if self.client_eof:
            self._close(None)

    def _close(self, exc: Exception | None) -> None:
        """Close both sides (flushing what is buffered unless `exc` says it broke)
        and release the backend. Safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        for transport in (self.client, self.peer):
            if transport is not None and not transport.is_closing():
                if exc is None:
                    transport.close()
                else:
                    transport.abort()
        if self.connecting is not None and self.connecting is not asyncio.current_task():
            self.connecting.cancel()
        listener = self.listener
        connections = listener.connections
        connections.discard(self)
        if self.backend is not None:
            listener.release(self.backend)
        if not connections and listener.on_empty is not None:
            listener.on_empty()

    def abort(self) -> None:
        """Drop the connection now (balancer stop)."""
        self._close(ConnectionAbortedError())


class BackendSide(asyncio.Protocol):
    __slots__ = ("front",)

    def __init__(self, front: ClientSide) -> None:
        self.front = front

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = cast(asyncio.Transport, transport)
        front = self.front
        if front.closed:
            peer.close()
            return
        peer.set_write_buffer_limits(WRITE_HIGH_WATER)
        front.peer_connected(peer)

    def data_received(self, data: bytes) -> None:
        front = self.front
        front.client.write(data)  # type: ignore[union-attr]
        front.backend.bytes_out += len(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.front.backend_eof()
        return True

    def pause_writing(self) -> None:
        self.front.hold(PRESSURE)

    def resume_writing(self) -> None:
        self.front.release(PRESSURE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front._close(exc)
