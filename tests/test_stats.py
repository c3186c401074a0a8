"""Tests of the statistics: window splitting, percentiles, the rollup trigger and ``status``.

Database tests run on SQLite and PostgreSQL. Runs are written through the
Recorder with chosen start times, or by plain SQL as other clients write.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from cronledger.bucket_cache import cache_for, forget, read_states
from cronledger.recorder import Recorder, get_recorder, utc_now
from cronledger.stats import (
    ServiceStats,
    WindowParts,
    binned_percentile,
    cache_key,
    duration_bin,
    nearest_rank,
    read_ahead,
    service_stats,
    split_window,
)
from cronledger.store.executions import FinishEvent, StartEvent
from cronledger.store.migrate import ensure_schema
from cronledger.store.rollups import rebuild_rollups
from cronledger.store.tables import cron_executions, cron_services

pytestmark = pytest.mark.timeout(120)

BASE = datetime(2026, 3, 1, tzinfo=UTC)

# A binned percentile is off the exact one by at most this share of
# (exact + 1 ms), plus 0.5 ms of rounding (see test_stats_properties).
BIN_RELATIVE_ERROR = 2 ** (1 / 8) - 1

LATEST_COLUMNS = (
    "last_run_at",
    "last_status",
    "last_success_at",
    "last_failure_at",
    "last_error",
    "streak_status",
    "streak_length",
)


def at(hours: float = 0, **offset: float) -> datetime:
    """Return BASE plus ``hours`` and any other timedelta arguments."""
    return BASE + timedelta(hours=hours, **offset)


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


# -- writing runs -------------------------------------------------------------


def start_run(recorder: Recorder, service: str, started_at: datetime) -> StartEvent:
    event = StartEvent(uuid.uuid4().hex, service, started_at, "test-host", 1)
    recorder.start(event)
    assert recorder.spool.pending() == [], f"start of {service} at {started_at} was spooled"
    return event


def finish_run(
    recorder: Recorder,
    start: StartEvent,
    status: str = "completed",
    duration_ms: int = 100,
    items: int = 1,
    error: str | None = None,
) -> None:
    recorder.finish(
        FinishEvent(
            start=start,
            status=status,
            finished_at=start.started_at + timedelta(milliseconds=duration_ms),
            duration_ms=duration_ms,
            items_processed=items,
            error_message=error,
        )
    )
    assert recorder.spool.pending() == [], f"finish of {start.service_name} was spooled"


def record_run(
    recorder: Recorder,
    service: str,
    started_at: datetime,
    status: str = "completed",
    duration_ms: int = 100,
    items: int = 1,
    error: str | None = None,
) -> StartEvent:
    start = start_run(recorder, service, started_at)
    finish_run(recorder, start, status, duration_ms, items, error)
    return start


def run_id(engine: Engine, start: StartEvent) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                select(cron_executions.c.id).where(cron_executions.c.run_key == start.run_key)
            ).scalar_one()
        )


def sql_time(engine: Engine, moment: datetime) -> str:
    """Return ``moment`` as plain SQL writes it: aware on PostgreSQL, naive UTC on SQLite."""
    if engine.dialect.name == "postgresql":
        return moment.isoformat(sep=" ")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def execute(engine: Engine, statement: str, **parameters: Any) -> None:
    with engine.begin() as connection:
        connection.execute(text(statement), parameters)


def time_out(engine: Engine, start: StartEvent) -> None:
    """Mark a started run timed_out with the monitor's statement."""
    execute(
        engine,
        "UPDATE cron_executions SET status = 'timed_out', finished_at = :at,"
        " error_message = 'timed out' WHERE id = :id AND status = 'started'",
        at=sql_time(engine, start.started_at + timedelta(hours=1)),
        id=run_id(engine, start),
    )


# -- reading figures ----------------------------------------------------------


def rollup_rows(engine: Engine) -> list[tuple[Any, ...]]:
    """Return cron_rollups, with "no duration" as None.

    The SQLite trigger stores -1 as the maximum of a bucket without a
    duration once a second run joins it. service_stats reads -1 as no maximum.
    """
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT * FROM cron_rollups ORDER BY service_name, granularity, bucket_start")
        ).all()
    return [(*row[:-1], row[-1] if row[-1] is not None and row[-1] >= 0 else None) for row in rows]


def bin_rows(engine: Engine, granularity: str | None = None) -> list[tuple[Any, ...]]:
    """Return the duration bins that contain at least one run."""
    query = "SELECT service_name, granularity, bucket_start, bin, runs FROM cron_duration_bins"
    query += " WHERE runs <> 0"
    if granularity is not None:
        query += f" AND granularity = '{granularity}'"
    with engine.connect() as connection:
        return [
            tuple(row) for row in connection.execute(text(query + " ORDER BY 1, 2, 3, 4")).all()
        ]


def latest(engine: Engine, service: str) -> dict[str, Any]:
    columns = [getattr(cron_services.c, name) for name in LATEST_COLUMNS]
    with engine.connect() as connection:
        row = connection.execute(
            select(*columns).where(cron_services.c.name == service)
        ).one_or_none()
    assert row is not None, f"service {service} is not in cron_services"
    return dict(row._mapping)


def stats_of(engine: Engine, service: str, **window: datetime | None) -> ServiceStats:
    rows = service_stats(engine, service_name=service, **window)
    assert len(rows) == 1, f"service_stats for {service} returned {rows}"
    return rows[0]


@pytest.fixture
def recorder(database_url: str) -> Recorder:
    recorder = get_recorder(database_url)
    ensure_schema(recorder.engine)
    return recorder


