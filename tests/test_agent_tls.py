"""Node agents over TCP with mutual TLS (issue 12, item 1): the control plane's CA
and what it issues, one-time join tokens, `flo agent join` keeping the key on the
host, and a real agent process serving only the control plane's certificate, on
loopback and on a separate host (network namespace) that joined over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flotilla.api.agents import Joined
from flotilla.cli.agents import join_host
from flotilla.client.connection import Connection
from flotilla.clock import FakeClock
from flotilla.errors import InvalidRecipe, TemporaryError
from flotilla.runtime.agent_client import AgentClient, TlsTarget
from flotilla.runtime.hosts import Host, HostNetwork
from flotilla.runtime.taskspec import TaskSpec, TaskState
from flotilla.runtime.tls import (
    CA_FILE,
    CERT_FILE,
    CONTROL_PLANE_NAME,
    KEY_FILE,
    CertificateRefused,
    TlsFiles,
    cert_pem,
    common_name,
    fingerprint,
    key_pem,
    load_cert,
    load_key,
    make_csr,
    new_key,
    verify_issued,
    write_private,
    write_public,
)
from flotilla.server.app import create_app
from flotilla.server.pki import (
    CertificateAuthority,
    create_ca,
    issue_control_plane_cert,
    issue_node_cert,
    needs_renewal,
)
from flotilla.server.routers.agents import agent_endpoint
from flotilla.server.services.fleets.agents import control_plane_tls
from tests.conftest import Api, make_settings, open_api
from tests.factories import AUTH, add_user, free_port
from tests.hosts_fixture import host_network_fixture  # noqa: F401

NOW = datetime.now(UTC)  # the TLS stack checks validity against the real clock
PY = sys.executable


# -- the CA and what it issues -------------------------------------------------------


def _node_cert(ca: CertificateAuthority, node: str, csr_name: str | None = None) -> Any:
    key = new_key()
    return issue_node_cert(ca, make_csr(key, csr_name or node).decode(), node, NOW)


def test_node_certificates_verify_only_against_their_ca_name_and_time() -> None:
    ca, other = create_ca(NOW), create_ca(NOW)
    cert = _node_cert(ca, "gpu-1")
    verify_issued(cert, ca.cert, "gpu-1", NOW)
    with pytest.raises(CertificateRefused, match="not issued by this CA"):
        verify_issued(cert, other.cert, "gpu-1", NOW)
    with pytest.raises(CertificateRefused, match="not valid now"):
        verify_issued(cert, ca.cert, "gpu-1", NOW + timedelta(days=31))
    with pytest.raises(CertificateRefused, match="not 'gpu-2'"):
        verify_issued(cert, ca.cert, "gpu-2", NOW)
    assert not needs_renewal(cert, NOW + timedelta(days=19))
    assert needs_renewal(cert, NOW + timedelta(days=21))
    assert cert.serial_number != _node_cert(ca, "gpu-1").serial_number


def test_the_name_is_the_control_planes_choice_never_the_csrs() -> None:
    ca = create_ca(NOW)
    # A CSR asking for the control plane's name gets the node's.
    cert = _node_cert(ca, "gpu-1", csr_name=CONTROL_PLANE_NAME)
    assert common_name(cert) == "gpu-1"
    for bad in (CONTROL_PLANE_NAME, "Upper", "a_b", "-x", ""):
        with pytest.raises(InvalidRecipe):
            _node_cert(ca, bad, csr_name="x")
    with pytest.raises(InvalidRecipe, match="csr"):
        issue_node_cert(ca, "not a csr", "gpu-1", NOW)


# -- an agent process on loopback ------------------------------------------------------


def node_tls_dir(ca: CertificateAuthority, where: Path, node: str) -> Path:
    """What `flo agent join` leaves on a host, made straight from the CA."""
    key = new_key()
    write_private(where / KEY_FILE, key_pem(key))
    write_public(
        where / CERT_FILE, cert_pem(issue_node_cert(ca, make_csr(key, node).decode(), node, NOW))
    )
    write_public(where / CA_FILE, cert_pem(ca.cert))
    return where


def other_client_cert(ca: CertificateAuthority, key: ec.EllipticCurvePrivateKey) -> Any:
    """A client certificate of the CA for someone else than the control plane (as a
    later per-user certificate might be): the CA alone must not let it in."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=5))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def client_files(
    ca: CertificateAuthority, where: Path, *, as_node: str | None = None, other: bool = False
) -> TlsFiles:
    """A client certificate of `ca`: the control plane's, a node's (`as_node`) or
    another client's (`other`)."""
    key = new_key()
    files = TlsFiles(where / "client.key", where / "client.crt", where / "ca.crt")
    write_private(files.key, key_pem(key))
    if other:
        cert = other_client_cert(ca, key)
    elif as_node is None:
        cert = issue_control_plane_cert(ca, key.public_key(), NOW)
    else:
        cert = issue_node_cert(ca, make_csr(key, as_node).decode(), as_node, NOW)
    write_public(files.cert, cert_pem(cert))
    write_public(files.ca, cert_pem(ca.cert))
    return files


