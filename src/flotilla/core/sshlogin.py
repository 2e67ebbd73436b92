"""The SSH login name that picks a task (`start_ssh`): `NAME`, `NAME.RUN`,
`NAME.RUN.RANK`, each optionally `OWNER/NAME…`. Pure: the gateway resolves it
(`server/ssh/targets.py`), `flo ssh` checks it before handing it to OpenSSH."""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMS = "NAME, NAME.RUN, NAME.RUN.RANK or OWNER/NAME"
_LOGIN = re.compile(
    r"(?:(?P<owner>[a-z0-9][a-z0-9-]{0,63})/)?(?P<name>[a-z0-9][a-z0-9-]{0,63})"
    r"(?:\.(?P<number>\d{1,9}))?(?:\.(?P<rank>\d{1,9}))?"
)


@dataclass(frozen=True)
class Login:
    name: str
    owner: str | None = None
    number: int | None = None
    rank: int = 0


def parse_login(username: str) -> Login:
    """The login, or ValueError saying which forms work."""
    match = _LOGIN.fullmatch(username)
    if not match:
        raise ValueError(f"{username!r} names no deployment or job; log in as {FORMS}")
    number = match.group("number")
    return Login(
        name=match.group("name"),
        owner=match.group("owner"),
        number=int(number) if number is not None else None,
        rank=int(match.group("rank") or 0),
    )
