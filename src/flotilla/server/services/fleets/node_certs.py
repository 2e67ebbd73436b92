"""Renewing the certificates of nodes with an agent of their own, over their
mutual-TLS link (the node's side: `runtime/renewal.py`). Called by the node
reconciler (`reconcilers/agent_nodes.py`) for each node that answered, with what
its `hello` said: when a third of the certificate's life is left (`pki.
needs_renewal`, the control plane's own rule), the agent makes a new key and a
CSR, the CA signs it for the node's name (never the CSR's), and the agent installs
it. One try per node per hour; a failure is logged and tried again then."""

from __future__ import annotations

import logging
import time
from datetime import datetime

from flotilla.compute.agents.remote import RemoteNode
from flotilla.errors import FlotillaError
from flotilla.runtime.tls import cert_pem
from flotilla.server.context import ServerContext
from flotilla.server.pki import NODE_CERT_DAYS, RENEW_FRACTION, issue_node_cert
from flotilla.server.services.fleets.agents import load_ca

log = logging.getLogger("flotilla.nodes")
RETRY_SECONDS = 3600.0


class NodeCertificates:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._tried: dict[str, float] = {}  # node -> time.monotonic() of the last try

    def due(self, node: RemoteNode, now: datetime) -> bool:
        """Whether `node`'s certificate (as its last `hello` said) is to be renewed."""
        said = (node.hello or {}).get("cert_not_after")
        if not said:
            return False  # an agent older than renewal: it joins again
        left = datetime.fromisoformat(str(said)) - now
        if left.total_seconds() > NODE_CERT_DAYS * 86400 * RENEW_FRACTION:
            return False
        last = self._tried.get(node.name)
        return last is None or time.monotonic() - last >= RETRY_SECONDS

    async def renew(self, node: RemoteNode, now: datetime) -> str | None:
        """Renew `node`'s certificate; the event to record, or None if it failed."""
        self._tried[node.name] = time.monotonic()
        try:
            csr = (await node.call("cert_request"))["csr"]
            async with self.ctx.transaction() as session:
                ca = await load_ca(session, self.ctx.secret_box, now)
            cert = issue_node_cert(ca, str(csr), node.name, now)
            installed = await node.call("cert_install", cert=cert_pem(cert).decode())
        except (FlotillaError, KeyError, ValueError) as e:  # TemporaryError, a refusal
            log.warning("node %s: its certificate was not renewed: %s", node.name, e)
            return None
        self._tried.pop(node.name, None)
        return f"{node.name}: certificate renewed, valid until {installed['not_after']}"
