"""`flo agent token create|join|serve|list`: hosts joining as node agents. Registered
on the main app by `register(app)` from `cli/main.py`.

`flo agent join URL --token T` runs on the host: it makes the node's key (written
0600 before anything is sent), sends only a CSR with the token, checks what comes
back (the certificate is of the returned CA, for this key and name; the CA is the
one `--ca-sha256` names, when given) and keeps it in the TLS directory, which pins
that CA. `flo agent serve` then runs the agent on TCP with mutual TLS.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from flotilla.api.agents import Joined
from flotilla.cli.output import (
    JsonOpt,
    connected,
    err_console,
    fail,
    fail_api,
    print_json,
    table,
    when,
)
from flotilla.client.api import ApiError, FlotillaClient
from flotilla.client.connection import Connection
from flotilla.config import default_data_dir
from flotilla.core.units import parse_duration
from flotilla.runtime.tls import (
    CA_FILE,
    CERT_FILE,
    CONFIG_FILE,
    DEFAULT_AGENT_PORT,
    KEY_FILE,
    CertificateRefused,
    cert_pem,
    fingerprint,
    key_pem,
    load_cert,
    make_csr,
    new_key,
    verify_issued,
    write_private,
    write_public,
)

agent_app = typer.Typer(help="Join hosts as node agents and serve them.", no_args_is_help=True)
token_app = typer.Typer(help="One-time join tokens (platform admins).", no_args_is_help=True)
agent_app.add_typer(token_app, name="token")

TlsDirOpt = Annotated[
    Path | None,
    typer.Option("--tls-dir", help="where the node's key and certificates live [DATA_DIR/agent]"),
]


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")


def default_tls_dir() -> Path:
    return default_data_dir() / "agent"


@token_app.command("create")
def token_create(
    node: Annotated[
        str | None, typer.Option("--node", help="the only node name it joins (default: any new)")
    ] = None,
    expires_in: Annotated[str, typer.Option("--expires-in", help="lifetime: 10m, 1h, 7d")] = "1h",
    json_out: JsonOpt = False,
) -> None:
    """Create a join token. It is printed this once; it joins one host, once."""
    try:
        seconds = int(parse_duration(expires_in))
    except ValueError as e:
        fail(f"--expires-in: {e}")
    with connected() as api:
        made = api.create_join_token(node, seconds)
    if json_out:
        return print_json(made)
    print(made.token)
    err_console.print(
        f"on the host: flo agent join {api.connection.url} --token {made.token} "
        f"--ca-sha256 {made.ca_sha256}" + (f" --node {node}" if node else ""),
        highlight=False,
        markup=False,
    )


@agent_app.command("list")
def list_agents(json_out: JsonOpt = False) -> None:
    """The joined nodes and their certificates (platform admins)."""
    with connected() as api:
        agents = api.list_agents()
    if json_out:
        return print_json(agents)
    table(
        None,
        ["NODE", "SERIAL", "EXPIRES"],
        [(a.node, a.serial, when(a.not_after)) for a in agents],
    )


class Joiner(Protocol):
    """What `join_host` needs of a client (`FlotillaClient`; a fake in tests)."""

    connection: Connection

    def join_agent(self, token: str, node: str, csr: str, listen: str | None = None) -> Joined: ...


def join_host(
    api: Joiner,
    token: str,
    node: str,
    tls_dir: Path,
    ca_sha256: str | None,
    advertise: str | None = None,
) -> dict[str, Any]:
    """Join this host as `node`: the key stays here, only its CSR is sent. Raises
    CertificateRefused if what the server returns is not what was asked for."""
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(tls_dir, 0o700)
    key = new_key()
    write_private(tls_dir / f".{KEY_FILE}.joining", key_pem(key))
    answer = api.join_agent(token, node, make_csr(key, node).decode(), advertise)
    cert, ca = load_cert(answer.certificate), load_cert(answer.ca_certificate)
    if ca_sha256 is not None and fingerprint(ca).lower() != ca_sha256.replace(":", "").lower():
        raise CertificateRefused(f"the server's CA is {fingerprint(ca)}, not the expected one")
    verify_issued(cert, ca, node, datetime.now(UTC))
    if cert.public_key() != key.public_key():
        raise CertificateRefused("the certificate is not for this host's key")
    os.replace(tls_dir / f".{KEY_FILE}.joining", tls_dir / KEY_FILE)
    write_public(tls_dir / CERT_FILE, cert_pem(cert))
    write_public(tls_dir / CA_FILE, cert_pem(ca))
    config = {
        "node": node,
        "control_plane": api.connection.url,
        "ca_sha256": fingerprint(ca),
        "serial": answer.serial,
        "expires_at": answer.expires_at,
    }
    write_public(tls_dir / CONFIG_FILE, json.dumps(config, indent=2).encode() + b"\n")
    return config


@agent_app.command("join")
def join(
    url: Annotated[str, typer.Argument(help="the control plane, e.g. https://flotilla:8765")],
    token: Annotated[str, typer.Option("--token", help="from `flo agent token create`")],
    node: Annotated[
        str | None, typer.Option("--node", help="this node's name [the host name]")
    ] = None,
    ca_sha256: Annotated[
        str | None,
        typer.Option("--ca-sha256", help="the CA fingerprint token create printed: refuse others"),
    ] = None,
    tls_dir: TlsDirOpt = None,
    advertise: Annotated[
        str | None,
        typer.Option(
            "--advertise",
            help=f"HOST:PORT the control plane reaches it at [this host:{DEFAULT_AGENT_PORT}]",
        ),
    ] = None,
) -> None:
    """Join this host: get its certificate, pin the control plane's CA, register
    the node (it becomes ready when `flo agent serve` answers)."""
    name = node or socket.gethostname().split(".")[0].lower()
    where = tls_dir or default_tls_dir()
    try:
        with FlotillaClient(Connection(url=url.rstrip("/"), token=None, source="join")) as api:
            config = join_host(api, token, name, where, ca_sha256, advertise)
    except ApiError as e:
        fail_api(e)
    except CertificateRefused as e:
        fail(f"refused the server's answer: {e}", "check the URL and --ca-sha256")
    print(f"joined as {config['node']}; TLS files in {where}; run `flo agent serve`")


@agent_app.command("serve")
def serve(
    listen: Annotated[
        str, typer.Option("--listen", help="ADDR:PORT")
    ] = f"0.0.0.0:{DEFAULT_AGENT_PORT}",
    tls_dir: TlsDirOpt = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="tasks' directories go in DATA_DIR/runs [TLS_DIR/..]"),
    ] = None,
    gpus: Annotated[
        str | None, typer.Option("--gpus", help="declared GPUs when NVML finds none: H100:8")
    ] = None,
    ssh_listen: Annotated[
        str | None,
        typer.Option(
            "--ssh-listen", help="`flo ssh` into this host's tasks [the --listen address, port + 1]"
        ),
    ] = None,
) -> None:
    """Run the node agent on TCP with mutual TLS, in the foreground; SSH sessions
    into its tasks, for the control plane's gateway only, on the port after it."""
    from flotilla.runtime import agent

    argv = ["--listen", listen, "--tls-dir", str(tls_dir or default_tls_dir())]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    if gpus is not None:
        argv += ["--gpus", gpus]
    if ssh_listen is not None:
        argv += ["--ssh-listen", ssh_listen]
    agent.main(argv)
