"""The control plane's certificate authority for node agents: pure functions.

One CA per control plane (EC P-256, ten years), kept by `services/fleets/agents.py` in the
settings table with its key sealed by the secret box, like the session signing keys
(`auth/keys.py`): every server on one database has the same CA, and a copy of the
database alone issues nothing. With it:

- `issue_node_cert` turns a node's CSR into its certificate (CN and DNS SAN = the node
  name the control plane decided, never what the CSR asks for; serverAuth only; 30
  days, renewed over the agent's link: `services/fleets/node_certs.py`);
- `issue_control_plane_cert` makes the control plane's client certificate (CN
  `CONTROL_PLANE_NAME`, clientAuth only), the one credential agents accept.

Serials are random 159-bit numbers (RFC 5280 allows 20 octets); the service records
the latest serial of each node so that a later revocation can name it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flotilla.errors import FieldProblem, InvalidRecipe
from flotilla.runtime.tls import CONTROL_PLANE_NAME, new_key

CA_DAYS = 3650
NODE_CERT_DAYS = 30
CONTROL_PLANE_CERT_DAYS = 30
# Renew when less than this share of a certificate's lifetime is left.
RENEW_FRACTION = 1 / 3
# Issued slightly in the past: a node whose clock lags a little still accepts it.
BACKDATE = timedelta(minutes=5)
_NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def check_node_name(name: str, field: str = "node") -> str:
    """A node name is a DNS label (it is the certificate's DNS name) and never the
    control plane's own name."""
    if not _NODE_NAME.match(name):
        raise InvalidRecipe(
            [FieldProblem(field, "a node name is a lowercase DNS label: a-z, 0-9 and '-'")]
        )
    if name == CONTROL_PLANE_NAME:
        raise InvalidRecipe([FieldProblem(field, f"{name!r} is reserved")])
    return name


def create_ca(now: datetime, days: int = CA_DAYS) -> CertificateAuthority:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Flotilla node CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key, cert)


def read_csr(pem: str) -> x509.CertificateSigningRequest:
    """A CSR whose signature holds (its sender has the key) and whose key is EC."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError as e:
        raise InvalidRecipe([FieldProblem("csr", f"not a PEM certificate request: {e}")]) from e
    if not csr.is_signature_valid:
        raise InvalidRecipe([FieldProblem("csr", "its signature does not match its key")])
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise InvalidRecipe([FieldProblem("csr", "needs an EC key (flo agent join makes one)")])
    return csr


def _leaf(
    ca: CertificateAuthority,
    public_key: ec.EllipticCurvePublicKey,
    name: str,
    usage: x509.ObjectIdentifier,
    now: datetime,
    days: int,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def issue_node_cert(
    ca: CertificateAuthority, csr_pem: str, node: str, now: datetime, days: int = NODE_CERT_DAYS
) -> x509.Certificate:
    """The certificate of `node` for the key in `csr_pem`. The name is the control
    plane's choice (the join token's or the checked request's), whatever the CSR's
    subject says, so a node cannot obtain the control plane's name or another's."""
    csr = read_csr(csr_pem)
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # read_csr checked
    return _leaf(ca, key, check_node_name(node), ExtendedKeyUsageOID.SERVER_AUTH, now, days)


def issue_control_plane_cert(
    ca: CertificateAuthority,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    days: int = CONTROL_PLANE_CERT_DAYS,
) -> x509.Certificate:
    return _leaf(ca, public_key, CONTROL_PLANE_NAME, ExtendedKeyUsageOID.CLIENT_AUTH, now, days)


def needs_renewal(cert: x509.Certificate, now: datetime) -> bool:
    """Whether less than RENEW_FRACTION of the certificate's lifetime is left."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < lifetime * RENEW_FRACTION


def is_issued_by(cert: x509.Certificate, ca: CertificateAuthority) -> bool:
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
