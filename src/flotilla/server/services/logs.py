"""Reading task logs: whole files, tails, and live follow.

Logs live on the node (`main.log`, `setup.log` per task); the backend says where.
Following polls the file's size, so it works the same for a file still being
written and one that is complete, and ends when the task has finished."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

_CHUNK = 64 * 1024


def read_log(path: Path, tail_lines: int | None = None) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    text = data.decode(errors="replace")
    if tail_lines is not None:
        lines = text.splitlines(keepends=True)
        text = "".join(lines[-tail_lines:])
    return text


async def follow_log(
    path: Path,
    is_finished: Callable[[], Awaitable[bool]],
    poll_seconds: float = 0.2,
    check_every: int = 5,
) -> AsyncIterator[bytes]:
    """Yield the file's bytes as they are written, until the task has finished and
    everything it wrote has been sent."""
    offset = 0
    polls = 0
    while True:
        chunk = _read_from(path, offset)
        if chunk:
            offset += len(chunk)
            yield chunk
            continue
        polls += 1
        if (polls % check_every == 0 or polls == 1) and await is_finished():
            while tail := _read_from(path, offset):  # what was written meanwhile
                offset += len(tail)
                yield tail
            return
        await asyncio.sleep(poll_seconds)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(_CHUNK)
    except FileNotFoundError:
        return b""
