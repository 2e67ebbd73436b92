"""Certificates and TLS contexts shared by the node agent and the control plane.

The control plane owns a CA (`server/pki.py` issues with it). A node joins with a
one-time token (`flo agent join`): it makes its key here, sends only a CSR, and gets
back its certificate and the CA's, which it keeps in its TLS directory:

    <tls dir>/node.key   the node's private key (0600; never leaves the node)
    <tls dir>/node.crt   its certificate: CN and DNS SAN = the node name, serverAuth
    <tls dir>/ca.crt     the control plane's CA, pinned at join
    <tls dir>/agent.json what the join said: node name, control plane URL, CA hash

The agent (`runtime/agent.py --listen`) serves with `server_context()`: a client
must present a certificate of that CA whose CN is `CONTROL_PLANE_NAME` (the node
certificates, also of that CA, are refused: one node cannot drive another). The
control plane connects with `client_context()` and checks that the certificate it
is shown names the node it meant to reach.

Only the standard library and `cryptography`: the agent imports this, never server/.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flotilla.errors import FlotillaError

# The CN of the control plane's client certificate; no node may have this name.
CONTROL_PLANE_NAME = "flotilla-control-plane"
CA_FILE = "ca.crt"
KEY_FILE = "node.key"
CERT_FILE = "node.crt"
CONFIG_FILE = "agent.json"
DEFAULT_AGENT_PORT = 7477


class CertificateRefused(FlotillaError):
    """A certificate that is not what it should be (wrong CA, expired, wrong name)."""


@dataclass(frozen=True)
class TlsFiles:
    """The paths of one side's TLS material: its key and certificate, and the CA."""

    key: Path
    cert: Path
    ca: Path

    @classmethod
    def node(cls, tls_dir: Path) -> TlsFiles:
        return cls(tls_dir / KEY_FILE, tls_dir / CERT_FILE, tls_dir / CA_FILE)


def new_key() -> ec.EllipticCurvePrivateKey:
    """An EC P-256 key: small, fast handshakes, supported by every TLS stack."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateRefused("not an EC private key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes | str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as e:
        raise CertificateRefused(f"not a PEM certificate: {e}") from e


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A certificate request for `name`, signed by `key` (proof the node holds it)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 of the DER certificate, hex: what `--ca-sha256` compares."""
    return cert.fingerprint(hashes.SHA256()).hex()


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.DNSName))


def verify_issued(cert: x509.Certificate, ca: x509.Certificate, name: str, now: datetime) -> None:
    """Raise CertificateRefused unless `ca` signed `cert`, it is valid at `now` and it
    names `name` (CN and DNS SAN). The TLS stack does the same at every handshake;
    this is for checking what a join returned before keeping it."""
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as e:
        raise CertificateRefused(f"not issued by this CA ({type(e).__name__})") from e
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertificateRefused(
            f"not valid now ({cert.not_valid_before_utc} to {cert.not_valid_after_utc})"
        )
    if common_name(cert) != name or name not in dns_names(cert):
        raise CertificateRefused(f"issued to {common_name(cert)!r}, not {name!r}")


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file 0600 from its first byte, replacing any old one atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600 already
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_public(path: Path, data: bytes) -> None:
    write_private(path, data)
    os.chmod(path, 0o644)


def read_config(tls_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tls_dir / CONFIG_FILE).read_text())
    return data


def _context(purpose: ssl._SSLMethod, files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(files.cert, files.key)
    context.load_verify_locations(cafile=files.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(tls_dir: Path) -> ssl.SSLContext:
    """The agent's side: its node certificate; clients need one from the pinned CA
    (the CN, `CONTROL_PLANE_NAME`, is checked after the handshake: `is_control_plane`)."""
    return _context(ssl.PROTOCOL_TLS_SERVER, TlsFiles.node(tls_dir))


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The control plane's side: its client certificate; the agent's must be of the
    CA and name the node (`server_hostname=` at connect, checked by the TLS stack)."""
    context = _context(ssl.PROTOCOL_TLS_CLIENT, files)
    context.check_hostname = True
    return context


def is_control_plane(ssl_object: ssl.SSLObject | None) -> bool:
    """Whether a verified peer is the control plane (its CN), not another node."""
    if ssl_object is None:
        return False
    peer = ssl_object.getpeercert()
    if not peer:
        return False
    names = [
        pair[1]
        for rdn in peer.get("subject", ())
        for pair in rdn
        if isinstance(pair, tuple) and pair[0] == "commonName"
    ]
    return names == [CONTROL_PLANE_NAME]


def ca_digest(pem: bytes) -> str:
    """The `--ca-sha256` of a PEM CA certificate (of its DER form, as `openssl x509
    -fingerprint -sha256` shows, without colons)."""
    return fingerprint(load_cert(pem))
