"""Run one load balancer from a YAML/JSON file until SIGTERM/SIGINT, on uvloop when
it is installed. SIGHUP re-reads the file and applies it live. With a stats port,
`GET /metrics` answers Prometheus text and `GET /stats` the JSON snapshot (of the
first worker).

    python -m flotilla.lb.serve lb.yaml [--stats-port 9100] [--workers 2]

With `--workers N`, N processes serve the same ports (SO_REUSEPORT: the kernel
spreads new connections over them), each with its own health checks; one Python
process tops out at one core, and accepting connections is where it spends most.

`run_forever` is what a future `flo lb serve` command calls; `serve` is the same
as a coroutine for callers that own a loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from flotilla.lb.balancer import LoadBalancer
from flotilla.lb.collector import LoadBalancerCollector
from flotilla.lb.config import read_config

log = logging.getLogger("flotilla.lb")
DRAIN_SECONDS = 10.0
PR_SET_PDEATHSIG = 1  # prctl(2): a signal for this process when its parent dies


async def serve(
    config_path: str | Path,
    *,
    stats_host: str = "127.0.0.1",
    stats_port: int | None = None,
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT), then drain connections."""
    stop = stop or asyncio.Event()
    balancer = LoadBalancer(read_config(config_path), reuse_port=reuse_port)
    await balancer.start()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = loop.create_task(_reload(balancer, config_path))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    handlers = {signal.SIGTERM: stop.set, signal.SIGINT: stop.set, signal.SIGHUP: reload}
    for signum, handler in handlers.items():
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not main thread
            loop.add_signal_handler(signum, handler)
    stats = None
    if stats_port is not None:
        stats = await asyncio.start_server(_stats_handler(balancer), stats_host, stats_port)
    log.info("lb %s serving %d listener(s)", balancer.name, len(balancer.listeners))
    try:
        await stop.wait()
    finally:
        for signum in handlers:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
        if stats is not None:
            stats.close()
        await balancer.drain(DRAIN_SECONDS)


async def _reload(balancer: LoadBalancer, path: str | Path) -> None:
    try:
        await balancer.apply(read_config(path))
    except Exception:  # a bad file must not take the data plane down
        log.exception("reloading %s failed; keeping the running config", path)
    else:
        log.info("reloaded %s", path)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


def _stats_handler(balancer: LoadBalancer) -> Handler:
    registry = CollectorRegistry()
    registry.register(LoadBalancerCollector.of(balancer))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
                if path == b"/metrics":
                    body, kind = generate_latest(registry), b"text/plain; version=0.0.4"
                    status = b"200 OK"
                elif path == b"/stats":
                    body, kind = json.dumps(balancer.snapshot()).encode(), b"application/json"
                    status = b"200 OK"
                else:
                    body, kind, status = b"not found\n", b"text/plain", b"404 Not Found"
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind
                    + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )  # fmt: skip
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_forever(
    config_path: str | Path,
    *,
    stats_host: str = "127.0.0.1",
    stats_port: int | None = None,
    workers: int = 1,
) -> None:
    """Blocking entry point: serve `config_path` until SIGTERM/SIGINT, in `workers`
    processes (this one and `workers - 1` forked before any event loop exists)."""
    children = [_fork_worker(config_path) for _ in range(workers - 1)]
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(
                serve(
                    config_path,
                    stats_host=stats_host,
                    stats_port=stats_port,
                    reuse_port=workers > 1,
                )
            )
    finally:
        for pid in children:  # they drain like this one
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _fork_worker(config_path: str | Path) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The worker: ends with its parent, serves the same ports, exits without
    # running the parent's cleanup.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    code = 0
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(config_path, reuse_port=True))
    except BaseException:
        log.exception("load balancer worker %d failed", os.getpid())
        code = 1
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("config", type=Path, help="YAML or JSON LoadBalancerConfig")
    parser.add_argument("--stats-host", default="127.0.0.1")
    parser.add_argument("--stats-port", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1, help="processes serving the ports")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    run_forever(
        args.config, stats_host=args.stats_host, stats_port=args.stats_port, workers=args.workers
    )


if __name__ == "__main__":
    main()
