"""SSH benchmark: Flotilla's SSH gateway (asyncssh, inside the server process) against
OpenSSH's sshd on the same machine, in the same run, both driven by OpenSSH's own
`ssh` client with the same ed25519 key.

Measured for each (medians over --repeat rounds, the two alternating):
  * login: seconds from starting `ssh HOST true` to its exit (connect, key exchange,
    authentication, one command);
  * download and upload: MB/s (10^6 bytes) of --mib MiB through `head -c … /dev/zero`
    and `cat > /dev/null` on the far side.

The gateway serves a job (`sleep`, `start_ssh: true`) on a Flotilla server on
SQLite in a temporary directory; sshd runs with a throw-away config that admits the
current user with the benchmark's key. Requires `ssh` and `sshd` (Debian:
`apt-get install -y openssh-client openssh-server`); installs nothing.

    python -m bench.ssh [--repeat 5] [--mib 256]

Ends with one JSON line holding every figure and ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import httpx

from flotilla.config import Settings
from flotilla.core.status import RunStatus
from flotilla.server.app import create_app

ADMIN = "flo_bench-admin-token"
SSHD = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sshd(workdir: Path, key: asyncssh.SSHKey) -> tuple[subprocess.Popen[bytes], int]:
    assert SSHD is not None
    port = free_port()
    host_key = workdir / "sshd_host_key"
    host_key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    host_key.chmod(0o600)
    authorized = workdir / "authorized_keys"
    authorized.write_bytes(key.export_public_key())
    config = workdir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"StrictModes no\nUsePAM no\nPidFile {workdir / 'sshd.pid'}\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("sshd did not start")


class Peer:
    def __init__(self, name: str, port: int, login: str, key_file: Path, workdir: Path) -> None:
        self.name = name
        self.argv = [
            "ssh",
            "-p",
            str(port),
            "-i",
            str(key_file),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={workdir / 'known_hosts'}",
            "-o",
            "LogLevel=ERROR",
            f"{login}@127.0.0.1",
        ]

    def run(self, command: str, stdin: int | None = None) -> float:
        started = time.perf_counter()
        subprocess.run(
            [*self.argv, command], stdin=stdin, stdout=subprocess.DEVNULL, check=True, timeout=600
        )
        return time.perf_counter() - started


def measure(peer: Peer, mib: int) -> dict[str, float]:
    logins = [peer.run("true") for _ in range(5)]
    size = mib * 2**20
    down = peer.run(f"head -c {size} /dev/zero")
    with subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE) as src:
        up = peer.run("cat > /dev/null", stdin=src.stdout.fileno() if src.stdout else None)
    return {
        "login_ms": statistics.median(logins) * 1000,
        "download_mb_s": size / down / 1e6,
        "upload_mb_s": size / up / 1e6,
    }


async def flotilla_task(workdir: Path, key: asyncssh.SSHKey, run: Callable[[int], Any]) -> Any:
    """Start a server with a `start_ssh` job running, call `run(gateway port)` in a
    thread, and stop the server."""
    # One trust domain (tasks as this process's user), like the sshd peer's login.
    settings = Settings(
        data_dir=workdir / "flotilla", admin_token=ADMIN, ssh_port=0, run_as_user=False
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        headers = {"Authorization": f"token {ADMIN}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://flotilla", headers=headers
        ) as api:
            me = (await api.get("/api/user")).json()
            key_line = key.export_public_key().decode()
            added = await api.post(f"/api/users/{me['id']}/ssh_keys", json={"key": key_line})
            added.raise_for_status()
            spec = {"name": "bench", "command": "sleep 3600", "start_ssh": True}
            applied = await api.put("/api/recipes", json={"type": "job", "spec": spec})
            applied.raise_for_status()
            job_id = applied.json()["state"]["id"]
            started = await api.post(f"/api/jobs/{job_id}/start")
            run_id = started.json()["run"]["id"]
            while (await api.get(f"/api/runs/{run_id}")).json()["status"] != "running":  # noqa: ASYNC110 - polling the API is the point
                await asyncio.sleep(0.1)
            port = app.state.ctx.ssh_gateway.port
            try:
                return await asyncio.to_thread(run, port)
            finally:
                # Stopped and gone before the server goes: tasks outlive their server.
                (await api.post(f"/api/jobs/{job_id}/stop")).raise_for_status()
                while not await run_finished(api, run_id):  # noqa: ASYNC110 - polling the API is the point
                    await asyncio.sleep(0.1)


async def run_finished(api: httpx.AsyncClient, run_id: str) -> bool:
    status = (await api.get(f"/api/runs/{run_id}")).json()["status"]
    return RunStatus(status).is_finished()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    if SSHD is None or shutil.which("ssh") is None:
        raise SystemExit("needs ssh and sshd: apt-get install openssh-client openssh-server")
    with tempfile.TemporaryDirectory(prefix="flotilla-bench-ssh-") as tmp:
        workdir = Path(tmp)
        key = asyncssh.generate_private_key("ssh-ed25519")
        key_file = workdir / "id_ed25519"
        key_file.write_bytes(key.export_private_key())
        key_file.chmod(0o600)
        sshd, sshd_port = start_sshd(workdir, key)
        try:
            sshd_peer = Peer("sshd", sshd_port, getpass.getuser(), key_file, workdir)

            def rounds(gateway_port: int) -> dict[str, list[dict[str, float]]]:
                gateway = Peer("flotilla", gateway_port, "bench", key_file, workdir)
                found: dict[str, list[dict[str, float]]] = {"flotilla": [], "sshd": []}
                for _ in range(args.repeat):
                    for peer in (gateway, sshd_peer):
                        found[peer.name].append(measure(peer, args.mib))
                return found

            results = asyncio.run(flotilla_task(workdir, key, rounds))
        finally:
            sshd.terminate()
            sshd.wait()
    report(results, args)


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    figures: dict[str, Any] = {"repeat": args.repeat, "mib": args.mib}
    print(f"{'':16}{'sshd':>12}{'flotilla':>12}{'ratio':>8}")
    for figure in ("login_ms", "download_mb_s", "upload_mb_s"):
        medians = {
            name: statistics.median(r[figure] for r in rounds) for name, rounds in results.items()
        }
        ratio = medians["flotilla"] / medians["sshd"]
        figures[figure] = {**{k: round(v, 2) for k, v in medians.items()}, "ratio": round(ratio, 3)}
        print(f"{figure:16}{medians['sshd']:>12.1f}{medians['flotilla']:>12.1f}{ratio:>7.2f}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    os.environ.setdefault("FLOTILLA_SSH_PORT", "0")
    main()
