"""Reading task logs: whole files, tails, and live follow.

Logs live on the node (`main.log`, `setup.log` per task); the backend says where.
Following polls the file's size, so it works the same for a file still being
written and one that is complete, and ends when the task has finished."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from flotilla.core.redact import Redactor, StreamRedactor
from flotilla.errors import ClientError
from flotilla.server.db.models import RunModel

_CHUNK = 64 * 1024


NO_SECRETS = Redactor([])


def check_logs_kept(run: RunModel) -> None:
    """410 for a run whose logs retention removed (`reconcilers/retention.py`)."""
    if run.logs_removed_at is not None:
        raise ClientError(
            f"the logs of run {run.id} were removed on {run.logs_removed_at:%Y-%m-%d} "
            "(FLOTILLA_LOG_RETENTION_DAYS)",
            "logs_removed",
            410,
        )


def read_log(path: Path, redactor: Redactor, tail_lines: int | None = None) -> str:
    """The file's text with the run's secrets masked (`redactor`)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    text = redactor.scrub(data.decode(errors="replace"))
    if tail_lines is not None:
        lines = text.splitlines(keepends=True)
        text = "".join(lines[-tail_lines:])
    return text


async def follow_log(
    path: Path,
    is_finished: Callable[[], Awaitable[bool]],
    redactor: Redactor,
    poll_seconds: float = 0.2,
    check_every: int = 5,
) -> AsyncIterator[bytes]:
    """Yield the file's bytes as they are written, secrets masked, until the task
    has finished and everything it wrote has been sent."""
    offset = 0
    polls = 0
    masked = StreamRedactor(redactor)
    while True:
        chunk = _read_from(path, offset)
        if chunk:
            offset += len(chunk)
            if out := masked.feed(chunk):
                yield out
            continue
        polls += 1
        if (polls % check_every == 0 or polls == 1) and await is_finished():
            while tail := _read_from(path, offset):  # what was written meanwhile
                offset += len(tail)
                if out := masked.feed(tail):
                    yield out
            if rest := masked.flush():
                yield rest
            return
        await asyncio.sleep(poll_seconds)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(_CHUNK)
    except FileNotFoundError:
        return b""
