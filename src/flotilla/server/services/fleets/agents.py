"""Node agents joining the control plane: the CA, one-time join tokens, issuing node
certificates, and the control plane's own client certificate for agent connections.
Called by `routers/agents.py` (tokens, joins) and by whatever connects to agents
(`control_plane_tls`).

Everything lives in the `settings` table (no migration), one row per thing so that
concurrent requests never rewrite each other's rows:

- `agent_ca`: the CA certificate, and its key sealed with the secret box;
- `agent_join:<hash>`: a join token, kept as the SHA-256 of the token only (the key),
  with its node name (or none: the node says it), expiry and creator. A join deletes
  the row in the transaction that issues the certificate, guarded by the delete's
  row count, so a token is used once even by two joins at the same instant;
- `agent_node:<hash of name>`: a joined node's latest certificate (serial, expiry,
  fingerprint). A token without a node name cannot take a name already joined: only
  a token made for that name re-issues it (a host re-installed, a lost key).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import Conflict, FieldProblem, InvalidRecipe, Unauthorized
from flotilla.runtime.tls import (
    CA_FILE,
    CertificateRefused,
    TlsFiles,
    cert_pem,
    fingerprint,
    key_pem,
    load_cert,
    load_key,
    new_key,
    write_private,
    write_public,
)
from flotilla.server.db.models import SettingModel
from flotilla.server.pki import (
    CertificateAuthority,
    check_node_name,
    create_ca,
    is_issued_by,
    issue_control_plane_cert,
    issue_node_cert,
    needs_renewal,
)
from flotilla.server.secretbox import SecretBox
from flotilla.server.services.events import record_event
from flotilla.server.services.fleets.agent_nodes import register_agent_node

CA_KEY = "agent_ca"
TOKEN_PREFIX = "agent_join:"  # noqa: S105 - a settings key prefix
NODE_PREFIX = "agent_node:"
JOIN_TOKEN_PREFIX = "fjt_"  # noqa: S105 - what join tokens start with
MIN_TTL, MAX_TTL = 60, 7 * 86400


@dataclass(frozen=True)
class JoinToken:
    token: str  # shown once
    node: str | None
    expires_at: datetime
    ca_sha256: str


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:52]  # the key column is 64 wide


async def load_ca(session: AsyncSession, box: SecretBox, now: datetime) -> CertificateAuthority:
    """The CA, created on first use. Two servers creating it at once: one insert wins
    (the key is the primary key), the other reads the winner's."""
    row = await session.get(SettingModel, CA_KEY)
    if row is None:
        ca = create_ca(now)
        value = {"cert": cert_pem(ca.cert).decode(), "key": box.encrypt(key_pem(ca.key).decode())}
        try:
            async with session.begin_nested():
                session.add(SettingModel(key=CA_KEY, value=value, updated_at=now))
        except IntegrityError:
            row = await session.get(SettingModel, CA_KEY, populate_existing=True)
        else:
            record_event(session, kind="agent", message="node CA created", actor="system", now=now)
            return ca
    assert row is not None
    return CertificateAuthority(
        load_key(box.decrypt(row.value["key"]).encode()), load_cert(row.value["cert"])
    )


async def create_join_token(
    session: AsyncSession,
    box: SecretBox,
    *,
    node: str | None,
    ttl_seconds: int,
    actor: str,
    now: datetime,
) -> JoinToken:
    if node is not None:
        check_node_name(node)
    if not MIN_TTL <= ttl_seconds <= MAX_TTL:
        raise InvalidRecipe(
            [FieldProblem("expires_in_seconds", f"must be between {MIN_TTL} and {MAX_TTL}")]
        )
    ca = await load_ca(session, box, now)
    token = JOIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = now + timedelta(seconds=ttl_seconds)
    value = {"node": node, "expires_at": expires_at.isoformat(), "created_by": actor}
    session.add(SettingModel(key=TOKEN_PREFIX + _digest(token), value=value, updated_at=now))
    for_node = f" for node {node}" if node else ""
    record_event(
        session, kind="agent", message=f"join token created{for_node}", actor=actor, now=now
    )
    return JoinToken(token, node, expires_at, fingerprint(ca.cert))


