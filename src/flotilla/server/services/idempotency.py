"""Idempotent starts: a request that creates a run may carry an `Idempotency-Key`
header (as Stripe's API and the IETF httpapi draft). The first request with a key
does the work and keeps its answer with the key; a repeat by the same caller gets
that answer again (the same run) and creates nothing, so a client may retry a start
whose answer was lost. The same key on another request (another route, resource,
query or body) is refused (422). Keys are per caller and expire after
`settings.idempotency_key_ttl` (24 h); expired rows are pruned as new keys arrive.

Concurrent duplicates are settled by the unique index on (caller, key): the key's
row is written first, in the transaction that does the work, so a second request
with the key waits for the first (PostgreSQL) or runs after it (SQLite, one
connection) and either finds its answer or fails its insert, rolls back whatever it
did, and reads the first one's answer. Only an answer that succeeded is kept: a
refused start (a budget, a missing job) leaves no row, and its retry is decided anew.

Called by the routes that create runs (`routers/jobs.py`: start and restart).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import ClientError, FieldProblem
from flotilla.server.context import ServerContext
from flotilla.server.db.models import IdempotencyKeyModel

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255

Work = Callable[[AsyncSession], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class KeyedRequest:
    """A request sent with a key: who sent it, the key, what it was sent to
    ("POST /api/jobs/<id>/start") and a digest of its query and body."""

    caller: str
    key: str
    target: str
    fingerprint: str


def keyed_request(
    caller_id: str, key: str | None, method: str, path: str, query: str, body: bytes
) -> KeyedRequest | None:
    """The request as the key store sees it; None when it carries no key."""
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise ClientError(
            f"{HEADER} must be 1-{MAX_KEY_LENGTH} printable ASCII characters",
            "invalid_idempotency_key",
            422,
            [FieldProblem(f"headers.{HEADER}", "1-255 printable ASCII characters")],
        )
    digest = hashlib.sha256(query.encode() + b"\n" + body).hexdigest()
    return KeyedRequest(caller_id, key, f"{method} {path}", digest)


async def once(ctx: ServerContext, request: KeyedRequest | None, work: Work) -> dict[str, Any]:
    """`work`'s answer, done in one transaction; with a key, done at most once per
    caller and key, a repeat answered with the first answer."""
    if request is None:
        async with ctx.transaction() as session:
            return await work(session)
    try:
        async with ctx.transaction() as session:
            await _prune(ctx, session)
            stored = await _find(session, request)
            if stored is not None:
                return _replay(stored, request)
            row = IdempotencyKeyModel(
                caller=request.caller,
                key=request.key,
                request=request.target,
                fingerprint=request.fingerprint,
                status_code=0,
                response={},
                created_at=ctx.clock.now(),
            )
            session.add(row)
            await session.flush()  # the unique index decides here who does the work
            answer = await work(session)
            row.status_code, row.response = 200, answer
            return answer
    except IntegrityError:
        # A concurrent request with the key won (this one's work is rolled back):
        # answer with its answer. Anything else that broke a constraint is raised.
        async with ctx.sessions() as session:
            stored = await _find(session, request)
        if stored is None:
            raise
        return _replay(stored, request)


async def _find(session: AsyncSession, request: KeyedRequest) -> IdempotencyKeyModel | None:
    query = select(IdempotencyKeyModel).where(
        IdempotencyKeyModel.caller == request.caller, IdempotencyKeyModel.key == request.key
    )
    return (await session.execute(query)).scalars().first()


def _replay(stored: IdempotencyKeyModel, request: KeyedRequest) -> dict[str, Any]:
    if (stored.request, stored.fingerprint) != (request.target, request.fingerprint):
        raise ClientError(
            f"this {HEADER} was already used for another request ({stored.request}"
            f"{'' if stored.request != request.target else ' with other parameters'}); "
            "use a new key for a new request",
            "idempotency_key_reused",
            422,
            [FieldProblem(f"headers.{HEADER}", "already used for another request")],
        )
    return dict(stored.response)


async def _prune(ctx: ServerContext, session: AsyncSession) -> None:
    """Forget expired keys (the key of this request among them, if it expired)."""
    cutoff = ctx.clock.now() - timedelta(seconds=ctx.settings.idempotency_key_ttl)
    await session.execute(
        delete(IdempotencyKeyModel).where(IdempotencyKeyModel.created_at < cutoff)
    )