@dataclass
class Events:
    states: list[TaskState] = field(default_factory=list)
    reconnects: int = 0
    reconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_event(self, state: TaskState) -> None:
        self.states.append(state)

    async def on_reconnect(self) -> None:
        self.reconnects += 1
        self.reconnected.set()

    async def wait_exit(self, task_id: str, timeout: float = 20) -> TaskState:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for state in self.states:
                if state.task_id == task_id and state.phase == "exited":
                    return state
            await asyncio.sleep(0.02)
        raise AssertionError(f"no exit event for {task_id}: {self.states}")


def start_agent(tls_dir: Path, port: int, host: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    log = open(tls_dir / "agent.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "flotilla.runtime.agent",
            "--listen",
            f"{host}:{port}",
            "--tls-dir",
            str(tls_dir),
            "--ssh-listen",  # not port + 1: that may be another test's
            f"{host}:{free_port()}",
        ],
        stdout=log,
        stderr=log,
    )
    log.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tls_dir / "agent.log").read_text()
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return proc
        time.sleep(0.02)
    raise AssertionError("the agent did not listen")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class LoopbackAgent:
    ca: CertificateAuthority
    port: int
    tls_dir: Path
    proc: subprocess.Popen[bytes]
    scratch: Path

    def target(self, files: TlsFiles, node: str = "n1") -> TlsTarget:
        return TlsTarget.of(f"tls://127.0.0.1:{self.port}", node, files)


@pytest.fixture
def loopback_agent(tmp_path: Path) -> Iterator[LoopbackAgent]:
    ca = create_ca(NOW)
    tls_dir = node_tls_dir(ca, tmp_path / "node", "n1")
    port = free_port()
    proc = start_agent(tls_dir, port)
    agent = LoopbackAgent(ca, port, tls_dir, proc, tmp_path)
    try:
        yield agent
    finally:
        stop(agent.proc)  # a test may have restarted it


def spec(scratch: Path, task_id: str, command: str) -> TaskSpec:
    task_dir = scratch / "tasks" / task_id
    return TaskSpec(
        task_id=task_id,
        task_dir=str(task_dir),
        workdir=str(task_dir / "root"),
        env={"PATH": os.environ["PATH"]},
        shell=command,
    )