# -- split_window -------------------------------------------------------------


def test_split_window_all_time() -> None:
    parts = split_window(None, None)
    assert parts == WindowParts(all_time=True, days=None, hours=(), raw=()), f"{parts}"


def test_split_window_whole_days() -> None:
    parts = split_window(at(0), at(72))
    assert parts.all_time is False, f"{parts}"
    assert parts.days == (epoch(at(0)), epoch(at(72))), f"days {parts.days}"
    assert parts.hours == (), f"hours {parts.hours}"
    assert parts.raw == (), f"raw {parts.raw}"


def test_split_window_ragged_edges() -> None:
    since, until = at(22, minutes=30), at(73, minutes=15)
    parts = split_window(since, until)
    assert parts.raw == ((since, at(23)), (at(73), until)), f"raw {parts.raw}"
    assert parts.hours == (
        (epoch(at(23)), epoch(at(24))),
        (epoch(at(72)), epoch(at(73))),
    ), f"hours {parts.hours}"
    assert parts.days == (epoch(at(24)), epoch(at(72))), f"days {parts.days}"


def test_split_window_across_midnight() -> None:
    parts = split_window(at(23), at(25))
    assert parts.days is None, f"days {parts.days}"
    assert parts.hours == ((epoch(at(23)), epoch(at(25))),), f"hours {parts.hours}"
    assert parts.raw == (), f"raw {parts.raw}"


def test_split_window_sub_second_edges() -> None:
    since, until = at(10, milliseconds=500), at(12, microseconds=250)
    parts = split_window(since, until)
    assert parts.raw == ((since, at(11)), (at(12), until)), f"raw {parts.raw}"
    assert parts.hours == ((epoch(at(11)), epoch(at(12))),), f"hours {parts.hours}"
    assert parts.days is None, f"days {parts.days}"


def test_split_window_microsecond_before_hour() -> None:
    since = at(10, microseconds=-1)
    parts = split_window(since, at(12))
    assert parts.raw == ((since, at(10)),), f"raw {parts.raw}"
    assert parts.hours == ((epoch(at(10)), epoch(at(12))),), f"hours {parts.hours}"


def test_split_window_within_one_hour() -> None:
    since, until = at(10, minutes=10), at(10, minutes=50)
    parts = split_window(since, until)
    assert parts.raw == ((since, until),), f"raw {parts.raw}"
    assert parts.hours == (), f"hours {parts.hours}"
    assert parts.days is None, f"days {parts.days}"


def test_split_window_hour_start_within_hour() -> None:
    # since on the hour, until before the next: no whole hour, only raw rows.
    since, until = at(10), at(10, minutes=59, microseconds=999_999)
    parts = split_window(since, until)
    whole = [(first, last) for first, last in parts.hours if last is None or first < last]
    assert whole == [], f"non-empty hour ranges {whole} in {parts}"
    assert parts.days is None, f"days {parts.days}"
    assert parts.raw == ((since, until),), f"raw {parts.raw}"


def test_split_window_since_only() -> None:
    since = at(22, minutes=30)
    parts = split_window(since, None)
    assert parts.raw == ((since, at(23)),), f"raw {parts.raw}"
    assert parts.hours == ((epoch(at(23)), epoch(at(24))),), f"hours {parts.hours}"
    assert parts.days == (epoch(at(24)), None), f"days {parts.days}"


def test_split_window_until_only() -> None:
    until = at(25, minutes=30)
    parts = split_window(None, until)
    assert parts.days == (0, epoch(at(24))), f"days {parts.days}"
    assert parts.hours == ((epoch(at(24)), epoch(at(25))),), f"hours {parts.hours}"
    assert parts.raw == ((at(25), until),), f"raw {parts.raw}"


# -- nearest_rank, binned_percentile, duration_bin ----------------------------


def test_nearest_rank_small_lists() -> None:
    assert nearest_rank([], 0.5) is None, "empty list"
    assert nearest_rank([7], 0.5) == 7, "one value, p50"
    assert nearest_rank([7], 0.95) == 7, "one value, p95"
    assert nearest_rank([1, 2, 3, 4], 0.5) == 2, "p50 of four values is the second"
    assert nearest_rank(list(range(1, 21)), 0.95) == 19, "p95 of 20 values is the 19th"
    assert nearest_rank(list(range(1, 11)), 0.95) == 10, "p95 of 10 values is the 10th"


