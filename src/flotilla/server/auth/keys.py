"""RS256 signing keys for session tokens, kept in `signing_keys`.

The private key is stored as PEM encrypted with the server's secret box (a copy of
the database alone signs nothing); the public half is stored as a JWK. The newest
unretired key signs. Rotation retires the signing key rather than deleting it: a
retired key keeps verifying, and stays in the JWKS, until every access token it
signed has expired (`retired_at + access_ttl`); after that it stops verifying and
is pruned.

Called by `app.py` at start-up (`ensure_signing_key`), by `tokens` (signing and
verification), and by `routers/auth.py` (JWKS, rotation).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import FlotillaError
from flotilla.server.db.models import SigningKeyModel
from flotilla.server.secretbox import SecretBox

ALGORITHM = "RS256"
KEY_BITS = 2048

log = logging.getLogger("flotilla.auth")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: the kid is a hash of the public key, so it names exactly one key."""
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _generate(box: SecretBox, now: datetime) -> SigningKeyModel:
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    jwk: dict[str, Any] = dict(RSAAlgorithm.to_jwk(private.public_key(), as_dict=True))
    kid = _thumbprint(jwk)
    jwk.update(kid=kid, use="sig", alg=ALGORITHM)
    return SigningKeyModel(
        kid=kid, private_key=box.encrypt(pem), public_jwk=jwk, created_at=now, retired_at=None
    )


async def _new_key(session: AsyncSession, box: SecretBox, now: datetime) -> SigningKeyModel:
    # Generating an RSA key takes CPU for tens of milliseconds: off the event loop.
    row = await asyncio.to_thread(_generate, box, now)
    session.add(row)
    await session.flush()
    return row


def _still_verifying(now: datetime, access_ttl: timedelta) -> Any:
    """Keys that verify at `now`: unretired, or retired less than one access token
    lifetime ago."""
    return or_(
        SigningKeyModel.retired_at.is_(None),
        SigningKeyModel.retired_at > now - access_ttl,
    )


async def prune_retired_keys(session: AsyncSession, now: datetime, access_ttl: timedelta) -> None:
    """Delete keys retired long enough ago that nothing they signed is still valid."""
    await session.execute(
        delete(SigningKeyModel).where(SigningKeyModel.retired_at <= now - access_ttl)
    )


async def ensure_signing_key(
    session: AsyncSession, box: SecretBox, now: datetime, access_ttl: timedelta
) -> str:
    """At start-up: make sure a key can sign (creating the first one) and drop keys
    past their retention. Returns the signing key's kid."""
    await prune_retired_keys(session, now, access_ttl)
    current = await _newest_unretired(session)
    if current is not None and not _decryptable(box, current):
        log.warning(
            "signing key %s cannot be decrypted with this server's secret key "
            "(was FLOTILLA_SECRET_KEY changed?): rotating to a new key",
            current.kid,
        )
        current = await rotate_signing_key(session, box, now, access_ttl)
    if current is None:
        current = await _new_key(session, box, now)
    return current.kid


def _decryptable(box: SecretBox, row: SigningKeyModel) -> bool:
    try:
        box.decrypt(row.private_key)
    except FlotillaError:
        return False
    return True


async def rotate_signing_key(
    session: AsyncSession, box: SecretBox, now: datetime, access_ttl: timedelta
) -> SigningKeyModel:
    """Retire the signing key(s) and sign with a new one from now on. Tokens the old
    key signed keep working until they expire."""
    await session.execute(
        update(SigningKeyModel).where(SigningKeyModel.retired_at.is_(None)).values(retired_at=now)
    )
    await prune_retired_keys(session, now, access_ttl)
    return await _new_key(session, box, now)


async def _newest_unretired(session: AsyncSession) -> SigningKeyModel | None:
    return (
        await session.execute(
            select(SigningKeyModel)
            .where(SigningKeyModel.retired_at.is_(None))
            .order_by(SigningKeyModel.created_at.desc(), SigningKeyModel.kid)
            .limit(1)
        )
    ).scalar()


async def signing_key(session: AsyncSession, box: SecretBox, now: datetime) -> SigningKey:
    """The key that signs new tokens (created if somehow none is left)."""
    row = await _newest_unretired(session) or await _new_key(session, box, now)
    # Our own key, out of authenticated encryption: its validation (slow) is moot.
    private = serialization.load_pem_private_key(
        box.decrypt(row.private_key).encode(), None, unsafe_skip_rsa_key_validation=True
    )
    if not isinstance(private, rsa.RSAPrivateKey):
        raise TypeError(f"signing key {row.kid} is not an RSA key")
    return SigningKey(row.kid, private)


async def verification_key(
    session: AsyncSession, kid: str, now: datetime, access_ttl: timedelta
) -> rsa.RSAPublicKey | None:
    """The public key named `kid` if it may verify tokens at `now`, else None."""
    row = (
        await session.execute(
            select(SigningKeyModel).where(
                SigningKeyModel.kid == kid, _still_verifying(now, access_ttl)
            )
        )
    ).scalar()
    if row is None:
        return None
    key = RSAAlgorithm.from_jwk(row.public_jwk)
    return key if isinstance(key, rsa.RSAPublicKey) else None


async def public_jwks(
    session: AsyncSession, now: datetime, access_ttl: timedelta
) -> dict[str, Any]:
    """The JWKS document: every key that verifies at `now`, the signing key first,
    then the most recently retired."""
    rows = (
        await session.execute(
            select(SigningKeyModel)
            .where(_still_verifying(now, access_ttl))
            .order_by(
                SigningKeyModel.retired_at.desc().nulls_first(),
                SigningKeyModel.created_at.desc(),
                SigningKeyModel.kid,
            )
        )
    ).scalars()
    return {"keys": [dict(row.public_jwk) for row in rows]}
