"""ASGI middleware that writes the audit log: every request that can change state
(anything but GET/HEAD/OPTIONS) under /api, and every login attempt (the auth
routes mark those with `request.state.audit_actor`, GET ones included).

It records who (the identity `security.current_identity` left on the request
state, or the attempted user name of a login), when, from where (the peer
address), what (method, path, and the route template as the action) and the
outcome (status code). Request bodies are never recorded: they may hold secrets.
The row is written after the response, in its own transaction, so a failed
request is audited too and auditing never changes a response.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flotilla.server.services.identity.audit import AuditEntry, record_audit

log = logging.getLogger("flotilla.audit")
READ_ONLY = frozenset({"GET", "HEAD", "OPTIONS"})


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            state: dict[str, Any] = scope.get("state") or {}
            if scope["method"] not in READ_ONLY or "audit_actor" in state:
                await self._record(scope, state, status)

    async def _record(self, scope: Scope, state: dict[str, Any], status: int) -> None:
        ctx = scope["app"].state.ctx
        identity = state.get("identity")
        route = scope.get("route")
        client = scope.get("client")
        entry = AuditEntry(
            at=ctx.clock.now(),
            actor=identity.name if identity else str(state.get("audit_actor") or "anonymous"),
            auth_method=identity.auth_method if identity else "none",
            source_ip=client[0] if client else "",
            method=scope["method"],
            path=scope["path"],
            action=f"{scope['method']} {getattr(route, 'path', scope['path'])}",
            status_code=status,
            detail=str(state.get("audit_detail", "")),
        )
        try:
            async with ctx.transaction() as session:
                record_audit(session, entry)
        except Exception:
            # The request already happened; losing its audit row must be loud.
            log.exception("could not write the audit log entry for %s", entry.action)
