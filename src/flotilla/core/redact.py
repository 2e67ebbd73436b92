"""Masking secret values in text a user reads back (run logs, pod logs).

A run's processes get its secrets in plain text and may print them; everything the
API returns from their logs goes through a `Redactor` built from those secrets.
Besides each whole value, each line of a multi-line value (a PEM key, a kubeconfig)
and the value without surrounding whitespace are masked, since programs print them
piecemeal. Values shorter than `MIN_LENGTH` are not masked: masking every "a" in a
log would hide the log, not the secret.

`StreamRedactor` does the same for a byte stream read in chunks, holding back a
chunk's tail while it could still be the start of a secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "********"
MIN_LENGTH = 4


def _fragments(values: Iterable[str]) -> list[str]:
    found: set[str] = set()
    for value in values:
        for candidate in (value, *(line.strip() for line in [value, *value.splitlines()])):
            if len(candidate) >= MIN_LENGTH:
                found.add(candidate)
    # Longest first, so a value is masked whole before any of its lines.
    return sorted(found, key=len, reverse=True)


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        self.fragments = _fragments(secrets)
        self._pattern = (
            re.compile("|".join(re.escape(f) for f in self.fragments)) if self.fragments else None
        )
        self._byte_fragments = [f.encode() for f in self.fragments]

    def __bool__(self) -> bool:
        return self._pattern is not None

    def scrub(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

    def scrub_bytes(self, data: bytes) -> bytes:
        if self._pattern is None:
            return data
        return self.scrub(data.decode(errors="surrogateescape")).encode(errors="surrogateescape")

    def pending_prefix(self, data: bytes) -> int:
        """How many bytes at the end of `data` could begin a secret (0 if none)."""
        longest = 0
        for fragment in self._byte_fragments:
            for size in range(min(len(fragment) - 1, len(data)), longest, -1):
                if data.endswith(fragment[:size]):
                    longest = size
                    break
        return longest


class StreamRedactor:
    """Masks secrets in a stream of chunks, even when one spans two chunks."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self.redactor:
            return chunk
        data = self.redactor.scrub_bytes(self._held + chunk)
        keep = self.redactor.pending_prefix(data)
        self._held = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep] if keep else data

    def flush(self) -> bytes:
        rest, self._held = self._held, b""
        return self.redactor.scrub_bytes(rest)
