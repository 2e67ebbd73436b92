"""`flo ssh TARGET [COMMAND…]`: a shell (or one command) inside a running task of a
deployment or job that sets `start_ssh: true`, through the server's SSH gateway,
with OpenSSH's own `ssh`. The gateway's host key comes from the API over the
authenticated connection and is pinned in Flotilla's own known_hosts file, so the
first connection is verified too. `--config` prints an ssh_config block for IDEs
(VS Code, PyCharm, Cursor). Registered on the main app by `register(app)`."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from flotilla.cli.output import connected, fail
from flotilla.client.connection import profile_path
from flotilla.core.sshlogin import parse_login


def register(app: typer.Typer) -> None:
    app.command("ssh")(ssh_command)


def ssh_command(
    target: Annotated[
        str,
        typer.Argument(
            help="NAME (a running replica or the newest run), NAME.RUN, NAME.RUN.RANK, "
            "or OWNER/NAME"
        ),
    ],
    command: Annotated[
        list[str] | None, typer.Argument(help="run this instead of a shell (after --)")
    ] = None,
    identity: Annotated[
        Path | None, typer.Option("--identity", "-i", help="private key file for ssh")
    ] = None,
    show: Annotated[
        bool,
        typer.Option("--print", help="print the ssh command instead of running it", metavar=""),
    ] = False,
    config: Annotated[
        bool, typer.Option("--config", help="print an ssh_config Host block for IDEs", metavar="")
    ] = False,
) -> None:
    """Open a shell in a running deployment replica or job task (needs `start_ssh: true`
    in its recipe and your SSH key on your account: `flo user add-key`)."""
    try:
        parse_login(target)  # also keeps a target from reaching ssh as an option
    except ValueError as e:
        fail(str(e))
    with connected() as api:
        info = api.ssh_info()
        url = api.connection.url
    # An enabled gateway always says its port and host key (`SshGateway`).
    if not info.enabled or info.port is None or info.host_key is None:
        fail("this server's SSH gateway is off", "start it with FLOTILLA_SSH_PORT unset or a port")
    host = urlsplit(url).hostname or "127.0.0.1"
    known_hosts = pin_host_key(host, info.port, info.host_key)
    options = ssh_options(info.port, known_hosts, identity)
    if config:
        print(config_block(target, host, options))
        return
    argv = ["ssh", *_flags(options), f"{target}@{host}"]
    if command:
        argv += ["--", *command]
    if show:
        print(shlex.join(argv))
        return
    if shutil.which("ssh") is None:
        fail("no `ssh` program here", "install OpenSSH's client: apt-get install openssh-client")
    os.execvp("ssh", argv)  # noqa: S606 - argv, no shell: the target is never interpreted


def pin_host_key(host: str, port: int, host_key: str) -> Path:
    """Record the gateway's key for [host]:port in Flotilla's known_hosts file,
    replacing an older key for the same address (the API, which the user already
    trusts with their token, vouches for it)."""
    path = profile_path().with_name("known_hosts")
    address = host if port == 22 else f"[{host}]:{port}"
    key = " ".join(host_key.split()[:2])
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if line.split(" ", 1)[0] != address]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*kept, f"{address} {key}"]) + "\n")
    return path


def ssh_options(port: int, known_hosts: Path, identity: Path | None) -> dict[str, str]:
    options = {
        "Port": str(port),
        "UserKnownHostsFile": _quoted(str(known_hosts)),
        "StrictHostKeyChecking": "yes",
    }
    if identity is not None:
        options["IdentityFile"] = _quoted(str(identity.expanduser()))
    return options


def _quoted(value: str) -> str:
    """ssh_config splits values at spaces unless they are in double quotes."""
    return f'"{value}"' if any(c.isspace() for c in value) else value


def config_block(target: str, host: str, options: dict[str, str]) -> str:
    alias = "flo-" + target.replace("/", "-")
    lines = [f"Host {alias}", f"  HostName {host}", f"  User {target}"]
    lines += [f"  {name} {value}" for name, value in options.items()]
    return "\n".join(lines)


def _flags(options: dict[str, str]) -> list[str]:
    flags: list[str] = []
    for name, value in options.items():
        flags += ["-o", f"{name}={value}"]
    return flags