def test_nearest_rank_matches_integer_rank() -> None:
    # ceil(fraction * n) in floating point must not overshoot a whole rank.
    for count in range(1, 2001):
        values = list(range(1, count + 1))
        p95_rank = -(-95 * count // 100)
        p50_rank = -(-count // 2)
        assert nearest_rank(values, 0.95) == p95_rank, f"p95 of {count} values"
        assert nearest_rank(values, 0.50) == p50_rank, f"p50 of {count} values"


def test_binned_percentile_empty_bins() -> None:
    assert binned_percentile({}, 0.5, None) is None, "no bins"
    assert binned_percentile({4: 0}, 0.5, 1) is None, "only empty bins"


def test_binned_percentile_within_bound() -> None:
    values = [*range(0, 20_000), 2**20, 2**31 - 2, 2**31 - 1]
    for value in values:
        estimate = binned_percentile({duration_bin(value): 1}, 0.5, 2**31 - 1)
        assert estimate is not None, f"no estimate for {value}"
        bound = BIN_RELATIVE_ERROR * (value + 1) + 0.5
        assert abs(estimate - value) <= bound, f"estimate {estimate} for {value} ms"
        # The bound as the stats module documents it.
        assert abs(estimate - value) <= 0.091 * value + 1, f"estimate {estimate} for {value} ms"


def test_binned_percentile_small_values_exact() -> None:
    # Each bin below 4 ms contains a single whole millisecond value.
    for value in range(4):
        estimate = binned_percentile({duration_bin(value): 3}, 0.95, 100)
        assert estimate == value, f"estimate {estimate} for {value} ms"


def test_binned_percentile_capped_at_maximum() -> None:
    # 1023 ms is the bottom of its bin, whose midpoint is 1116 ms.
    estimate = binned_percentile({duration_bin(1023): 5}, 0.5, 1023)
    assert estimate == 1023, f"estimate {estimate} above the maximum 1023"


def test_binned_percentile_picks_rank_bin() -> None:
    bins = Counter(duration_bin(value) for value in [1] * 10 + [1000] * 10)
    p50 = binned_percentile(bins, 0.50, 1000)
    p95 = binned_percentile(bins, 0.95, 1000)
    assert p50 == 1, f"p50 {p50} of ten 1 ms and ten 1000 ms runs"
    assert p95 is not None, "p95 is None"
    assert abs(p95 - 1000) <= BIN_RELATIVE_ERROR * 1001 + 0.5, f"p95 {p95}"


BIN_CASES = {0: 0, 1: 4, 2: 6, 3: 8, 7: 12, 8: 12, 1000: 39, 2**31 - 1: 124}


def test_duration_bin_known_values() -> None:
    for milliseconds, expected in BIN_CASES.items():
        assert duration_bin(milliseconds) == expected, f"bin of {milliseconds} ms"
    assert duration_bin(-5) == 0, "a negative duration counts as 0 ms"


def test_duration_bin_equals_trigger(recorder: Recorder) -> None:
    for hour, milliseconds in enumerate(BIN_CASES):
        record_run(recorder, "bins", at(hour), duration_ms=milliseconds)

    expected = Counter(duration_bin(milliseconds) for milliseconds in BIN_CASES)
    all_time = {row[3]: row[4] for row in bin_rows(recorder.engine, "all")}
    assert all_time == dict(expected), f"trigger bins {all_time}, Python bins {dict(expected)}"
    for hour, milliseconds in enumerate(BIN_CASES):
        hourly = [row[3] for row in bin_rows(recorder.engine, "hour") if row[2] == epoch(at(hour))]
        assert hourly == [duration_bin(milliseconds)], f"hour bin of {milliseconds} ms: {hourly}"

    rebuild_rollups(recorder.engine)
    rebuilt = {row[3]: row[4] for row in bin_rows(recorder.engine, "all")}
    assert rebuilt == dict(expected), f"rebuilt bins {rebuilt}, Python bins {dict(expected)}"


def test_duration_bin_edges_equal_trigger(recorder: Recorder) -> None:
    # The milliseconds on either side of every bin edge up to 2**31 - 1.
    durations = set()
    for bin_index in range(125):
        edge = 2 ** (bin_index / 4) - 1
        durations |= {math.floor(edge) - 1, math.floor(edge), math.ceil(edge)}
    durations = {value for value in durations if 0 <= value <= 2**31 - 1}
    with recorder.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO cron_executions (service_name, status, duration_ms)"
                " VALUES ('edges', 'completed', :duration)"
            ),
            [{"duration": value} for value in sorted(durations)],
        )

    expected = Counter(duration_bin(value) for value in durations)
    all_time = {row[3]: row[4] for row in bin_rows(recorder.engine, "all")}
    differences = {
        index: (all_time.get(index), expected.get(index))
        for index in set(all_time) | set(expected)
        if all_time.get(index) != expected.get(index)
    }
    assert differences == {}, f"bin: (trigger runs, Python runs) {differences}"


# -- the trigger --------------------------------------------------------------


def test_heartbeat_leaves_rollups_unchanged(recorder: Recorder) -> None:
    engine = recorder.engine
    running = start_run(recorder, "beat", at(1))
    finished = record_run(recorder, "beat", at(2), duration_ms=250, items=4)
    rollups, bins, services = rollup_rows(engine), bin_rows(engine), latest(engine, "beat")

    recorder.heartbeat(running.run_key)
    execute(
        engine,
        "UPDATE cron_executions SET heartbeat_at = :at, host = 'other', output_tail = 'x'"
        " WHERE id = :id",
        at=sql_time(engine, at(3)),
        id=run_id(engine, finished),
    )

    with engine.connect() as connection:
        heartbeats = connection.execute(select(cron_executions.c.heartbeat_at)).scalars().all()
    assert at(3) in heartbeats, f"the plain-SQL heartbeat was not written: {heartbeats}"
    assert rollup_rows(engine) == rollups, "a heartbeat changed cron_rollups"
    assert bin_rows(engine) == bins, "a heartbeat changed cron_duration_bins"
    assert latest(engine, "beat") == services, "a heartbeat changed cron_services"


