"""`flo lb list|describe|delete|serve|policy` and `flo deployments`, `flo deployment
describe|delete|logs|scale|stop|start|restart NAME`: the serving side of Flotilla.
Both kinds are created and changed with `flo apply` like any recipe (scale, stop and
start re-apply the deployment with another replica count: there is no other route);
`flo lb serve` runs one load balancer as its own process, without a server.
Registered on the main app by `register(app)` from `cli/main.py`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from flotilla.api.deployments import Deployment
from flotilla.api.load_balancers import Backend, LoadBalancer
from flotilla.cli.output import (
    JsonOpt,
    WideOpt,
    connected,
    fail,
    fail_problems,
    print_json,
    table,
    when,
)
from flotilla.client import FlotillaClient

lb_app = typer.Typer(
    help="Load balancers: list, describe or delete them, or serve one standalone.",
    no_args_is_help=True,
)
deployment_app = typer.Typer(
    help="One deployment: describe, logs, scale, stop, start, restart or delete it.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="deployment name (see `flo deployments`)")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="don't ask", metavar="")]
OwnerOpt = Annotated[
    str | None, typer.Option("--owner", help="the owner, when several share the name")
]
PROBES_SHOWN = 5  # the last few health probes of each backend in `describe`


def register(app: typer.Typer) -> None:
    app.add_typer(lb_app, name="lb")
    app.command("deployments")(deployments_command)
    app.add_typer(deployment_app, name="deployment")


# load balancers


@lb_app.command("list")
def lb_list(json: JsonOpt = False) -> None:
    """List load balancers: status, and per listener its backends and how many are online."""
    with connected() as api:
        items = api.list_load_balancers()
    if json:
        return print_json(items)
    rows = [(lb.name, lb.owner, lb.status, listener_summary(lb), lb.error or "") for lb in items]
    table(None, ["name", "owner", "status", "listeners", "error"], rows)


@lb_app.command("describe")
def lb_describe(
    name: Annotated[str, typer.Argument(help="load balancer name (see `flo lb list`)")],
    owner: OwnerOpt = None,
    json: JsonOpt = False,
) -> None:
    """One load balancer's listeners, backends and recent health probes.

    Per listener: address, algorithm, allow-list and connection counts; per backend:
    state, connections, bytes, failed connects, health checks and the last probes."""
    with connected() as api:
        lb = api.get_load_balancer(name, owner)
    if json:
        return print_json(lb)
    print(
        f"load balancer {lb.name} (owner {lb.owner}): {lb.status}"
        + (f" ({lb.error})" if lb.error else "")
    )
    # The allow-lists are the recipe's (free-form spec); the data plane reports the rest.
    allow = {int(ls["port"]): ls.get("allow") or [] for ls in lb.spec.get("listeners", [])}
    for listener in lb.listeners:
        cidrs = ", ".join(allow.get(listener.port, [])) or "everyone"
        print(
            f"\nlistener {listener.host}:{listener.port}"
            + (" (draining)" if listener.draining else "")
            + f": {listener.algorithm}, allow {cidrs}; accepted {listener.accepted},"
            f" refused {listener.refused}, no backend {listener.no_backend},"
            f" active {listener.active_connections}"
        )
        print_backends(listener.backends)


@lb_app.command("delete")
def lb_delete(
    name: Annotated[str, typer.Argument(help="load balancer name (see `flo lb list`)")],
    owner: OwnerOpt = None,
    yes: YesOpt = False,
) -> None:
    """Delete a load balancer: it stops accepting, open connections drain first."""
    if not yes and sys.stdin.isatty() and not typer.confirm(f"delete load balancer {name}?"):
        raise typer.Exit(1)
    with connected() as api:
        api.delete_load_balancer(name, owner)
    print(f"deleted load balancer {name}; open connections drain before its listeners close")


@lb_app.command("policy")
def lb_policy(
    set_file: Annotated[
        Path | None, typer.Option("--set", help="replace the policy with this YAML/JSON file")
    ] = None,
    allow_backend: Annotated[
        list[str] | None,
        typer.Option("--allow-backend", help="add a CIDR to allowed_backend_cidrs (repeatable)"),
    ] = None,
    allow_listen: Annotated[
        list[str] | None,
        typer.Option("--allow-listen", help="add a CIDR to allowed_listen_cidrs (repeatable)"),
    ] = None,
    wildcard_listen: Annotated[
        bool | None,
        typer.Option(
            "--wildcard-listen/--no-wildcard-listen",
            help="let non-admins listen on 0.0.0.0 and ::",
            metavar="",
        ),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Show the network policy of non-admins' load balancers, or change it (admins).

    By default their backends may not be loopback, link-local (cloud metadata),
    unspecified, multicast or this server's own addresses, and they listen only on
    the server's address or loopback. Ports the server itself listens on are never
    allowed."""
    import yaml

    with connected() as api:
        current = api.load_balancer_policy()
        # The body sent is a mapping, not the model: the server names a bad CIDR.
        body: dict[str, Any] = current.model_dump(mode="json")
        if set_file is not None:
            try:
                body = yaml.safe_load(set_file.read_text())
            except (OSError, yaml.YAMLError) as e:
                fail(f"cannot read {set_file}: {e}")
            if not isinstance(body, dict):
                fail(f"{set_file}: expected a mapping with allowed_backend_cidrs and friends")
        changed = set_file is not None
        for field, added in (
            ("allowed_backend_cidrs", allow_backend),
            ("allowed_listen_cidrs", allow_listen),
        ):
            if added:
                body[field] = [*body.get(field, []), *added]
                changed = True
        if wildcard_listen is not None:
            body["allow_wildcard_listen"] = wildcard_listen
            changed = True
        policy = api.set_load_balancer_policy(body) if changed else current
    if json:
        return print_json(policy.model_dump(mode="json"))
    for field, value in policy.model_dump(mode="json").items():
        shown = ", ".join(value) if isinstance(value, list) else str(value).lower()
        print(f"{field}: {shown or '(none)'}")