async def test_tls_agent_launches_a_task_and_pushes_its_events(
    loopback_agent: LoopbackAgent,
) -> None:
    events = Events()
    files = client_files(loopback_agent.ca, loopback_agent.scratch / "cp")
    client = AgentClient.over_tls(loopback_agent.target(files), events.on_event)
    try:
        hello = await client.request("hello")
        assert hello["pid"] == loopback_agent.proc.pid
        await client.launch(spec(loopback_agent.scratch, "t1", "echo over tls; exit 3"))
        exited = await events.wait_exit("t1")
        assert exited.exit_code == 3
        assert next(s.phase for s in events.states if s.task_id == "t1") == "running"
        log = (loopback_agent.scratch / "tasks" / "t1" / "main.log").read_text()
        assert log == "over tls\n"
        [state] = await client.inspect([("t1", str(loopback_agent.scratch / "tasks" / "t1"))])
        assert state.exit_code == 3
    finally:
        await client.close()


async def test_only_the_control_planes_certificate_is_served(loopback_agent: LoopbackAgent) -> None:
    scratch = loopback_agent.scratch
    good = client_files(loopback_agent.ca, scratch / "cp")
    stranger = client_files(create_ca(NOW), scratch / "stranger")
    stranger = TlsFiles(stranger.key, stranger.cert, good.ca)  # trusts the agent, not trusted
    neighbour = client_files(loopback_agent.ca, scratch / "node2", as_node="n2")
    someone = client_files(loopback_agent.ca, scratch / "someone", other=True)
    no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_cert.load_verify_locations(cafile=good.ca)
    targets = [
        TlsTarget("127.0.0.1", loopback_agent.port, "n1", no_cert),
        loopback_agent.target(stranger),
        loopback_agent.target(neighbour),  # another node's certificate, same CA
        loopback_agent.target(someone),  # a client certificate of the CA, not the CN
        loopback_agent.target(good, node="n2"),  # the agent is n1, not the node meant
    ]
    for target in targets:
        refused = AgentClient.over_tls(target, Events().on_event)
        try:
            with pytest.raises(TemporaryError, match="unreachable"):
                await refused.request("hello")
        finally:
            await refused.close()
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", loopback_agent.port)) as raw,
    ):
        raw.sendall(b'{"id": 1, "op": "hello"}\n')  # plain text on the TLS port
        raw.settimeout(5)
        assert b'"ok"' not in raw.recv(4096)
    # The agent served none of them and still serves the control plane.
    client = AgentClient.over_tls(loopback_agent.target(good), Events().on_event)
    try:
        assert (await client.request("hello"))["pid"] == loopback_agent.proc.pid
    finally:
        await client.close()
    assert loopback_agent.proc.poll() is None


async def test_a_lost_connection_is_reopened_and_events_flow_again(
    loopback_agent: LoopbackAgent,
) -> None:
    events = Events()
    files = client_files(loopback_agent.ca, loopback_agent.scratch / "cp")
    client = AgentClient.over_tls(
        loopback_agent.target(files), events.on_event, events.on_reconnect
    )
    try:
        await client.request("hello")
        stop(loopback_agent.proc)  # the agent restarts (tasks would outlive it)
        loopback_agent.proc = start_agent(loopback_agent.tls_dir, loopback_agent.port)
        await asyncio.wait_for(events.reconnected.wait(), 20)
        assert events.reconnects == 1
        # No request since: the pushed event arrives on the reopened connection.
        await client.launch(spec(loopback_agent.scratch, "t2", "exit 0"))
        assert (await events.wait_exit("t2")).exit_code == 0
    finally:
        await client.close()


# -- join tokens and the join --------------------------------------------------------


@pytest.fixture
async def clocked_api(data_dir: Path, database_url: str | None) -> AsyncIterator[Api]:
    async for item in open_api(make_settings(data_dir, database_url), clock=FakeClock()):
        yield item


def csr_for(node: str) -> str:
    return make_csr(new_key(), node).decode()