def test_update_moves_run_to_service(recorder: Recorder) -> None:
    engine = recorder.engine
    start = record_run(recorder, "alpha", at(10, minutes=15), duration_ms=100, items=5)
    execute(
        engine,
        "UPDATE cron_executions SET service_name = 'beta' WHERE id = :id",
        id=run_id(engine, start),
    )

    windows: list[dict[str, datetime]] = [
        {},
        {"since": at(10), "until": at(11)},
        {"since": at(0), "until": at(24)},
        {"since": at(10, minutes=10), "until": at(10, minutes=20)},
    ]
    for window in windows:
        alpha, beta = stats_of(engine, "alpha", **window), stats_of(engine, "beta", **window)
        assert alpha.total == 0, f"alpha total {alpha.total} in {window}"
        assert alpha.completed == 0, f"alpha completed {alpha.completed} in {window}"
        assert alpha.items_processed == 0, f"alpha items {alpha.items_processed} in {window}"
        assert alpha.avg_duration_ms is None, f"alpha avg {alpha.avg_duration_ms} in {window}"
        # NOTE: alpha's maximum stays 100 ms: a maximum cannot be subtracted.
        assert beta.total == 1, f"beta total {beta.total} in {window}"
        assert beta.completed == 1, f"beta completed {beta.completed} in {window}"
        assert beta.items_processed == 5, f"beta items {beta.items_processed} in {window}"
        assert beta.avg_duration_ms == 100, f"beta avg {beta.avg_duration_ms} in {window}"
        assert beta.max_duration_ms == 100, f"beta max {beta.max_duration_ms} in {window}"


def test_update_moves_run_start_time(recorder: Recorder) -> None:
    engine = recorder.engine
    start = record_run(recorder, "mover", at(10, minutes=15), duration_ms=100, items=5)
    execute(
        engine,
        "UPDATE cron_executions SET execution_time = :at WHERE id = :id",
        at=sql_time(engine, at(27, minutes=15)),
        id=run_id(engine, start),
    )

    cases = (
        ({"since": at(10), "until": at(11)}, 0),
        ({"since": at(0), "until": at(24)}, 0),
        ({"since": at(27), "until": at(28)}, 1),
        ({"since": at(24), "until": at(48)}, 1),
        ({"since": at(27, minutes=10), "until": at(27, minutes=20)}, 1),
        ({}, 1),
    )
    for window, expected in cases:
        moved = stats_of(engine, "mover", **window)
        assert moved.total == expected, f"total {moved.total} in {window}, expected {expected}"
        assert moved.items_processed == 5 * expected, f"items {moved.items_processed} in {window}"


def test_repeated_reads_follow_every_change(recorder: Recorder) -> None:
    # On PostgreSQL the second and later reads of a window take unchanged
    # services from the cache; each change below must reach the figures.
    engine = recorder.engine
    window = {"since": at(2, minutes=30)}
    for hour in range(1, 30):
        record_run(recorder, "steady", at(hour), duration_ms=50)
        record_run(recorder, "busy", at(hour), duration_ms=50)
    before = {row.service_name: row for row in service_stats(engine, **window)}
    assert service_stats(engine, **window) == list(before.values()), "a second read differed"

    # A run that starts, then finishes much slower than the rest.
    slow = start_run(recorder, "busy", at(5, minutes=10))
    started = {row.service_name: row for row in service_stats(engine, **window)}
    assert started["busy"].in_progress == 1, f"start not seen: {started['busy']}"
    assert started["steady"] == before["steady"], "an unchanged service's figures moved"
    for _ in range(3):
        record_run(recorder, "busy", at(6, minutes=20), duration_ms=60_000)
    finish_run(recorder, slow, "completed", 60_000, 7, None)
    busy = stats_of(engine, "busy", **window)
    after = {row.service_name: row for row in service_stats(engine, **window)}
    assert after["busy"] == busy, f"all services {after['busy']} != one service {busy}"
    assert busy.in_progress == 0, f"finish not seen: {busy}"
    assert busy.total == before["busy"].total + 4, f"total {busy.total}, before {before['busy']}"
    assert busy.max_duration_ms == 60_000, f"max {busy.max_duration_ms}"
    assert busy.p95_duration_ms is not None and busy.p95_duration_ms > 50_000, (
        f"p95 {busy.p95_duration_ms} ignores the slow runs"
    )

    # A run moved from one service to the other changes both.
    execute(
        engine,
        "UPDATE cron_executions SET service_name = 'steady' WHERE id = :id",
        id=run_id(engine, slow),
    )
    moved = {row.service_name: row for row in service_stats(engine, **window)}
    assert moved["busy"].total == busy.total - 1, f"busy kept the moved run: {moved['busy']}"
    assert moved["steady"].total == before["steady"].total + 1, f"steady: {moved['steady']}"
    assert moved["steady"].items_processed == before["steady"].items_processed + 7


def raw_counts(
    engine: Engine, since: datetime, until: datetime | None
) -> dict[str, tuple[int, int]]:
    """Return each service's runs and items started in [since, until), counted from raw rows."""
    runs = cron_executions.c
    query = (
        select(runs.service_name, func.count(), func.coalesce(func.sum(runs.items_processed), 0))
        .where(runs.execution_time >= since)
        .group_by(runs.service_name)
    )
    if until is not None:
        query = query.where(runs.execution_time < until)
    with engine.connect() as connection:
        return {name: (int(count), int(items)) for name, count, items in connection.execute(query)}


