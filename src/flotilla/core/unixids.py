"""Unix identities of Flotilla users and groups: the numbers (UIDs/GIDs) they get,
once and never again, and the account names they have on nodes. Pure: the store
keeps the high-water mark and calls `next_unix_ids` in the transaction that
inserts the user or group (`server/db/unix_ids.py`); the launch path maps names
with `unix_name` (`server/services/runs/launch.py`).

One number space for users and groups. A user's primary group is their private
group (Debian's user private groups): its GID is the user's UID, so one allocation
per user gives uid == gid. Flotilla groups take their GIDs from the same counter,
so a group's GID is never a user's private GID and no number means two things.

Default range 2,001,000,000 - 2,147,000,000: above every range a node may already
use, below 2^31. Distributions give users 1000-60000 and keep 60001-65535 for
themselves (65534 nobody); login.defs hands out subordinate IDs for rootless
containers from 100000 up to 600100000 (a task sharing a number with someone's
subordinate range could own files in their containers); systemd-nspawn picks
container ranges in 524288-1879048191; SSSD maps Active Directory accounts into
200000-2000200000 by default. Below 2^31 because tools that keep IDs in signed
32-bit integers misread anything above (systemd calls that range off limits),
and under systemd's foreign-image range (2147352576-2147418111). 146 million
numbers are enough for any installation; admins who already run a directory move
the range with FLOTILLA_UID_MIN/FLOTILLA_UID_MAX.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

DEFAULT_UID_MIN = 2_001_000_000
DEFAULT_UID_MAX = 2_147_000_000
# The lowest the range may start (distributions' system accounts are below) and
# the highest number it may reach (2^31 - 1 is -1 for signed 32-bit readers).
LOWEST_UID = 1000
HIGHEST_UID = 2**31 - 2
# Never given even inside the range: 16-bit -1 and `nobody`.
RESERVED = frozenset({65534, 65535})


class UnixIdsExhausted(Exception):
    """The configured range has no number left."""


@dataclass(frozen=True)
class UnixIdRange:
    """FLOTILLA_UID_MIN..FLOTILLA_UID_MAX, both included."""

    first: int = DEFAULT_UID_MIN
    last: int = DEFAULT_UID_MAX

    def __post_init__(self) -> None:
        if not LOWEST_UID <= self.first <= self.last <= HIGHEST_UID:
            raise ValueError(
                f"FLOTILLA_UID_MIN ({self.first}) and FLOTILLA_UID_MAX ({self.last}) must "
                f"satisfy {LOWEST_UID} <= FLOTILLA_UID_MIN <= FLOTILLA_UID_MAX <= {HIGHEST_UID}"
            )


def next_unix_ids(high_water: int | None, id_range: UnixIdRange, count: int = 1) -> list[int]:
    """The next `count` numbers after `high_water` (the highest ever given; None:
    none yet), in `id_range`. Numbers at or below the high-water mark are never
    given again, even when the range moved below it; a range raised above it
    starts at its own first number. UnixIdsExhausted when fewer than `count` are
    left."""
    given: list[int] = []
    candidate = id_range.first if high_water is None else max(high_water + 1, id_range.first)
    while len(given) < count:
        if candidate > id_range.last:
            raise UnixIdsExhausted(
                f"no Unix UID/GID left in FLOTILLA_UID_MIN..FLOTILLA_UID_MAX "
                f"({id_range.first}..{id_range.last}; the highest given is {high_water}): "
                "an admin must raise FLOTILLA_UID_MAX (numbers are never reused)"
            )
        if candidate not in RESERVED:
            given.append(candidate)
        candidate += 1
    return given


# Account names on nodes. Every Flotilla account gets the prefix: a node has
# accounts of its own (root, daemon, slurm, postgres, ...) that a bare Flotilla
# name could shadow or be shadowed by, and then `ssh alice@node` or Slurm's
# name-to-UID lookup would resolve to the wrong account. With the prefix,
# Flotilla's accounts are a namespace of their own, recognisable in `ps` and `ls`.
UNIX_NAME_PREFIX = "flo-"
# utmp keeps 32 bytes with the terminating NUL; useradd takes 32, systemd 31.
UNIX_NAME_MAX = 31
# What every tool accepts (shadow's default NAME_REGEX, systemd's strict rules):
# no '.', which `chown user.group` reads as a separator.
_PLAIN = re.compile(r"[a-z0-9_-]+")
_NOT_PLAIN = re.compile(r"[^a-z0-9_-]")
_READABLE = 14  # characters of the name kept in a hashed form


def unix_name(name: str) -> str:
    """The Unix user (and private group) name of a Flotilla user, or the Unix
    group name of a Flotilla group; stable, and injective over Flotilla names
    (users and groups share that namespace, so they share this one).

    `flo-NAME` when that is a portable name of at most 30 characters. Otherwise
    (a '.', a long name) exactly 31 characters: `flo-`, the name's first 14
    characters with anything else as '_', '-', and a base32 SHA-256 of the whole
    name filling the rest (at least 12 characters, 60 bits). The two forms never
    meet (their lengths differ), the first is one-to-one, and the second differs
    for different names unless SHA-256 collides."""
    plain = UNIX_NAME_PREFIX + name
    if _PLAIN.fullmatch(name) and len(plain) < UNIX_NAME_MAX:
        return plain
    readable = _NOT_PLAIN.sub("_", name[:_READABLE])
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode().lower()
    head = f"{UNIX_NAME_PREFIX}{readable}-"
    return head + digest[: UNIX_NAME_MAX - len(head)]