async def test_a_join_token_is_single_use_and_expires(clocked_api: Api) -> None:
    client, ctx = clocked_api.client, clocked_api.ctx
    member = await add_user(ctx, "member")
    denied = await client.post("/api/agents/join-tokens", json={}, headers=member)
    assert denied.status_code == 403
    made = (await client.post("/api/agents/join-tokens", json={"node": "gpu-1"})).json()
    assert made["token"].startswith("fjt_")
    wrong_name = {"token": made["token"], "node": "gpu-2", "csr": csr_for("gpu-2")}
    refused = await client.post("/api/agents/join", json=wrong_name)
    assert refused.status_code == 422
    body = {"token": made["token"], "node": "gpu-1", "csr": csr_for("gpu-1")}
    joined = await client.post("/api/agents/join", json=body, headers={"Authorization": ""})
    assert joined.status_code == 200, joined.text  # the refusal above spent nothing
    answer = joined.json()
    cert, ca = load_cert(answer["certificate"]), load_cert(answer["ca_certificate"])
    verify_issued(cert, ca, "gpu-1", ctx.clock.now())
    assert fingerprint(ca) == made["ca_sha256"]
    again = await client.post("/api/agents/join", json=body)
    assert again.status_code == 401
    assert "already used" in again.json()["message"]

    # A token for any new name cannot take one that joined; and tokens expire.
    anyone = (await client.post("/api/agents/join-tokens", json={})).json()
    taken = await client.post("/api/agents/join", json={**body, "token": anyone["token"]})
    assert taken.status_code == 409
    short = (await client.post("/api/agents/join-tokens", json={"expires_in_seconds": 60})).json()
    assert isinstance(ctx.clock, FakeClock)
    ctx.clock.advance(61)
    late = {"token": short["token"], "node": "gpu-3", "csr": csr_for("gpu-3")}
    expired = await client.post("/api/agents/join", json=late)
    assert expired.status_code == 401
    assert "expired" in expired.json()["message"]
    listed = (await client.get("/api/agents")).json()["agents"]
    assert [(a["node"], a["serial"]) for a in listed] == [("gpu-1", answer["serial"])]


def test_where_a_joining_agent_listens() -> None:
    assert agent_endpoint(None, "10.0.0.5") == "tls://10.0.0.5:7477"
    assert agent_endpoint("gpu-7.lab:9000", "10.0.0.5") == "tls://gpu-7.lab:9000"
    assert agent_endpoint("[fd00::7]:7477", None) == "tls://[fd00::7]:7477"
    for bad in ("nohost", "h:0", "h:99999", "h:x", "a/b:1", "u@h:1", ":7477"):
        with pytest.raises(InvalidRecipe, match="listen"):
            agent_endpoint(bad, "10.0.0.5")


async def test_a_join_registers_its_node_and_a_bad_listen_spends_nothing(
    clocked_api: Api,
) -> None:
    client = clocked_api.client
    made = (await client.post("/api/agents/join-tokens", json={"node": "gpu-1"})).json()
    body = {"token": made["token"], "node": "gpu-1", "csr": csr_for("gpu-1")}
    bad = await client.post("/api/agents/join", json={**body, "listen": "gpu-1:notaport"})
    assert bad.status_code == 422 and "listen" in bad.text, bad.text
    joined = await client.post("/api/agents/join", json={**body, "listen": "10.9.8.7:7000"})
    assert joined.status_code == 200, joined.text  # the refusal spent nothing
    node = (await client.get("/api/nodes/gpu-1")).json()
    assert node["state"] == "provisioning" and node["provider"] == "agent"
    assert node["address"] == "10.9.8.7" and node["labels"]["agent"] == "tls://10.9.8.7:7000"
    assert "waiting for its agent" in node["reason"]


@dataclass
class FakeServer:
    """Answers a join from a CA, keeping every argument it was sent."""

    ca: CertificateAuthority
    connection: Connection = field(default_factory=lambda: Connection("http://cp", None, "test"))
    sent: list[str] = field(default_factory=list)

    def join_agent(self, token: str, node: str, csr: str, listen: str | None = None) -> Joined:
        self.sent += [token, node, csr, str(listen)]
        cert = issue_node_cert(self.ca, csr, node, NOW)
        return Joined(
            node=node,
            certificate=cert_pem(cert).decode(),
            ca_certificate=cert_pem(self.ca.cert).decode(),
            serial=f"{cert.serial_number:x}",
            expires_at=cert.not_valid_after_utc.isoformat(),
        )