def test_cached_reads_match_fresh_reads(recorder: Recorder) -> None:
    # On PostgreSQL a long-running reader keeps each service's result, its
    # rollup figures and the runs of the hours at the window's edges between
    # calls. A second engine on the same database, its cache emptied before
    # every call, reads everything afresh: the two must always agree.
    engine = recorder.engine
    fresh = create_engine(engine.url)
    minutes = (5, 20, 35, 50)
    for service in ("edge", "quiet", "renamed"):
        for hour in range(0, 30):
            for minute in minutes:
                record_run(recorder, service, at(hour, minutes=minute), duration_ms=40 + minute)
    pending = start_run(recorder, "edge", at(2, minutes=45))
    moving = record_run(recorder, "edge", at(2, minutes=50), duration_ms=9_000)

    def check(label: str, since_minute: int) -> None:
        windows = (
            {"since": at(2, minutes=since_minute)},
            {"since": at(2, minutes=since_minute), "until": at(28, minutes=since_minute)},
        )
        for window in windows:
            forget(fresh)
            cached = service_stats(engine, **window)
            expected = service_stats(fresh, **window)
            assert cached == expected, f"{label}, window {window}: {cached} != {expected}"
            # Both read through the same slicing, so count the raw rows too.
            counted = raw_counts(engine, window["since"], window.get("until"))
            totals = {row.service_name: (row.total, row.items_processed) for row in cached}
            assert totals == counted, f"{label}, window {window}: {totals} != raw {counted}"

    try:
        for since_minute in (0, 10, 25, 40, 55):
            check("sliding", since_minute)
        # Changes inside the edge hour: a finish, a start moved out of the
        # window's part of that hour, a new display name.
        finish_run(recorder, pending, "failed", 30_000, 3, "boom")
        check("after a finish in the edge hour", 40)
        execute(
            engine,
            "UPDATE cron_executions SET execution_time = :at WHERE id = :id",
            at=sql_time(engine, at(2, minutes=10)),
            id=run_id(engine, moving),
        )
        check("after a start moved within the edge hour", 40)
        execute(engine, "UPDATE cron_services SET display_name = 'Renamed' WHERE name = 'renamed'")
        check("after a new display name", 40)
        renamed = stats_of(engine, "renamed", since=at(2, minutes=40))
        assert renamed.display_name == "Renamed", f"display name {renamed.display_name!r}"
    finally:
        fresh.dispose()


def test_services_follow_run_sequence(recorder: Recorder) -> None:
    engine = recorder.engine
    service = "sequence"

    record_run(recorder, service, at(1))
    assert latest(engine, service) == {
        "last_run_at": at(1),
        "last_status": "completed",
        "last_success_at": at(1),
        "last_failure_at": None,
        "last_error": None,
        "streak_status": "completed",
        "streak_length": 1,
    }, "after one completed run"

    record_run(recorder, service, at(2))
    state = latest(engine, service)
    assert state["streak_length"] == 2, f"after two completed runs: {state}"
    assert state["last_success_at"] == at(2), f"after two completed runs: {state}"

    record_run(recorder, service, at(3), status="failed", error="disk full")
    assert latest(engine, service) == {
        "last_run_at": at(3),
        "last_status": "failed",
        "last_success_at": at(2),
        "last_failure_at": at(3),
        "last_error": "disk full",
        "streak_status": "failed",
        "streak_length": 1,
    }, "after a failed run"

    running = start_run(recorder, service, at(4))
    state = latest(engine, service)
    assert state["last_run_at"] == at(4), f"after a start: {state}"
    assert state["last_status"] == "started", f"after a start: {state}"
    assert state["streak_status"] == "failed", f"a start changed the streak: {state}"
    assert state["streak_length"] == 1, f"a start changed the streak: {state}"

    time_out(engine, running)
    state = latest(engine, service)
    assert state["last_status"] == "timed_out", f"after a timeout: {state}"
    assert state["last_failure_at"] == at(4), f"after a timeout: {state}"
    assert state["last_error"] == "timed out", f"after a timeout: {state}"
    assert state["streak_status"] == "failed", f"after a timeout: {state}"
    assert state["streak_length"] == 2, f"after a timeout: {state}"

    record_run(recorder, service, at(5))
    assert latest(engine, service) == {
        "last_run_at": at(5),
        "last_status": "completed",
        "last_success_at": at(5),
        "last_failure_at": at(4),
        "last_error": "timed out",
        "streak_status": "completed",
        "streak_length": 1,
    }, "after a completed run that ends the failures"


def test_late_replay_keeps_newer_status(recorder: Recorder) -> None:
    engine = recorder.engine
    record_run(recorder, "replay", at(5))
    # A spool replay of an older run arrives after the newer one.
    record_run(recorder, "replay", at(3), status="failed", error="old error")

    state = latest(engine, "replay")
    assert state["last_run_at"] == at(5), f"the older run moved last_run_at: {state}"
    assert state["last_status"] == "completed", f"the older run overwrote last_status: {state}"
    assert state["last_success_at"] == at(5), f"{state}"
    assert state["last_failure_at"] == at(3), f"the older failure is still the last one: {state}"
    assert state["last_error"] == "old error", f"{state}"
    assert state["streak_status"] == "completed", f"the older run changed the streak: {state}"
    assert state["streak_length"] == 1, f"the older run changed the streak: {state}"

    stats = stats_of(engine, "replay")
    assert stats.total == 2, f"total {stats.total}"
    assert stats.failed == 1, f"failed {stats.failed}"
    assert stats.last_status == "completed", f"stats last_status {stats.last_status}"


