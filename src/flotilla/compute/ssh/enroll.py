"""Enrolling one host of an SSH fleet, over one SSH connection (asyncssh):

1. log in with the fleet's key (through `proxy_jump` when set), checking the
   host key against the pinned one or, without one, recording the key seen;
2. check the host: its Python (3.11 or newer), CPUs, cgroups, a container runtime,
   NVIDIA GPUs;
3. make sure the agent is installed with the control plane's version: when the
   host's `python -c 'import flotilla'` reports another version or none,
   `python -m pip install flotilla==VERSION` (the host needs a package index);
4. put the node's key (0600), certificate and the CA in `DATA_DIR/agent` (0700);
5. start the agent on its TLS port (`--daemonize`, so it outlives the session;
   a second start while one runs exits at once: enrolling again is harmless).

Every value that reaches the remote shell is quoted with `shlex.quote`; the ones
from the recipe are also checked by its schema. The node's private key is made on
the control plane and travels only inside the SSH connection.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from flotilla.errors import TemporaryError

CONNECT_TIMEOUT = 15.0
KEEPALIVE = 15.0  # a host that stops answering mid-enrollment is noticed
COMMAND_TIMEOUT = 60.0  # a hung `nvidia-smi` must not hold the host's enrollment forever
PIP_TIMEOUT = 600.0
_CHECK = r"""
printf '{"python": "%s",' "$($PY -c 'import sys; print(*sys.version_info[:2], sep=".")' 2>&-)"
printf '"flotilla": "%s",' "$($PY -c 'import flotilla; print(flotilla.__version__)' 2>/dev/null)"
printf '"cpus": "%s",' "$(nproc 2>/dev/null)"
printf '"cgroups": "%s",' "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)"
printf '"podman": "%s",' "$(command -v podman 2>/dev/null)"
printf '"docker": "%s",' "$(command -v docker 2>/dev/null)"
printf '"gpus": "%s",' "$(nvidia-smi -L 2>/dev/null | wc -l)"
printf '"uid": "%s"}\n' "$(id -u)"
"""


class EnrollFailed(TemporaryError):
    """The host could not be enrolled now (unreachable, refused, a check failed)."""


@dataclass(frozen=True)
class SshTarget:
    address: str
    port: int
    user: str
    private_key: str = field(repr=False)  # PEM or OpenSSH private key text
    proxy_jump: str | None = None
    host_key: str | None = None  # "ssh-ed25519 AAAA…": refuse any other


@dataclass(frozen=True)
class AgentInstall:
    node: str
    data_dir: str
    python: str
    port: int
    version: str
    key_pem: bytes = field(repr=False)
    cert_pem: bytes
    ca_pem: bytes
    gpus: str | None = None


@dataclass
class Enrolled:
    host_key: str  # what the host showed, OpenSSH format
    checks: dict[str, Any] = field(default_factory=dict)
    installed: bool = False  # pip installed (or upgraded) the agent


async def enroll(target: SshTarget, install: AgentInstall) -> Enrolled:
    try:
        conn, tunnel = await _connect(target)
    except (OSError, asyncssh.Error, TimeoutError, ValueError) as e:  # ValueError: a bad key
        raise EnrollFailed(f"ssh {target.user}@{target.address}:{target.port}: {_why(e)}") from e
    try:
        host_key = conn.get_server_host_key()
        seen = host_key.export_public_key("openssh").decode().strip() if host_key else ""
        checks = await _check(conn, install)
        installed = False
        if checks.get("flotilla") != install.version:
            await _pip_install(conn, install)
            checks = await _check(conn, install)
            installed = True
        if checks.get("flotilla") != install.version:
            raise EnrollFailed(
                f"flotilla {install.version} is not importable by {install.python} "
                f"after pip install (found {checks.get('flotilla') or 'none'})"
            )
        await _put_tls(conn, install)
        await _start_agent(conn, install)
        return Enrolled(seen, checks, installed)
    except (OSError, asyncssh.Error, TimeoutError) as e:
        raise EnrollFailed(f"ssh {target.user}@{target.address}:{target.port}: {_why(e)}") from e
    finally:
        close(conn, tunnel)


def close(conn: asyncssh.SSHClientConnection, tunnel: asyncssh.SSHClientConnection | None) -> None:
    """Close a connection `_connect` made, and its jump host's: asyncssh closes only
    the tunnels it opened itself."""
    conn.close()
    if tunnel is not None:
        tunnel.close()


async def _connect(
    target: SshTarget,
) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientConnection | None]:
    key = asyncssh.import_private_key(target.private_key)
    known: Any = None  # first contact: accept, and record what was seen
    if target.host_key:
        known = ([asyncssh.import_public_key(target.host_key)], [], [])
    tunnel = None
    if target.proxy_jump:
        user, _, rest = target.proxy_jump.rpartition("@")
        host, _, port = rest.rpartition(":") if rest.count(":") == 1 else (rest, "", "")
        tunnel = await asyncssh.connect(
            host or rest,
            port=int(port or 22),
            username=user or target.user,
            client_keys=[key],
            known_hosts=None,
            connect_timeout=CONNECT_TIMEOUT,
            keepalive_interval=KEEPALIVE,
        )
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                target.address,
                port=target.port,
                username=target.user,
                client_keys=[key],
                known_hosts=known,
                tunnel=tunnel,
                connect_timeout=CONNECT_TIMEOUT,
                keepalive_interval=KEEPALIVE,
            ),
            CONNECT_TIMEOUT + 5,
        )
    except BaseException:
        if tunnel is not None:
            tunnel.close()
        raise
    return conn, tunnel


async def _check(conn: asyncssh.SSHClientConnection, install: AgentInstall) -> dict[str, Any]:
    result = await conn.run(
        f"PY={shlex.quote(install.python)}\n{_CHECK}", check=False, timeout=COMMAND_TIMEOUT
    )
    try:
        checks: dict[str, Any] = json.loads(str(result.stdout or "").strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise EnrollFailed(f"the host check printed nothing usable: {result.stderr!s:.200}") from e
    version = str(checks.get("python") or "")
    if not version:
        raise EnrollFailed(f"{install.python} does not run on the host")
    major, _, minor = version.partition(".")
    if (int(major), int(minor or 0)) < (3, 11):
        raise EnrollFailed(f"{install.python} is Python {version}; the agent needs 3.11+")
    return checks


async def _pip_install(conn: asyncssh.SSHClientConnection, install: AgentInstall) -> None:
    command = (
        f"{shlex.quote(install.python)} -m pip install --quiet "
        f"{shlex.quote('flotilla==' + install.version)}"
    )
    result = await conn.run(command, check=False, timeout=PIP_TIMEOUT)
    if result.exit_status != 0:
        tail = str(result.stderr or result.stdout or "").strip()[-300:]
        raise EnrollFailed(f"pip install flotilla=={install.version} failed: {tail}")


async def _put_tls(conn: asyncssh.SSHClientConnection, install: AgentInstall) -> None:
    tls_dir = f"{install.data_dir}/agent"
    made = await conn.run(
        f"umask 077 && mkdir -p {shlex.quote(tls_dir)} && chmod 700 {shlex.quote(tls_dir)}",
        check=False,
        timeout=COMMAND_TIMEOUT,
    )
    if made.exit_status != 0:
        raise EnrollFailed(f"cannot make {tls_dir}: {str(made.stderr).strip()[:200]}")
    # Through the shell, not SFTP: a host need not have the sftp subsystem.
    for name, data, mode in (
        ("node.key", install.key_pem, "600"),
        ("node.crt", install.cert_pem, "644"),
        ("ca.crt", install.ca_pem, "644"),
    ):
        path = shlex.quote(f"{tls_dir}/{name}")
        wrote = await conn.run(
            f"umask 077 && cat > {path}.new && chmod {mode} {path}.new && mv {path}.new {path}",
            input=data.decode(),
            check=False,
            timeout=COMMAND_TIMEOUT,
        )
        if wrote.exit_status != 0:
            raise EnrollFailed(f"cannot write {tls_dir}/{name}: {str(wrote.stderr).strip()[:200]}")


async def _start_agent(conn: asyncssh.SSHClientConnection, install: AgentInstall) -> None:
    data = shlex.quote(install.data_dir)
    argv = [
        install.python,
        "-m",
        "flotilla.runtime.agent",
        "--daemonize",
        "--listen",
        f"0.0.0.0:{install.port}",
        "--tls-dir",
        f"{install.data_dir}/agent",
        "--data-dir",
        install.data_dir,
    ]
    if install.gpus:
        argv += ["--gpus", install.gpus]
    command = " ".join(shlex.quote(a) for a in argv)
    result = await conn.run(
        f"cd / && setsid {command} >> {data}/agent.log 2>&1 < /dev/null",
        check=False,
        timeout=COMMAND_TIMEOUT,
    )
    if result.exit_status != 0:
        raise EnrollFailed(f"the agent did not start (exit {result.exit_status}): see agent.log")


def _why(error: BaseException) -> str:
    if isinstance(error, asyncssh.HostKeyNotVerifiable):
        return "its host key is not the pinned one (host_key)"
    if isinstance(error, asyncssh.PermissionDenied):
        return "the key was refused"
    return str(error) or type(error).__name__
