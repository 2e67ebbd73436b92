"""Cron schedules: validation and "when is the next tick" arithmetic.

Accepts standard 5-field cron, 6-field cron with seconds last (croniter's form),
the `@hourly`-style aliases and Saturn's `@every <duration>`. Called by the recipe
validator and by the cron reconciler.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter

from flotilla.core.units import parse_duration

_EVERY = "@every"


def validate_schedule(schedule: str) -> None:
    """Raise ValueError with a readable message if `schedule` is not a schedule."""
    text = schedule.strip()
    if text.startswith(_EVERY):
        seconds = parse_duration(text[len(_EVERY) :].strip())
        if seconds < 1:
            raise ValueError("@every needs an interval of at least 1s")
        return
    if not croniter.is_valid(text):
        raise ValueError(
            f"{schedule!r} is not a cron schedule (examples: '0 * * * *', '@daily', '@every 4h')"
        )


def next_tick(schedule: str, after: datetime) -> datetime:
    """The first tick strictly after `after` (timezone-aware UTC in, UTC out)."""
    text = schedule.strip()
    if text.startswith(_EVERY):
        return after + timedelta(seconds=parse_duration(text[len(_EVERY) :].strip()))
    result: datetime = croniter(text, after).get_next(datetime)
    return result


@dataclass(frozen=True)
class TickDecision:
    fire: bool
    next_at: datetime
    missed: int  # ticks that fell while nobody was looking, not replayed


def decide_tick(schedule: str, next_at: datetime, now: datetime) -> TickDecision:
    """Whether a job whose next tick was due at `next_at` fires now, and its next tick.

    Missed ticks (the server was down) are collapsed into one run rather than
    replayed as a burst; the next tick is the first one after `now`.
    """
    if now < next_at:
        return TickDecision(False, next_at, 0)
    missed = 0
    probe = next_tick(schedule, next_at)
    while probe <= now and missed < 1000:
        missed += 1
        probe = next_tick(schedule, probe)
    return TickDecision(True, next_tick(schedule, now), missed)