def test_late_failure_after_timeout_counts_once(recorder: Recorder) -> None:
    engine = recorder.engine
    record_run(recorder, "late", at(1))
    running = start_run(recorder, "late", at(2))
    time_out(engine, running)
    finish_run(recorder, running, status="failed", duration_ms=7200_000, error="exit 1")

    state = latest(engine, "late")
    assert state["last_status"] == "failed", f"{state}"
    assert state["last_error"] == "exit 1", (
        f"the reported error did not replace the timeout: {state}"
    )
    assert state["streak_status"] == "failed", f"{state}"
    assert state["streak_length"] == 1, f"one failed run counted twice in the streak: {state}"

    stats = stats_of(engine, "late")
    assert stats.total == 2, f"total {stats.total}"
    assert stats.failed == 1, f"failed {stats.failed}"
    assert stats.timed_out == 0, f"timed_out {stats.timed_out}"
    assert stats.max_duration_ms == 7200_000, f"max {stats.max_duration_ms}"


def test_late_completion_after_timeout(recorder: Recorder) -> None:
    engine = recorder.engine
    running = start_run(recorder, "late", at(2))
    time_out(engine, running)
    finish_run(recorder, running, status="completed", duration_ms=5000, items=9)

    stats = stats_of(engine, "late")
    assert stats.total == 1, f"total {stats.total}"
    assert stats.completed == 1, f"completed {stats.completed}"
    assert stats.timed_out == 0, f"timed_out {stats.timed_out}"
    assert stats.items_processed == 9, f"items {stats.items_processed}"
    assert stats.last_status == "completed", f"last_status {stats.last_status}"
    assert stats.streak_status == "completed", f"streak_status {stats.streak_status}"


def test_plain_sql_rows_counted(recorder: Recorder) -> None:
    engine = recorder.engine
    execute(engine, "INSERT INTO cron_executions (service_name) VALUES ('x')")
    started = stats_of(engine, "x")
    assert started.in_progress == 1, f"in_progress {started.in_progress}"
    assert started.avg_duration_ms is None, (
        f"a run without duration has avg {started.avg_duration_ms}"
    )
    assert started.max_duration_ms is None, (
        f"a run without duration has max {started.max_duration_ms}"
    )

    execute(
        engine,
        "UPDATE cron_executions SET status = 'completed', items_processed = 3, duration_ms = 10"
        " WHERE service_name = 'x'",
    )
    execute(
        engine,
        "INSERT INTO cron_executions (service_name, status, error_message)"
        " VALUES ('x', 'error', 'e')",
    )

    stats = stats_of(engine, "x")
    assert stats.total == 2, f"total {stats.total}"
    assert stats.completed == 1, f"completed {stats.completed}"
    assert stats.failed == 1, f"an unknown status counts as failed: {stats.failed}"
    assert stats.in_progress == 0, f"in_progress {stats.in_progress}"
    assert stats.items_processed == 3, f"items {stats.items_processed}"
    assert stats.avg_duration_ms == 10, f"avg {stats.avg_duration_ms}"
    assert stats.max_duration_ms == 10, f"max {stats.max_duration_ms}"
    assert stats.percentiles_exact is False, "all-time percentiles come from the bins"
    assert stats.p50_duration_ms == 10, f"p50 {stats.p50_duration_ms}: the only run's duration"
    assert stats.last_status is not None, "plain-SQL runs left last_status empty"


def test_origin_time_on_hour_boundary(recorder: Recorder) -> None:
    # On SQLite, plain SQL writes times without a fraction of a second.
    engine = recorder.engine
    execute(
        engine,
        "INSERT INTO cron_executions (service_name, execution_time, status)"
        " VALUES ('x', :at, 'completed')",
        at=sql_time(engine, at(10)),
    )
    cases = (
        ({"since": at(10), "until": at(10, minutes=30)}, 1),
        ({"since": at(9, minutes=30), "until": at(10)}, 0),
        ({"since": at(9), "until": at(10, milliseconds=500)}, 1),
        ({"since": at(10, milliseconds=-500), "until": at(11)}, 1),
        ({"since": at(10, microseconds=1), "until": at(11)}, 0),
    )
    for window, expected in cases:
        total = stats_of(engine, "x", **window).total
        assert total == expected, f"total {total} in {window}, expected {expected}"


def test_run_in_last_millisecond_of_hour(recorder: Recorder) -> None:
    engine = recorder.engine
    record_run(recorder, "edge", at(1, microseconds=-1))
    before = stats_of(engine, "edge", since=at(0), until=at(1))
    after = stats_of(engine, "edge", since=at(1), until=at(2))
    assert before.total == 1, f"the run at 00:59:59.999999 is missing from its hour: {before.total}"
    assert after.total == 0, f"the run at 00:59:59.999999 counted in the next hour: {after.total}"


def test_results_are_read_only(recorder: Recorder) -> None:
    # A long-running reader hands out the same result again while nothing
    # changed, so an edit by one caller must not reach the next.
    record_run(recorder, "shared", at(1))
    row = stats_of(recorder.engine, "shared", since=at(0, minutes=30))
    with pytest.raises(FrozenInstanceError):
        row.total = 99  # type: ignore[misc]
    again = stats_of(recorder.engine, "shared", since=at(0, minutes=30))
    assert again.total == 1, f"total {again.total} after an attempted edit"


def write_mixed_history(recorder: Recorder) -> None:
    """Write runs of every kind over two days, without moves or prunes."""
    engine = recorder.engine
    for index in range(12):
        status = ("completed", "failed", "completed")[index % 3]
        error = "exit 2" if status == "failed" else None
        duration = (0, 15, 1000, 2**31 - 1)[index % 4]
        record_run(recorder, "mixed", at(index * 4, minutes=index), status, duration, index, error)
    timed_out = start_run(recorder, "mixed", at(50))
    time_out(engine, timed_out)
    late = start_run(recorder, "mixed", at(51))
    time_out(engine, late)
    finish_run(recorder, late, status="failed", duration_ms=99, error="late")
    start_run(recorder, "other", at(52))
    execute(
        engine,
        "INSERT INTO cron_executions (service_name, execution_time, status, items_processed,"
        " duration_ms) VALUES ('other', :at, 'completed', 4, 40)",
        at=sql_time(engine, at(53)),
    )