@lb_app.command("serve")
def lb_serve(
    config: Annotated[Path, typer.Argument(help="YAML or JSON load balancer config")],
    stats_port: Annotated[
        int | None, typer.Option(help="serve GET /metrics and GET /stats on this port")
    ] = None,
    stats_host: Annotated[str, typer.Option(help="address of the stats port")] = "127.0.0.1",
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ...")] = "INFO",
    workers: Annotated[
        int, typer.Option(min=1, help="processes serving the same ports (one per core)")
    ] = 1,
) -> None:
    """Run one load balancer from a config file in the foreground, without a server.

    The file is the data plane's own config: `name`, and `listeners` with `port`,
    `host`, `backends` as {address, port}, `algorithm`, `allow`, `health_check`.
    SIGHUP re-reads it; SIGTERM or Ctrl-C drains connections and exits."""
    # Imported here: the data plane (uvloop, prometheus) is not needed by other commands.
    from flotilla.lb.config import InvalidLoadBalancerConfig, read_config
    from flotilla.lb.serve import run_forever

    try:
        parsed = read_config(config)  # fail before binding anything, in one red line each
    except OSError as e:
        fail(f"cannot read {config}: {e.strerror or e}")
    except InvalidLoadBalancerConfig as e:
        fail_problems(str(config), e.problems)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    ports = ", ".join(f"{ls.host}:{ls.port}" for ls in parsed.listeners) or "no listeners"
    print(f"serving load balancer {parsed.name} on {ports}", flush=True)
    try:
        run_forever(config, stats_host=stats_host, stats_port=stats_port, workers=workers)
    except OSError as e:
        fail(f"cannot listen: {e.strerror or e}", "is another process using the port?")


# deployments


def deployments_command(json: JsonOpt = False, wide: WideOpt = False) -> None:
    """List deployments: replicas ready of desired, version and HTTP endpoint."""
    with connected() as api:
        items = api.list_deployments()
    if json:
        return print_json(items)
    rows = [
        (
            d.name,
            d.owner,
            f"{ready_count(d)}/{_or_dash(d.desired_replicas)}",
            d.version,
            d.endpoints.http,
        )
        for d in items
    ]
    table(None, ["name", "owner", "ready", "version", "endpoint"], rows, wide)


@deployment_app.command("describe")
def deployment_describe(
    name: Annotated[str, typer.Argument(help="deployment name (see `flo deployments`)")],
    owner: OwnerOpt = None,
    json: JsonOpt = False,
) -> None:
    """A deployment's replicas, its load balancer's backends and its endpoints."""
    with connected() as api:
        d = api.get_deployment(name, owner)
    if json:
        return print_json(d)
    print(
        f"deployment {d.name} (owner {d.owner}), version {d.version}:"
        f" {ready_count(d)}/{_or_dash(d.desired_replicas)} replicas ready"
    )
    replicas = [
        (
            r.number,
            r.status.value,
            r.version,
            address(r.address, r.ports),
            "stopping" if r.stopping else ("yes" if r.ready else "no"),
        )
        for r in d.replicas
    ]
    table("replicas", ["run", "status", "version", "address", "ready"], replicas)
    lb = d.load_balancer
    print(f"load balancer: {lb.status}" + (f" ({lb.error})" if lb.error else ""))
    for listener in lb.listeners:
        print(f"listener {listener.host}:{listener.port} ({listener.algorithm})")
        print_backends(listener.backends)
    print("endpoints:")
    print(f"  http  {d.endpoints.http}")
    for container_port, where in sorted(d.endpoints.tcp.items()):
        print(f"  tcp   {where} (container port {container_port})")
    if d.spec.get("start_ssh"):
        print(f"  ssh   flo ssh {d.owner}/{d.name}  (or NAME.RUN for one replica)")


@deployment_app.command("delete")
def deployment_delete(
    name: Annotated[str, typer.Argument(help="deployment name (see `flo deployments`)")],
    owner: OwnerOpt = None,
    yes: YesOpt = False,
) -> None:
    """Delete a deployment: its replicas stop and its load balancer drains."""
    if not yes and sys.stdin.isatty() and not typer.confirm(f"delete deployment {name}?"):
        raise typer.Exit(1)
    with connected() as api:
        api.delete_deployment(name, owner)
    print(f"deleted deployment {name}; its replicas are stopping")


