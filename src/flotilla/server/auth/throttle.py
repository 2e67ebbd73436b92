"""Slowing down password guessing: failed logins are counted per user name and per
source address over a sliding window; past the limit, further attempts (right
password or not) are refused with 429 until old failures leave the window. A
success clears the user name's count.

The failures are the audit log's: every login attempt is recorded there
(`server/audit.py`), so every server process sharing the database sees the same
count, and a restart forgets nothing. Called by the login route before
`sessions.password_login`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import ClientError
from flotilla.server.db.models import AuditModel

PER_USER = 5  # failures per user name in the window
PER_ADDRESS = 20  # failures per source address in the window (many names, one guesser)
WINDOW = 300.0  # seconds
LOGIN_ACTION = "POST /api/auth/login"  # the route's audit action
_FAILED = 401  # a wrong password or an unknown name (not a refusal by this throttle)


class TooManyAttempts(ClientError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(
            f"too many failed logins; try again in {math.ceil(retry_after)} s",
            "too_many_attempts",
            429,
        )
        self.retry_after = retry_after


@dataclass(frozen=True)
class LoginThrottle:
    per_user: int = PER_USER
    per_address: int = PER_ADDRESS
    window: float = WINDOW

    async def check(
        self, session: AsyncSession, username: str, address: str, now: datetime
    ) -> None:
        """Raise `TooManyAttempts` if the name or the address is over its limit."""
        since = now - timedelta(seconds=self.window)
        last_success = (
            await session.execute(
                select(func.max(AuditModel.at)).where(
                    AuditModel.action == LOGIN_ACTION,
                    AuditModel.actor == username,
                    AuditModel.status_code < 400,
                    AuditModel.at > since,
                )
            )
        ).scalar()
        by_user = await self._failures(session, AuditModel.actor == username, last_success or since)
        by_address = await self._failures(session, AuditModel.source_ip == address, since)
        wait = max(
            retry_after(by_user, self.per_user, self.window, now),
            retry_after(by_address, self.per_address, self.window, now),
        )
        if wait > 0:
            raise TooManyAttempts(wait)

    async def _failures(
        self, session: AsyncSession, who: ColumnElement[bool], since: datetime
    ) -> list[datetime]:
        rows = await session.execute(
            select(AuditModel.at)
            .where(
                AuditModel.action == LOGIN_ACTION,
                AuditModel.status_code == _FAILED,
                AuditModel.at > since,
                who,
            )
            .order_by(AuditModel.at)
        )
        return list(rows.scalars())


def retry_after(failures: Sequence[datetime], limit: int, window: float, now: datetime) -> float:
    """Seconds until fewer than `limit` of `failures` (in time order, all within the
    window) are left in it; 0 when already fewer."""
    if len(failures) < limit:
        return 0.0
    oldest_that_counts = failures[len(failures) - limit]
    return max(0.0, (oldest_that_counts - now).total_seconds() + window)