def test_rebuild_matches_trigger(recorder: Recorder) -> None:
    engine = recorder.engine
    write_mixed_history(recorder)
    rollups, bins = rollup_rows(engine), bin_rows(engine)
    services = {name: latest(engine, name) for name in ("mixed", "other")}
    windows: list[dict[str, datetime | None]] = [
        {},
        {"since": at(0), "until": at(24)},
        {"since": at(3, minutes=30), "until": at(30, minutes=5)},
    ]
    figures = [service_stats(engine, **window) for window in windows]

    rebuild_rollups(engine)

    assert rollup_rows(engine) == rollups, "rebuilt cron_rollups differ from the trigger's"
    assert bin_rows(engine) == bins, "rebuilt cron_duration_bins differ from the trigger's"
    for name, state in services.items():
        assert latest(engine, name) == state, f"rebuilt latest columns of {name} differ"
    for window, before in zip(windows, figures, strict=True):
        assert service_stats(engine, **window) == before, f"service_stats differ in {window}"


def test_rebuild_matches_trigger_after_late_completion(recorder: Recorder) -> None:
    engine = recorder.engine
    record_run(recorder, "late", at(1))
    running = start_run(recorder, "late", at(2))
    time_out(engine, running)
    finish_run(recorder, running, status="completed", duration_ms=5000)
    rollups, bins = rollup_rows(engine), bin_rows(engine)

    rebuild_rollups(engine)

    assert rollup_rows(engine) == rollups, "rebuilt cron_rollups differ from the trigger's"
    assert bin_rows(engine) == bins, "rebuilt cron_duration_bins differ from the trigger's"


# -- cronledger status --------------------------------------------------------


def write_status_history(recorder: Recorder) -> None:
    now = utc_now()
    record_run(recorder, "alpha", now - timedelta(hours=3), duration_ms=100, items=3)
    record_run(recorder, "alpha", now - timedelta(hours=2), duration_ms=300, items=4)
    record_run(recorder, "alpha", now - timedelta(hours=1), "failed", 50, 0, "disk full\nat line 3")
    record_run(recorder, "alpha", now - timedelta(days=3), duration_ms=100, items=10)
    start_run(recorder, "beta", now - timedelta(minutes=5))


COUNT_HEADERS = ("TOTAL", "OK", "FAILED", "TIMED OUT", "RUNNING", "ITEMS")


def table_rows(output: str) -> dict[str, dict[str, str]]:
    """Read the service name, the count columns and the last status of each table line.

    Count columns are right-aligned, so each cell ends where its header ends.
    """
    lines = output.splitlines()
    assert lines and lines[0].startswith("SERVICE"), f"no header line in {output!r}"
    header = lines[0]
    ends = {name: header.index(f" {name}") + 1 + len(name) for name in COUNT_HEADERS}
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = {name: line[:end].split()[-1] for name, end in ends.items()}
        cells["LAST"] = line.split()[-1]
        rows[line.split()[0]] = cells
    return rows


def test_status_table_counts(recorder: Recorder, database_url: str, invoke: Any) -> None:
    write_status_history(recorder)
    result = invoke("--database-url", database_url, "status")
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"

    rows = table_rows(result.stdout)
    assert sorted(rows) == ["alpha", "beta"], f"services in the table: {sorted(rows)}"
    for stats in service_stats(recorder.engine):
        cells = rows[stats.service_name]
        numbers = (
            stats.total,
            stats.completed,
            stats.failed,
            stats.timed_out,
            stats.in_progress,
            stats.items_processed,
        )
        for name, number in zip(COUNT_HEADERS, numbers, strict=True):
            assert cells[name] == str(number), (
                f"{stats.service_name}: {name} {cells[name]} in the table, {number} in the database"
            )
        assert cells["LAST"] == stats.last_status, f"{stats.service_name}: last {cells['LAST']}"
    alpha = [rows["alpha"][name] for name in COUNT_HEADERS]
    assert alpha == ["4", "3", "1", "0", "0", "17"], f"alpha counts {alpha}"
    assert "alpha: " in result.stdout, f"no line about alpha's failure in {result.stdout}"
    assert "disk full" in result.stdout, f"no last error in {result.stdout}"
    assert "at line 3" not in result.stdout, "the table shows more than the first error line"


def test_status_json_counts(recorder: Recorder, database_url: str, invoke: Any) -> None:
    write_status_history(recorder)
    result = invoke("--database-url", database_url, "status", "--json")
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"

    rows = {row["service_name"]: row for row in json.loads(result.stdout)}
    assert sorted(rows) == ["alpha", "beta"], f"services in the JSON: {sorted(rows)}"
    alpha, beta = rows["alpha"], rows["beta"]
    assert alpha["total"] == 4, f"alpha total {alpha['total']}"
    assert alpha["completed"] == 3, f"alpha completed {alpha['completed']}"
    assert alpha["failed"] == 1, f"alpha failed {alpha['failed']}"
    assert alpha["items_processed"] == 17, f"alpha items {alpha['items_processed']}"
    assert alpha["avg_duration_ms"] == 137.5, f"alpha avg {alpha['avg_duration_ms']}"
    assert alpha["max_duration_ms"] == 300, f"alpha max {alpha['max_duration_ms']}"
    assert alpha["success_rate"] == 0.75, f"alpha success_rate {alpha['success_rate']}"
    assert alpha["last_status"] == "failed", f"alpha last_status {alpha['last_status']}"
    assert alpha["last_error"] == "disk full\nat line 3", f"alpha last_error {alpha['last_error']}"
    assert datetime.fromisoformat(alpha["last_run_at"]).tzinfo is not None, "naive last_run_at"
    assert beta["in_progress"] == 1, f"beta in_progress {beta['in_progress']}"
    assert beta["success_rate"] is None, f"beta success_rate {beta['success_rate']}"
    for stats in service_stats(recorder.engine):
        row = rows[stats.service_name]
        assert row["total"] == stats.total, f"{stats.service_name}: JSON total {row['total']}"


