"""API token checks remembered for a few seconds, so that a busy client does not
cost three queries (the token and its user, their groups, their project roles)
on every request.

An entry is the identity a token check found, keyed by the token's SHA-256 (never
the token). It is used only while both hold:

- it is younger than `TTL_SECONDS`;
- no transaction of this server has committed a change to users, tokens, groups,
  projects or their members since it was made (`db/writes.WriteLog.identity_version`).

So on one server a revoked token, a locked user or a removed membership counts
from the next request; a change made by another server sharing the database
counts within `TTL_SECONDS`. A token's expiry is checked on every use. Failed
checks are never remembered: an unknown token always asks the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from flotilla.server.identity import Identity

TTL_SECONDS = 5.0
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Checked:
    """What a successful check of one token found."""

    identity: Identity
    token_id: str
    last_used_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True)
class _Entry:
    checked: Checked
    version: int
    made_at: float


class TokenChecks:
    def __init__(
        self, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[str, _Entry] = {}

    def get(self, token_hash: str, version: int, now: datetime) -> Checked | None:
        """The remembered check of `token_hash`, if still good at identity
        `version` and wall-clock `now`."""
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        expired = entry.checked.expires_at is not None and entry.checked.expires_at <= now
        if entry.version != version or self.clock() - entry.made_at >= self.ttl or expired:
            del self._entries[token_hash]
            return None
        return entry.checked

    def put(self, token_hash: str, checked: Checked, version: int) -> None:
        """Remember `checked`, found by a check that began at identity `version`
        (read before the database was, so a change committed meanwhile wins)."""
        if len(self._entries) >= MAX_ENTRIES:
            now = self.clock()
            self._entries = {k: e for k, e in self._entries.items() if now - e.made_at < self.ttl}
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
        self._entries[token_hash] = _Entry(checked, version, self.clock())