async def _spend_token(session: AsyncSession, token: str, now: datetime) -> dict[str, Any]:
    """The token's stored record, deleted in this transaction; Unauthorized if it is
    unknown, already used or expired."""
    key = TOKEN_PREFIX + _digest(token)
    row = await session.get(SettingModel, key)
    if row is None:
        raise Unauthorized("unknown or already used join token")
    value = dict(row.value)
    result = await session.execute(delete(SettingModel).where(SettingModel.key == key))
    if getattr(result, "rowcount", 0) != 1:  # another join spent it meanwhile
        raise Unauthorized("unknown or already used join token")
    if datetime.fromisoformat(value["expires_at"]) <= now:
        raise Unauthorized("join token expired: create a new one (flo agent token create)")
    return value


async def join(
    session: AsyncSession,
    box: SecretBox,
    *,
    token: str,
    node: str,
    csr: str,
    endpoint: str,
    now: datetime,
) -> dict[str, Any]:
    """Spend `token`, issue the node certificate for `csr` and register the node
    (`provisioning` until its agent answers at `endpoint`, `tls://HOST:PORT`).
    Returns the certificate, the CA certificate and the node's name."""
    record = await _spend_token(session, token, now)
    name = check_node_name(node)
    if record["node"] is not None and record["node"] != name:
        raise InvalidRecipe([FieldProblem("node", f"this token is for node {record['node']}")])
    ca = await load_ca(session, box, now)
    cert = issue_node_cert(ca, csr, name, now)
    await _record_node(session, name, cert, renew=record["node"] is not None, now=now)
    await register_agent_node(
        session,
        name=name,
        endpoint=endpoint,
        provider="agent",
        fleet_id=None,
        labels={},
        actor=str(record["created_by"]),
        now=now,
        replace=record["node"] is not None,
    )
    record_event(
        session,
        kind="agent",
        message=f"node {name} joined (certificate serial {cert.serial_number:x})",
        actor=str(record["created_by"]),
        now=now,
    )
    return {
        "node": name,
        "certificate": cert_pem(cert).decode(),
        "ca_certificate": cert_pem(ca.cert).decode(),
        "expires_at": cert.not_valid_after_utc.isoformat(),
        "serial": f"{cert.serial_number:x}",
    }


async def _record_node(
    session: AsyncSession, name: str, cert: x509.Certificate, *, renew: bool, now: datetime
) -> None:
    key = NODE_PREFIX + _digest(name)
    value = {
        "node": name,
        "serial": f"{cert.serial_number:x}",
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": fingerprint(cert),
    }
    row = await session.get(SettingModel, key)
    if row is not None and not renew:
        raise Conflict(
            f"node {name} has joined before: a token made for it re-issues its certificate "
            f"(flo agent token create --node {name})"
        )
    if row is not None:
        row.value, row.updated_at = value, now
        return
    try:
        async with session.begin_nested():
            session.add(SettingModel(key=key, value=value, updated_at=now))
    except IntegrityError as e:
        raise Conflict(f"node {name} is joining at this moment") from e


async def joined_nodes(session: AsyncSession) -> list[dict[str, Any]]:
    """Every joined node's latest certificate record, by name."""
    rows = await session.execute(
        select(SettingModel.value).where(SettingModel.key.startswith(NODE_PREFIX))
    )
    return sorted((dict(v) for v in rows.scalars()), key=lambda v: str(v["node"]))


async def control_plane_tls(
    session: AsyncSession, box: SecretBox, pki_dir: Path, now: datetime
) -> TlsFiles:
    """The control plane's client certificate for agent connections, as files (what
    `ssl` loads): made, or re-made when due for renewal or of another CA, in
    `pki_dir` (the server's data dir; the key 0600)."""
    files = TlsFiles(
        pki_dir / "control-plane.key", pki_dir / "control-plane.crt", pki_dir / CA_FILE
    )
    ca = await load_ca(session, box, now)
    try:
        current: x509.Certificate | None = load_cert(files.cert.read_bytes())
    except (OSError, CertificateRefused):
        current = None
    if current is None or needs_renewal(current, now) or not is_issued_by(current, ca):
        key = new_key()
        write_private(files.key, key_pem(key))
        write_public(files.cert, cert_pem(issue_control_plane_cert(ca, key.public_key(), now)))
    write_public(files.ca, cert_pem(ca.cert))
    return files
