"""The metering arithmetic (`core.metering`): the per-second ceil rule, node shares,
cutting intervals at windows and UTC midnight, aggregation and CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from flotilla.core.metering import (
    UsageRecord,
    aggregate,
    billed_seconds,
    cents,
    csv_columns,
    month_start,
    node_share,
    render_csv,
    split_by_day,
)

T0 = datetime(2026, 11, 3, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def record(
    start: datetime,
    end: datetime | None,
    *,
    user: str = "alice",
    project: str | None = "vision",
    owner: str | None = None,
    owner_kind: str = "user",
    gpus: int = 8,
    share: float = 1.0,
    price: float = 31.2,
    spot: bool = False,
    run_id: str = "r1",
    instance_type: str = "h100-80gb-sxm-ib.8x",
) -> UsageRecord:
    return UsageRecord(
        run_id=run_id,
        user=user,
        owner=owner or user,
        owner_kind=owner_kind,
        project=project,
        instance_type=instance_type,
        gpus=gpus,
        spot=spot,
        share=share,
        price_per_hour=price,
        started_at=start,
        ended_at=end,
    )


@pytest.mark.parametrize(
    ("length", "billed"),
    [
        (0.0, 0),
        (-5.0, 0),
        (0.000001, 1),
        (0.5, 1),
        (1.0, 1),
        (2.0, 2),
        (2.000001, 3),
        (59.999999, 60),
        (3600.0, 3600),
    ],
)
def test_billed_seconds_round_up_to_whole_seconds(length: float, billed: int) -> None:
    assert billed_seconds(T0, at(length)) == billed


def test_billing_is_exact_on_microseconds_not_floats() -> None:
    # 0.1 + 0.2 style float error must not turn 3 whole seconds into 4.
    start = datetime(2026, 11, 3, 12, 0, 0, 100000, tzinfo=UTC)
    assert billed_seconds(start, start + timedelta(seconds=3)) == 3
    assert billed_seconds(start, start + timedelta(seconds=3, microseconds=1)) == 4


@pytest.mark.parametrize(
    ("task_gpus", "node_gpus", "task_cpus", "node_cpus", "share"),
    [
        (8, 8, None, 0, 1.0),
        (2, 8, None, 176, 0.25),
        (1, 8, 100.0, 176, 0.125),  # GPUs decide when the task holds some
        (0, 0, 4.0, 16, 0.25),
        (0, 0, None, 16, 1 / 16),  # no CPU request: one core
        (0, 0, 64.0, 16, 1.0),  # capped at the whole node
        (0, 8, 22.0, 176, 0.125),  # a CPU task on a GPU node: its CPUs
        (0, 8, None, 0, 0.0),  # nothing known on a GPU node: none of its GPUs
        (0, 0, None, 0, 1.0),  # nothing known on a CPU node: the node
    ],
)
def test_node_share(
    task_gpus: int, node_gpus: int, task_cpus: float | None, node_cpus: int, share: float
) -> None:
    assert node_share(task_gpus, node_gpus, task_cpus, node_cpus) == pytest.approx(share)


def test_split_by_day_cuts_at_utc_midnight() -> None:
    start = datetime(2026, 11, 3, 23, 59, 58, 500000, tzinfo=UTC)
    end = datetime(2026, 11, 4, 0, 0, 3, tzinfo=UTC)
    assert split_by_day(start, end) == [(date(2026, 11, 3), 1.5), (date(2026, 11, 4), 3.0)]
    three_days = split_by_day(
        datetime(2026, 11, 3, 12, tzinfo=UTC), datetime(2026, 11, 5, 6, tzinfo=UTC)
    )
    assert three_days == [
        (date(2026, 11, 3), 43200.0),
        (date(2026, 11, 4), 86400.0),
        (date(2026, 11, 5), 21600.0),
    ]
    # A time in another zone is cut at UTC midnight, not local midnight.
    east = datetime(2026, 11, 4, 0, 30, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    assert [d for d, _ in split_by_day(east, east + timedelta(hours=1))] == [date(2026, 11, 4)]


def test_a_day_split_keeps_the_whole_billed_seconds() -> None:
    # 2.5 s across midnight bills 3 s, spread over the interval: 0.5 s on the first
    # day bills 0.6 s, 2 s on the second bills 2.4 s.
    start = datetime(2026, 11, 3, 23, 59, 59, 500000, tzinfo=UTC)
    rec = record(start, start + timedelta(seconds=2.5), price=3600.0)
    report = aggregate([rec], ["day"], now=start + timedelta(days=1))
    rows = report.view_rows()
    assert [(r["day"], r["node_seconds"]) for r in rows] == [
        ("2026-11-03", 0.6),
        ("2026-11-04", 2.4),
    ]
    assert report.total.node_seconds == pytest.approx(3.0)
    assert report.total.cost == pytest.approx(3.0)  # $3600/h is $1/s


def test_a_window_ending_just_after_a_record_bills_all_of_it() -> None:
    # Ended 2.1 s after it started, reported 0.2 s later: the whole 3 s count.
    rec = record(at(0), at(2.1))
    report = aggregate([rec], ["user"], now=at(2.3), since=at(-60), until=at(2.3))
    assert report.total.gpu_seconds == pytest.approx(24.0)
    half = aggregate([rec], ["user"], now=at(60), since=at(0), until=at(1.05))
    assert half.total.gpu_seconds == pytest.approx(12.0)


def test_aggregate_by_user_and_project_with_totals() -> None:
    recs = [
        record(at(0), at(10), user="alice", project="vision", run_id="a1"),
        record(at(0), at(2.2), user="alice", project="nlp", run_id="a2", spot=True, price=12.8),
        record(at(5), at(9), user="bob", project="vision", run_id="b1", gpus=2, share=0.25),
    ]
    report = aggregate(recs, ["user", "project"], now=at(100))
    rows = {(r["user"], r["project"]): r for r in report.view_rows()}
    assert set(rows) == {("alice", "nlp"), ("alice", "vision"), ("bob", "vision")}
    assert rows["alice", "vision"]["gpu_seconds"] == 80.0
    assert rows["alice", "nlp"]["gpu_seconds"] == 24.0  # 2.2 s bills 3
    assert (
        rows["alice", "nlp"]["spot_cost"] == rows["alice", "nlp"]["cost"] == cents(3 * 12.8 / 3600)
    )
    assert rows["bob", "vision"]["node_seconds"] == 1.0  # 4 s x a quarter node
    assert rows["bob", "vision"]["runs"] == 1
    expected = 10 * 31.2 / 3600 + 3 * 12.8 / 3600 + 4 * 31.2 / 3600
    assert report.total.cost == pytest.approx(expected)
    assert report.total.view()["runs"] == 3
    assert report.total.view()["on_demand_cost"] == cents(14 * 31.2 / 3600)


def test_group_key_is_the_owning_group_or_none() -> None:
    recs = [
        record(at(0), at(1), user="alice", owner="ml", owner_kind="group"),
        record(at(0), at(1), user="alice"),
    ]
    rows = aggregate(recs, ["group"], now=at(10)).view_rows()
    assert [r["group"] for r in rows] == [None, "ml"]  # None sorts first


def test_open_records_count_up_to_now_and_windows_clip() -> None:
    rec = record(at(0), None, price=3600.0)  # $1 a second
    assert aggregate([rec], ["user"], now=at(4.5)).total.cost == pytest.approx(5.0)
    windowed = aggregate([rec], ["user"], now=at(100), since=at(10), until=at(20))
    assert windowed.total.node_seconds == pytest.approx(10.0)
    assert aggregate([rec], ["user"], now=at(100), since=at(200)).rows == {}


def test_rows_round_to_cents_but_the_total_sums_unrounded() -> None:
    # Three runs of $0.004 each: every row shows $0.00, the total $0.01 ($0.012).
    recs = [record(at(0), at(1), price=14.4, run_id=f"r{i}", user=f"u{i}") for i in range(3)]
    report = aggregate(recs, ["user"], now=at(10))
    assert [r["cost"] for r in report.view_rows()] == [0.0, 0.0, 0.0]
    assert report.total.view()["cost"] == 0.01
    assert cents(0.005) == 0.01 and cents(0.0049) == 0.0 and cents(100.015) == 100.02


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown usage key"):
        aggregate([], ["colour"], now=T0)


def test_csv_has_a_header_row_and_empty_cells_for_none() -> None:
    recs = [record(at(0), at(3), project=None), record(at(0), at(1), user="bob")]
    report = aggregate(recs, ["user", "project"], now=at(10))
    text = render_csv(report.view_rows(), csv_columns(["user", "project"]))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0].startswith("user,project,node_seconds,gpu_seconds")
    assert [(r["user"], r["project"], r["gpu_seconds"]) for r in rows] == [
        ("alice", "", "24.0"),
        ("bob", "vision", "8.0"),
    ]


def test_month_start_is_utc_midnight_on_the_first() -> None:
    assert month_start(datetime(2026, 11, 30, 23, 59, tzinfo=UTC)) == datetime(
        2026, 11, 1, tzinfo=UTC
    )
    # 00:30 on Dec 1 in UTC+2 is still November in UTC.
    local = datetime(2026, 12, 1, 0, 30).replace(tzinfo=timezone(timedelta(hours=2)))
    assert month_start(local) == datetime(2026, 11, 1, tzinfo=UTC)