@deployment_app.command("logs")
def deployment_logs(
    name: NameArg,
    replica: Annotated[
        int | None, typer.Option("--replica", "-r", help="replica run number (default: oldest)")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="stream until it ends", metavar="")
    ] = False,
    setup: Annotated[
        bool, typer.Option("--setup", help="the start-script output instead", metavar="")
    ] = False,
    owner: OwnerOpt = None,
) -> None:
    """Print one replica's logs (the oldest active one unless --replica is given)."""
    with connected() as api:
        replicas = sorted(api.get_deployment(name, owner).replicas, key=lambda r: r.number)
        chosen = [r for r in replicas if replica is None or r.number == replica]
        if not chosen:
            numbers = ", ".join(str(r.number) for r in replicas) or "none"
            fail(
                f"deployment {name} has no replica {replica or ''}".strip(), f"replicas: {numbers}"
            )
        run_id = chosen[0].run_id
        if follow and not setup:
            for chunk in api.follow_logs(run_id):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        else:
            sys.stdout.write(api.logs(run_id, 0, "setup" if setup else "main"))


@deployment_app.command("scale")
def deployment_scale(
    name: NameArg,
    replicas: Annotated[int, typer.Argument(min=0, help="how many replicas to run")],
    owner: OwnerOpt = None,
) -> None:
    """Run this many replicas (re-applies the deployment with `replicas: N`)."""
    with connected() as api:
        version = _rescale(api, name, owner, replicas)
    print(f"scaled deployment {name} to {replicas} replica(s) (version {version})")


@deployment_app.command("stop")
def deployment_stop(name: NameArg, owner: OwnerOpt = None) -> None:
    """Stop every replica; it runs none until `flo deployment start`."""
    with connected() as api:
        api.deployment_action(name, "stop", owner)
    print(f"stopping deployment {name}: it runs no replica until started")


@deployment_app.command("start")
def deployment_start(name: NameArg, owner: OwnerOpt = None) -> None:
    """Run a stopped deployment's replicas again (a running one is left as it is)."""
    with connected() as api:
        api.deployment_action(name, "start", owner)
    print(f"started deployment {name}")


@deployment_app.command("restart")
def deployment_restart(name: NameArg, owner: OwnerOpt = None) -> None:
    """Replace every replica with a new one (and start it if it was stopped)."""
    with connected() as api:
        api.deployment_action(name, "restart", owner)
    print(f"restarting deployment {name}: each replica is replaced")


def _rescale(api: FlotillaClient, name: str, owner: str | None, count: int) -> int:
    """Re-apply the deployment with `count` replicas; the new version."""
    recipe = api.get_recipe("deployment", name, owner)
    spec = {**recipe.spec}
    spec["replicas" if spec.get("replicas") is not None else "scale"] = count
    document = {"schema_version": recipe.schema_version, "type": "deployment", "spec": spec}
    # An applied deployment is read back with its state, and in it its version.
    return int((api.apply(document).state or {})["version"])


# shared pieces


def print_backends(backends: Sequence[Backend]) -> None:
    """A listener's backends, then the last few health probes of each."""
    rows = [
        (
            b.key,
            b.state,
            f"{b.active_connections}/{b.total_connections}",
            size(b.bytes_in),
            size(b.bytes_out),
            b.failed_connects,
            f"{b.health_checks_failed}/{b.health_checks}",
        )
        for b in backends
    ]
    columns = ["backend", "state", "conns", "in", "out", "failed connects", "checks failed"]
    table(None, columns, rows)
    probes = [
        (b.key, at(p.at), "ok" if p.ok else "failed", p.state, p.error or "")
        for b in backends
        for p in b.health_history[-PROBES_SHOWN:]
    ]
    if probes:
        table("recent health probes", ["backend", "time", "probe", "then", "error"], probes)


def listener_summary(lb: LoadBalancer) -> str:
    """`8080→2 backends (1 online)` per listener; from the spec while still starting."""
    if lb.listeners:
        return ", ".join(
            f"{ls.port}→{_backends(len(ls.backends))}"
            f" ({sum(b.state == 'online' for b in ls.backends)} online)"
            for ls in lb.listeners
        )
    return ", ".join(
        f"{ls['port']}→{_backends(len(ls.get('backends') or []))}"
        for ls in lb.spec.get("listeners", [])
    )


def _backends(count: int) -> str:
    return f"{count} backend" + ("" if count == 1 else "s")


def ready_count(deployment: Deployment) -> int:
    return sum(1 for r in deployment.replicas if r.ready and not r.stopping)


def address(host: str | None, ports: dict[str, int] | None) -> str:
    if not host:
        return ""
    listed = ",".join(str(p) for p in (ports or {}).values())
    return f"{host}:{listed}" if listed else host


def at(seconds: float) -> str:
    """A data-plane timestamp (wall-clock seconds) the way `when` shows API times."""
    return when(datetime.fromtimestamp(seconds, UTC).isoformat())


def size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)