def test_status_window_and_service(recorder: Recorder, database_url: str, invoke: Any) -> None:
    write_status_history(recorder)
    result = invoke(
        "--database-url", database_url, "status", "--window", "24h", "--service", "alpha", "--json"
    )
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"

    rows = json.loads(result.stdout)
    assert [row["service_name"] for row in rows] == ["alpha"], f"services {rows}"
    assert rows[0]["total"] == 3, f"the run 3 days ago counted in 24h: {rows[0]['total']}"
    assert rows[0]["items_processed"] == 7, f"items in 24h: {rows[0]['items_processed']}"


def test_status_missing_sqlite_file(tmp_path: Path, invoke: Any) -> None:
    missing = tmp_path / "typo.db"

    result = invoke("--database-url", f"sqlite:///{missing}", "status")

    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output}"
    assert f"no database at {missing}" in result.output, f"output {result.output!r}"
    assert not missing.exists(), "status created the database file"


def test_status_empty_database(database_url: str, invoke: Any) -> None:
    upgraded = invoke("--database-url", database_url, "db", "upgrade")
    assert upgraded.exit_code == 0, f"exit {upgraded.exit_code}: {upgraded.output}"

    result = invoke("--database-url", database_url, "status")
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    assert "no runs recorded in" in result.stdout, f"output {result.stdout!r}"
    assert "cronledger run hello -- echo hello" in result.stdout, f"output {result.stdout!r}"

    as_json = invoke("--database-url", database_url, "status", "--json")
    assert as_json.exit_code == 0, f"exit {as_json.exit_code}: {as_json.output}"
    assert json.loads(as_json.stdout) == [], f"JSON of an empty database {as_json.stdout!r}"


def test_status_invalid_window(sqlite_url: str, invoke: Any) -> None:
    result = invoke("--database-url", sqlite_url, "status", "--window", "5x")
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    assert "'5x'" in result.stderr, f"the invalid value is not named: {result.stderr!r}"


def test_read_ahead_fills_the_next_window(recorder: Recorder) -> None:
    # A window that slides with the clock gets new buckets, and so a new
    # cache key, once its start passes an hour. Read ahead shortly before,
    # the first call after the hour reads only the services that changed.
    engine = recorder.engine
    for service in ("early", "late"):
        for hour in range(6):
            record_run(recorder, service, at(hour, minutes=30), duration_ms=100 + hour)
    lead = timedelta(minutes=1)

    assert not read_ahead(engine, at(1, minutes=30), within=lead), "read half an hour ahead"
    read = read_ahead(engine, at(2, seconds=-30), within=lead)
    if engine.dialect.name != "postgresql":
        assert not read, "read ahead without a cache between calls"
        return
    assert read, "nothing read 30 s before the hour"

    after = at(2, seconds=20)
    key = cache_key(split_window(after, None))
    cache = cache_for(engine)

    def stale_services() -> list[str]:
        with engine.connect() as connection:
            versions = read_states(connection, None).versions
        return cache.lookup(key, ("buckets", True), versions)[1]

    assert stale_services() == [], "the next window was not read ahead"
    record_run(recorder, "late", at(2, minutes=40), duration_ms=5)
    assert stale_services() == ["late"], "a run after the read ahead"

    fresh = create_engine(engine.url)
    try:
        cached = service_stats(engine, since=after)
        expected = service_stats(fresh, since=after)
    finally:
        fresh.dispose()
    assert cached == expected, f"{cached} != {expected}"
    totals = {row.service_name: (row.total, row.items_processed) for row in cached}
    assert totals == raw_counts(engine, after, None), f"{totals} against the raw rows"


def test_last_rank_percentile_is_maximum(recorder: Recorder) -> None:
    # A binned estimate is the bin's midpoint, which can lie below the only
    # run. When the percentile's rank is the last, it is the maximum.
    engine = recorder.engine
    record_run(recorder, "once", at(3, minutes=10), duration_ms=5_400)
    for minutes in range(12):
        record_run(recorder, "dozen", at(3, minutes=minutes), duration_ms=1_000 + 100 * minutes)

    once = stats_of(engine, "once", since=at(0), until=at(24))
    dozen = stats_of(engine, "dozen", since=at(0), until=at(24))

    assert not once.percentiles_exact, "the window should read the rollups"
    assert (once.p50_duration_ms, once.p95_duration_ms) == (5_400, 5_400)
    assert dozen.p95_duration_ms == 2_100, f"p95 of 12 runs: {dozen.p95_duration_ms}"
    assert dozen.p50_duration_ms is not None
    assert abs(dozen.p50_duration_ms - 1_500) <= BIN_RELATIVE_ERROR * 1_501 + 0.5, "p50 estimate"
