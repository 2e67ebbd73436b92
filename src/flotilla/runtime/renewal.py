"""A node's side of renewing its certificate over the control plane's link, so a
joined host keeps working past its certificate's 30 days without a new join.

The control plane asks (`cert_request`) when a third of the certificate's life is
left (it sees `cert_not_after` in every `hello`): the agent makes a new key here —
it never leaves the host — and answers a CSR for its own name. The control plane
signs it and sends the certificate (`cert_install`); the agent checks it (issued by
the CA pinned at join, for its name, valid now, for the key it just made), writes
key and certificate (0600 / 0644, each replaced atomically: a crash between the
two leaves a pair that does not match, and the next start fails saying so rather
than serving anything else), and loads them into its TLS context: new connections
show the new certificate; open ones keep theirs. Used by `runtime/agent.py`.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from flotilla.runtime.tls import (
    CertificateRefused,
    TlsFiles,
    cert_pem,
    common_name,
    key_pem,
    load_cert,
    make_csr,
    new_key,
    verify_issued,
    write_private,
    write_public,
)


class CertRenewal:
    def __init__(self, tls_dir: Path, context: ssl.SSLContext) -> None:
        self.files = TlsFiles.node(tls_dir)
        self.context = context
        self.pending: ec.EllipticCurvePrivateKey | None = None

    @property
    def name(self) -> str:
        return common_name(load_cert(self.files.cert.read_bytes()))

    def not_after(self) -> str:
        return load_cert(self.files.cert.read_bytes()).not_valid_after_utc.isoformat()

    def request(self) -> dict[str, Any]:
        """A new key, kept until its certificate comes, and its CSR."""
        self.pending = new_key()
        return {"csr": make_csr(self.pending, self.name).decode()}

    def install(self, pem: str) -> dict[str, Any]:
        """Check and keep the certificate for the pending key; CertificateRefused
        (nothing changed) if it is not right."""
        if self.pending is None:
            raise CertificateRefused("no certificate was requested")
        cert = load_cert(pem)
        ca = load_cert(self.files.ca.read_bytes())
        verify_issued(cert, ca, self.name, datetime.now(UTC))
        public = cert.public_key()
        if (
            not isinstance(public, ec.EllipticCurvePublicKey)
            or public.public_numbers() != self.pending.public_key().public_numbers()
        ):
            raise CertificateRefused("the certificate is not for the key this agent made")
        write_private(self.files.key, key_pem(self.pending))
        write_public(self.files.cert, cert_pem(cert))
        self.pending = None
        self.context.load_cert_chain(self.files.cert, self.files.key)
        return {"not_after": cert.not_valid_after_utc.isoformat()}
