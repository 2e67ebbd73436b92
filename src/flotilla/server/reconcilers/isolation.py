"""Per-object failure isolation for the reconcilers: one object whose step fails
(a stored spec that no longer validates, a value the code did not expect) is
set aside with its own back-off and an error event, and every other object goes
on. Without it, one user's bad row stops a loop for everyone.

Every reconciler that handles many objects in one step uses a `Quarantine`:

- `blame(key)` wraps one object's work; an exception there becomes
  `ObjectFailed(key)` (connection-level database errors and `TemporaryError`
  pass through unchanged: they are nobody's object's fault, and the loop's own
  back-off in `loop.py` handles them).
- Reconcilers that work in one transaction for all objects run it through
  `rerun`: when an object fails, the whole transaction has rolled back (so none
  of the failed object's half-done changes are kept), the object is held, and
  the step runs again without it. A healthy step still costs one transaction.
- `holds(key)` says whether an object is backing off; a new `version` of the
  object (the user applied a fixed recipe) ends its back-off at once.

The back-off lives in memory, per process: 5 s, doubling to 5 min, each with
jitter (x0.5-1). After a restart a bad object is tried once more, fails once
more and is held again; nothing is lost by not persisting it, and no table
changes for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import TemporaryError
from flotilla.server.context import ServerContext
from flotilla.server.db.models import RunModel
from flotilla.server.services.events import record_event

log = logging.getLogger("flotilla.reconcilers")
T = TypeVar("T")
BASE_BACKOFF = 5.0
MAX_BACKOFF = 300.0
MAX_MESSAGE = 1000
# Failures that are the infrastructure's, not an object's: the loop backs off.
NOT_THE_OBJECTS_FAULT: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    OperationalError,
    InterfaceError,
    TemporaryError,
)


class ObjectFailed(Exception):
    """One object's work raised `error`."""

    def __init__(self, key: str, error: BaseException, version: object = None) -> None:
        super().__init__(f"{key}: {error!r}")
        self.key = key
        self.error = error
        self.version = version


@dataclass
class Failure:
    """What `Quarantine.failed` decided: hold `key` for `delay` seconds. `new` is
    true when its message differs from the last one recorded for it (record an
    event then, not at every retry)."""

    key: str
    message: str
    delay: float
    new: bool

    @property
    def event_message(self) -> str:
        return f"reconciling failed, retrying in {self.delay:.0f}s: {self.message}"


@dataclass
class _Held:
    failures: int
    until: float
    version: object
    message: str


def describe(error: BaseException) -> str:
    """A one-line, bounded account of an error, never empty."""
    text = " ".join(str(error).split()) or repr(error)
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


class Quarantine:
    def __init__(
        self,
        loop: str,
        base: float = BASE_BACKOFF,
        cap: float = MAX_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = lambda: random.uniform(0.5, 1.0),
    ) -> None:
        self.loop = loop
        self.base = base
        self.cap = cap
        self.clock = clock
        self.jitter = jitter
        self._held: dict[str, _Held] = {}

    def holds(self, key: str, version: object = None) -> bool:
        """True while `key` backs off. A different `version` than the one that
        failed lets it through at once."""
        held = self._held.get(key)
        if held is None:
            return False
        if held.version != version:
            del self._held[key]
            return False
        return self.clock() < held.until

    def failed(self, key: str, error: BaseException, version: object = None) -> Failure:
        held = self._held.get(key)
        failures = held.failures + 1 if held is not None and held.version == version else 1
        delay = min(self.cap, self.base * 2 ** (failures - 1)) * self.jitter()
        message = describe(error)
        new = held is None or held.message != message or held.version != version
        self._held[key] = _Held(failures, self.clock() + delay, version, message)
        log.warning(
            "%s: %s failed (%d in a row), retrying in %.0fs: %s",
            self.loop,
            key,
            failures,
            delay,
            message,
            exc_info=error if new else None,
        )
        return Failure(key, message, delay, new)

    def succeeded(self, key: str) -> None:
        self._held.pop(key, None)

    def keep_only(self, live: Iterable[str]) -> None:
        """Forget objects that are gone (deleted recipes, finished runs)."""
        alive = set(live)
        self._held = {k: v for k, v in self._held.items() if k in alive}

    def held_keys(self) -> set[str]:
        return set(self._held)

    @contextmanager
    def blame(self, key: str, version: object = None) -> Iterator[None]:
        """Run one object's work; its exception becomes `ObjectFailed(key)`."""
        try:
            yield
        except NOT_THE_OBJECTS_FAULT:
            raise
        except Exception as e:
            raise ObjectFailed(key, e, version) from e

    async def rerun(self, attempt: Callable[[], Awaitable[T]]) -> tuple[T, list[Failure]]:
        """Run `attempt` (one transaction over many objects, each under `blame`,
        skipping those `holds`) until no object fails; each failure holds its
        object first. Returns the result and the failures, for their events."""
        failures: list[Failure] = []
        while True:
            try:
                return await attempt(), failures
            except ObjectFailed as e:
                if any(f.key == e.key for f in failures):
                    raise  # the attempt does not skip held objects: a bug, not a loop
                failures.append(self.failed(e.key, e.error, e.version))


async def record_failures(
    session: AsyncSession,
    failures: Iterable[Failure],
    actor: str,
    now: datetime,
    *,
    keyed_by_run: bool = False,
) -> None:
    """An error event on each object whose failure is new (`Failure.new`): on the
    recipe the key names, or on the run (and its recipe) with `keyed_by_run`."""
    for failure in failures:
        if not failure.new:
            continue
        recipe_id: str | None = failure.key
        run_id = None
        if keyed_by_run:
            run = await session.get(RunModel, failure.key)
            recipe_id, run_id = (run.recipe_id if run is not None else None), failure.key
        record_event(
            session,
            kind="error",
            message=failure.event_message,
            actor=actor,
            now=now,
            recipe_id=recipe_id,
            run_id=run_id,
        )


async def report_failures(
    ctx: ServerContext, failures: list[Failure], actor: str, *, keyed_by_run: bool = False
) -> None:
    """`record_failures` in a transaction of its own, opened only if one is new."""
    if any(f.new for f in failures):
        async with ctx.transaction() as session:
            await record_failures(
                session, failures, actor, ctx.clock.now(), keyed_by_run=keyed_by_run
            )
