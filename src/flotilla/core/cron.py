"""Cron schedules: validation and "when is the next tick" arithmetic.

Accepts standard 5-field cron (minute hour day month weekday), the `@hourly`-style
aliases and Saturn's `@every <duration>`. Seconds and years (croniter's 6- and
7-field forms) are refused: a schedule fires at most once a minute unless `@every`
says otherwise, and never more often than the server's minimum interval
(`check_interval`). Called by the recipe validator, by the services that enable a
schedule and by the cron reconciler.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadDateError, croniter

from flotilla.core.units import parse_duration

_EVERY = "@every"
_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
CRON_FIELDS = 5
# The longest `@every`: a year, far inside what a datetime can add.
MAX_EVERY_SECONDS = 366 * 86400.0
# A standard cron schedule cannot fire more often than this.
CRON_RESOLUTION = 60.0
# Whether a cron schedule ever fires, and how close its ticks come, do not depend
# on where one starts looking; a fixed start keeps validation deterministic.
_REFERENCE = datetime(2001, 1, 1, tzinfo=UTC)
# How far `check_interval` looks at a cron schedule's ticks: more than a day of
# them (1440 at most), and every day boundary of a week.
_SAMPLE_TICKS = 1500
_SAMPLE_SPAN = timedelta(days=8)
_EXAMPLES = "examples: '0 * * * *', '@daily', '@every 4h'"


def validate_schedule(schedule: str) -> None:
    """Raise ValueError with a readable message if `schedule` is not a schedule
    that fires."""
    text = schedule.strip()
    if text.startswith(_EVERY):
        _every_seconds(text)
        return
    if text.startswith("@"):
        if text not in _ALIASES:
            raise ValueError(f"{schedule!r} is not one of {', '.join(_ALIASES)} or @every")
    elif len(text.split()) != CRON_FIELDS:
        raise ValueError(
            f"{schedule!r} has {len(text.split())} fields; a cron schedule has 5 (minute "
            f"hour day month weekday), without seconds or years ({_EXAMPLES})"
        )
    if not croniter.is_valid(text):
        raise ValueError(f"{schedule!r} is not a cron schedule ({_EXAMPLES})")
    try:
        next_tick(text, _REFERENCE)
    except CroniterBadDateError:
        raise ValueError(f"{schedule!r} never fires: no month has that day") from None


def check_interval(schedule: str, minimum: float) -> None:
    """Raise ValueError if a valid `schedule` can fire less than `minimum` seconds
    after its previous tick (the admin's floor, FLOTILLA_MIN_SCHEDULE_INTERVAL)."""
    shortest = _shortest_interval(schedule.strip(), minimum)
    if shortest < minimum:
        raise ValueError(
            f"{schedule!r} fires {shortest:g}s after a previous tick; this server's "
            f"minimum interval between ticks is {minimum:g}s"
        )


def _shortest_interval(text: str, minimum: float) -> float:
    if text.startswith(_EVERY):
        return _every_seconds(text)
    if minimum <= CRON_RESOLUTION:
        return CRON_RESOLUTION  # nothing to look for: a minute is the least there is
    ticks = croniter(text, _REFERENCE)
    previous: datetime = ticks.get_next(datetime)
    end = previous + _SAMPLE_SPAN
    shortest = float("inf")
    for _ in range(_SAMPLE_TICKS):
        tick: datetime = ticks.get_next(datetime)
        shortest = min(shortest, (tick - previous).total_seconds())
        if shortest < minimum or tick > end:
            break
        previous = tick
    return shortest


def _every_seconds(text: str) -> float:
    seconds = parse_duration(text[len(_EVERY) :].strip())
    if seconds < 1:
        raise ValueError("@every needs an interval of at least 1s")
    if seconds > MAX_EVERY_SECONDS:
        raise ValueError(f"@every allows an interval of at most {MAX_EVERY_SECONDS / 86400:g}d")
    return seconds


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
