"""`serve --workers N`: N processes serve one port (SO_REUSEPORT) and all stop
with the first."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.lb.testing import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def hello_backend() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    port: int = server.getsockname()[1]

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"hi\n")

    threading.Thread(target=answer, daemon=True).start()
    yield port
    server.close()


def test_workers_share_the_port_and_stop_together(hello_backend: int, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "lb.json"
    backend = {"address": "127.0.0.1", "port": hello_backend}
    listener = {"port": port, "host": "127.0.0.1", "backends": [backend]}
    config.write_text(json.dumps({"name": "w", "listeners": [listener]}))
    command = [sys.executable, "-m", "flotilla.lb.serve", str(config), "--workers", "2"]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        deadline = time.monotonic() + 15
        while not children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)
        (worker,) = (int(p) for p in children.read_text().split())
        for _ in range(20):
            for _ in range(100):  # until the listeners are up
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                        assert conn.recv(16) == b"hi\n"
                    break
                except ConnectionRefusedError:
                    time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
