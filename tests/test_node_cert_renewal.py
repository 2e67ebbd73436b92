"""Node certificates renewed over the agent's link (`runtime/renewal.py`,
`server/services/fleets/node_certs.py`): an agent whose certificate has a third of its
life left gets a new one — a new key made on the node, signed by the control
plane's CA for the node's name — without a new join, keeps answering, and the node
says until when. The agent refuses a certificate that is not for the key it made,
not for its name, or not of its CA, and changes nothing then."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from flotilla.runtime.renewal import CertRenewal
from flotilla.runtime.tls import (
    CA_FILE,
    CertificateRefused,
    cert_pem,
    client_context,
    key_pem,
    load_cert,
    make_csr,
    new_key,
    server_context,
    write_private,
    write_public,
)
from flotilla.server.pki import CertificateAuthority, create_ca, issue_node_cert
from flotilla.server.services.fleets.agent_nodes import register_agent_node
from flotilla.server.services.fleets.agents import control_plane_tls, load_ca
from tests.conftest import Api, make_settings, open_api
from tests.factories import free_port, wait_for

pytestmark = pytest.mark.timeout(90)


def node_tls(ca: CertificateAuthority, where: Path, name: str, issued: datetime) -> Path:
    """A node's TLS dir with a certificate issued at `issued` (30 days from then)."""
    key = new_key()
    cert = issue_node_cert(ca, make_csr(key, name).decode(), name, issued)
    write_private(where / "node.key", key_pem(key))
    write_public(where / "node.crt", cert_pem(cert))
    write_public(where / CA_FILE, cert_pem(ca.cert))
    return where


def not_after(tls_dir: Path) -> datetime:
    return load_cert((tls_dir / "node.crt").read_bytes()).not_valid_after_utc


@pytest.fixture
def old_tls(tmp_path: Path) -> Iterator[tuple[CertificateAuthority, Path]]:
    ca = create_ca(datetime.now(UTC))
    yield ca, node_tls(ca, tmp_path / "tls", "n1", datetime.now(UTC) - timedelta(days=25))


def test_the_agent_keeps_only_a_certificate_for_its_new_key(
    old_tls: tuple[CertificateAuthority, Path],
) -> None:
    ca, tls_dir = old_tls
    before = (tls_dir / "node.crt").read_bytes(), (tls_dir / "node.key").read_bytes()
    renewal = CertRenewal(tls_dir, server_context(tls_dir))
    now = datetime.now(UTC)
    with pytest.raises(CertificateRefused, match="no certificate was requested"):
        renewal.install(
            cert_pem(issue_node_cert(ca, make_csr(new_key(), "n1").decode(), "n1", now)).decode()
        )
    csr = renewal.request()["csr"]
    stranger = issue_node_cert(ca, make_csr(new_key(), "n1").decode(), "n1", now)
    with pytest.raises(CertificateRefused, match="not for the key"):
        renewal.install(cert_pem(stranger).decode())
    with pytest.raises(CertificateRefused, match="not 'n1'"):
        renewal.install(cert_pem(issue_node_cert(ca, csr, "n2", now)).decode())
    other_ca = create_ca(now)
    with pytest.raises(CertificateRefused, match="not issued by this CA"):
        renewal.install(cert_pem(issue_node_cert(other_ca, csr, "n1", now)).decode())
    assert ((tls_dir / "node.crt").read_bytes(), (tls_dir / "node.key").read_bytes()) == before
    answer = renewal.install(cert_pem(issue_node_cert(ca, csr, "n1", now)).decode())
    assert datetime.fromisoformat(answer["not_after"]) == not_after(tls_dir)
    assert not_after(tls_dir) > now + timedelta(days=29)
    assert (tls_dir / "node.key").stat().st_mode & 0o777 == 0o600


async def test_a_node_near_expiry_is_renewed_over_its_link(data_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(
        data_dir,
        local_node=False,
        node_heartbeat_seconds=0.3,
        node_unreachable_seconds=5.0,
        node_failed_seconds=30.0,
    )
    async for api in open_api(settings):
        now = api.ctx.clock.now()
        async with api.ctx.transaction() as session:
            ca = await load_ca(session, api.ctx.secret_box, now)
        tls_dir = node_tls(ca, tmp_path / "tls", "n1", now - timedelta(days=25))
        old_end = not_after(tls_dir)
        port = free_port()
        argv = [sys.executable, "-m", "flotilla.runtime.agent", "--listen", f"127.0.0.1:{port}"]
        argv += ["--tls-dir", str(tls_dir), "--data-dir", str(tmp_path / "data")]
        argv += ["--ssh-listen", f"127.0.0.1:{free_port()}"]
        agent = subprocess.Popen(argv)  # noqa: ASYNC220 - starts at once, never waited on here
        try:
            async with api.ctx.transaction() as session:
                await register_agent_node(
                    session,
                    name="n1",
                    endpoint=f"tls://127.0.0.1:{port}",
                    provider="agent",
                    fleet_id=None,
                    labels={},
                    actor="test",
                    now=now,
                )

            async def renewed(api: Api = api) -> dict[str, Any] | None:
                node = (await api.client.get("/api/nodes/n1")).json()
                said = [e for e in node["events"] if "certificate renewed" in e["message"]]
                return node if said and node["state"] == "ready" else None

            node = await wait_for(renewed, 60, interval=0.2, what="the renewal")
            assert not_after(tls_dir) > old_end + timedelta(days=20), node["events"]
            # A new connection is shown the new certificate.
            async with api.ctx.transaction() as session:
                files = await control_plane_tls(session, api.ctx.secret_box, data_dir / "pki", now)
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(files), server_hostname="n1"
            )
            shown = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
            new = load_cert((tls_dir / "node.crt").read_bytes())
            assert shown == new.public_bytes(serialization.Encoding.DER)
        finally:
            agent.terminate()
            await asyncio.to_thread(agent.wait, 10)
