"""Password hashing with argon2id (argon2-cffi's defaults, RFC 9106's second
recommendation). Called by `sessions.password_login` and by whatever sets a
user's password.

argon2 takes tens of milliseconds of CPU on purpose: async callers run these in a
worker thread (`asyncio.to_thread`) so the event loop keeps serving.
"""

from __future__ import annotations

from typing import NamedTuple

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# Verified against when the user is unknown or has no password, so that a wrong
# user name costs as long as a wrong password and timing reveals nobody's existence.
_DUMMY_HASH = _hasher.hash("flotilla: no such user")


class PasswordCheck(NamedTuple):
    ok: bool
    # A fresh hash when the stored one used older parameters: store it.
    rehashed: str | None = None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> PasswordCheck:
    """Whether `password` matches `stored_hash` (None: no password set, always
    False after the same work). argon2's comparison is constant-time."""
    try:
        _hasher.verify(stored_hash or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):  # a mismatch is a VerificationError
        return PasswordCheck(False)
    if stored_hash is None:
        return PasswordCheck(False)
    if _hasher.check_needs_rehash(stored_hash):
        return PasswordCheck(True, _hasher.hash(password))
    return PasswordCheck(True)