def test_join_keeps_the_key_on_the_host_0600_and_pins_the_ca(tmp_path: Path) -> None:
    server = FakeServer(create_ca(NOW))
    tls_dir = tmp_path / "agent"
    config = join_host(server, "fjt_x", "gpu-1", tls_dir, None)
    key_file = tls_dir / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    assert not any("PRIVATE KEY" in sent for sent in server.sent)  # only a CSR went out
    key = load_key(key_file.read_bytes())
    assert load_cert((tls_dir / CERT_FILE).read_bytes()).public_key() == key.public_key()
    assert load_cert((tls_dir / CA_FILE).read_bytes()) == server.ca.cert
    assert config["node"] == "gpu-1"
    # With the expected CA's fingerprint, another CA is refused and nothing is kept.
    with pytest.raises(CertificateRefused, match="CA"):
        join_host(server, "fjt_y", "gpu-2", tmp_path / "other", "00" * 32)
    assert not (tmp_path / "other" / CERT_FILE).exists()


# -- a separate host joins over HTTP and serves over TLS -------------------------------


@contextlib.asynccontextmanager
async def served_app(data_dir: Path, host: str) -> AsyncIterator[tuple[str, Any]]:
    """The control plane on a real port of `host` (uvicorn in this event loop)."""
    app = create_app(make_settings(data_dir))
    port = free_port()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", loop="asyncio")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://{host}:{port}", app.state.ctx
    finally:
        server.should_exit = True
        await task


async def test_a_host_joins_and_runs_a_task_for_the_control_plane(
    host_network: HostNetwork, data_dir: Path
) -> None:
    h1: Host = host_network.add_host("h1")
    flo = str(Path(PY).parent / "flo")
    tls_dir = "/srv/flotilla/agent"
    async with served_app(data_dir, host_network.address) as (url, ctx):
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as api:
            made = (await api.post("/api/agents/join-tokens", json={"node": "h1"})).json()
        joined = await asyncio.to_thread(
            h1.run,
            [
                flo,
                "agent",
                "join",
                url,
                "--token",
                made["token"],
                "--ca-sha256",
                made["ca_sha256"],
                "--tls-dir",
                tls_dir,
            ],
        )
        assert "joined as h1" in joined.stdout
        mode = h1.run(["stat", "-c", "%a", f"{tls_dir}/{KEY_FILE}"]).stdout.strip()
        assert mode == "600"
        agent = h1.popen([flo, "agent", "serve", "--listen", "0.0.0.0:7477", "--tls-dir", tls_dir])
        async with ctx.transaction() as session:
            files = await control_plane_tls(
                session, ctx.secret_box, data_dir / "pki", ctx.clock.now()
            )
        events = Events()
        target = TlsTarget.of(f"tls://{h1.address}:7477", "h1", files)
        client = AgentClient.over_tls(target, events.on_event)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    await client.request("hello")
                    break
                except TemporaryError:
                    assert agent.poll() is None and time.monotonic() < deadline
                    await asyncio.sleep(0.1)
            task = TaskSpec(  # noqa: S604 - a task's command line
                task_id="remote-1",
                task_dir="/srv/flotilla/tasks/remote-1",
                workdir="/srv/flotilla/tasks/remote-1/root",
                env={"PATH": os.environ["PATH"]},
                shell="hostname; exit 7",
            )
            await client.launch(task)
            assert (await events.wait_exit("remote-1")).exit_code == 7
            log = h1.run(["cat", "/srv/flotilla/tasks/remote-1/main.log"]).stdout
            assert log == "h1\n"  # it ran on the host, not here
        finally:
            await client.close()
            agent.send_signal(signal.SIGTERM)
            await asyncio.to_thread(agent.wait, 10)
