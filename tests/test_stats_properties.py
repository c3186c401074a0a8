"""Property tests: statistics equal a brute-force recount of every run ever written.

Each example applies a random sequence of writes (starts, finishes, monitor
timeouts, late finishes, prunes and plain-SQL inserts) to a real SQLite or
PostgreSQL database while keeping its own log of every run. ``service_stats``
is then compared, for all time and for random windows, with a recount of
that log. The log keeps pruned runs, because the rollups keep them too.

The one documented inexactness is modelled rather than avoided: a run in a
partial hour at a window edge is read from the raw rows, so once it is pruned
it no longer counts in that window.
"""

from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text

from cronledger.recorder import Recorder, get_recorder
from cronledger.stats import ServiceStats, nearest_rank, service_stats, split_window
from cronledger.store.executions import FinishEvent, StartEvent
from cronledger.store.migrate import ensure_schema
from cronledger.store.prune import prune_runs
from cronledger.store.tables import cron_executions

pytestmark = pytest.mark.timeout(300)

SERVICES = ("alpha", "beta", "gamma")
BASE = datetime(2026, 3, 1, tzinfo=UTC)
SPAN_HOURS = 72

# A binned percentile is the log-scale midpoint of its bin (four bins per
# doubling), rounded to whole milliseconds. It is off the exact value by at
# most this share of (exact + 1 ms), plus 0.5 ms of rounding.
BIN_RELATIVE_ERROR = 2 ** (1 / 8) - 1

TABLES = ("cron_executions", "cron_rollups", "cron_duration_bins", "cron_services")


# -- the model ----------------------------------------------------------------


@dataclass
class ModelRun:
    """One run as the test wrote it, kept after a prune deletes its row."""

    service: str
    started_at: datetime
    status: str
    items: int = 0
    duration_ms: int | None = None
    row_id: int | None = None
    start_event: StartEvent | None = None
    pruned: bool = False


@dataclass
class Model:
    runs: list[ModelRun] = field(default_factory=list)

    def live(self, status: str, *, with_run_key: bool) -> list[ModelRun]:
        return [
            run
            for run in self.runs
            if run.status == status
            and not run.pruned
            and (run.start_event is not None or not with_run_key)
        ]


def status_class(status: str) -> str:
    """Map a status to the count it adds to; unknown statuses count as failed."""
    return status if status in ("started", "completed", "timed_out") else "failed"


# -- operations ---------------------------------------------------------------

# Most runs and window edges fall in a few hours around day boundaries, so
# that windows often cut through hours that contain several runs.
HOT_HOURS = (0, 1, 23, 24, 47)


def hot_hour_moments(microseconds: st.SearchStrategy[int]) -> st.SearchStrategy[timedelta]:
    return st.tuples(st.sampled_from(HOT_HOURS), microseconds).map(
        lambda pair: timedelta(hours=pair[0], microseconds=pair[1])
    )


offsets = st.one_of(
    # Exact hour and day boundaries.
    st.sampled_from((*HOT_HOURS, SPAN_HOURS)).map(lambda hours: timedelta(hours=hours)),
    # Anywhere within a hot hour, to the microsecond; drawn twice as often.
    hot_hour_moments(st.integers(0, 3600 * 10**6 - 1)),
    hot_hour_moments(st.integers(0, 3600 * 10**6 - 1)),
    # One microsecond either side of an hour boundary.
    hot_hour_moments(st.sampled_from((-1, 1))),
    # Anywhere in the span.
    st.integers(0, SPAN_HOURS * 3600 * 10**6).map(lambda us: timedelta(microseconds=us)),
)
whole_second_offsets = st.one_of(
    st.sampled_from((*HOT_HOURS, SPAN_HOURS)).map(lambda hours: timedelta(hours=hours)),
    hot_hour_moments(st.integers(0, 3599).map(lambda seconds: seconds * 10**6)),
    st.integers(0, SPAN_HOURS * 3600).map(lambda seconds: timedelta(seconds=seconds)),
)
durations = st.one_of(
    st.sampled_from((0, 1, 2, 3, 7, 8, 10, 1000, 1023, 2**31 - 1)),
    st.integers(0, 5000),
    st.integers(0, 2**31 - 1),
)
item_counts = st.one_of(st.integers(0, 100), st.just(2**31 - 1))
services = st.sampled_from(SERVICES)
picks = st.integers(0, 1000)

outcomes = st.sampled_from(("completed", "failed"))
starts = st.tuples(st.just("start"), services, offsets)
whole_runs = st.tuples(st.just("run"), services, offsets, outcomes, item_counts, durations)
finishes = st.tuples(st.just("finish"), picks, outcomes, item_counts, durations)
timeouts = st.tuples(st.just("time_out"), picks)
late_finishes = st.tuples(st.just("finish_late"), picks, outcomes, item_counts, durations)
prunes = st.tuples(st.just("prune"), offsets, offsets)
sql_inserts = st.tuples(
    st.just("insert_sql"),
    services,
    whole_second_offsets,
    st.sampled_from(("completed", "failed", "timed_out", "error")),
    item_counts,
    st.none() | durations,
)
origin_inserts = st.tuples(st.just("insert_origin"), services, st.booleans())

# one_of draws its branches about equally often, so listing a branch twice
# doubles its share: finishes and late finishes need a run in the right state.
operations = st.one_of(
    starts,
    whole_runs,
    whole_runs,
    finishes,
    finishes,
    timeouts,
    late_finishes,
    late_finishes,
    prunes,
    sql_inserts,
    origin_inserts,
)

instants = st.one_of(
    # Exact hour and day boundaries, and a few outside the span.
    st.sampled_from((-1, *HOT_HOURS, SPAN_HOURS, SPAN_HOURS + 1)).map(
        lambda hours: BASE + timedelta(hours=hours)
    ),
    hot_hour_moments(st.integers(0, 3600 * 10**6 - 1)).map(lambda offset: BASE + offset),
    # Half a second either side of an hour boundary.
    hot_hour_moments(st.sampled_from((-500_000, 500_000))).map(lambda offset: BASE + offset),
    st.integers(-3600 * 10**6, (SPAN_HOURS + 1) * 3600 * 10**6).map(
        lambda us: BASE + timedelta(microseconds=us)
    ),
)
within_hot_hour = st.integers(0, 3600 * 10**6 - 1)
windows = st.one_of(
    st.tuples(st.none() | instants, st.none() | instants),
    # Both edges inside one hour, or in neighbouring hours: raw rows only,
    # or raw edges around at most one whole hour.
    st.tuples(st.sampled_from(HOT_HOURS), st.integers(0, 1), within_hot_hour, within_hot_hour).map(
        lambda drawn: (
            BASE + timedelta(hours=drawn[0], microseconds=min(drawn[2], drawn[3])),
            BASE + timedelta(hours=drawn[0] + drawn[1], microseconds=max(drawn[2], drawn[3])),
        )
    ),
)


class Writer:
    """Apply operations to the database and to the model alike."""

    def __init__(self, database_url: str, model: Model) -> None:
        self.recorder: Recorder = get_recorder(database_url)
        self.engine: Engine = self.recorder.engine
        self.postgresql = self.engine.dialect.name == "postgresql"
        self.model = model

    def apply(self, operation: tuple[object, ...]) -> None:
        kind = operation[0]
        handler = getattr(self, f"_{kind}")
        handler(*operation[1:])
        pending = self.recorder.spool.pending()
        assert pending == [], f"{operation!r} was spooled instead of written: {pending}"

    def _start(self, service: str, offset: timedelta) -> None:
        event = StartEvent(
            run_key=uuid.uuid4().hex,
            service_name=service,
            started_at=BASE + offset,
            host="test-host",
            pid=1,
        )
        row_id = self.recorder.start(event)
        self.model.runs.append(
            ModelRun(service, event.started_at, "started", row_id=row_id, start_event=event)
        )

    def _run(
        self, service: str, offset: timedelta, status: str, items: int, duration_ms: int
    ) -> None:
        self._start(service, offset)
        self._record_finish(self.model.runs[-1], status, items, duration_ms)

    def _finish(self, pick: int, status: str, items: int, duration_ms: int) -> None:
        candidates = self.model.live("started", with_run_key=True)
        if candidates:
            self._record_finish(candidates[pick % len(candidates)], status, items, duration_ms)

    def _finish_late(self, pick: int, status: str, items: int, duration_ms: int) -> None:
        # A late finish of a pruned run would insert it again, as a second run.
        # Real prune cutoffs lie months back, so no late finish arrives for one.
        candidates = self.model.live("timed_out", with_run_key=True)
        if candidates:
            self._record_finish(candidates[pick % len(candidates)], status, items, duration_ms)

    def _record_finish(self, run: ModelRun, status: str, items: int, duration_ms: int) -> None:
        assert run.start_event is not None
        self.recorder.finish(
            FinishEvent(
                start=run.start_event,
                status=status,
                finished_at=run.started_at + timedelta(milliseconds=duration_ms),
                duration_ms=duration_ms,
                items_processed=items,
                error_message="boom" if status == "failed" else None,
            )
        )
        run.status = status
        run.items = items
        run.duration_ms = duration_ms

    def _time_out(self, pick: int) -> None:
        candidates = self.model.live("started", with_run_key=False)
        if not candidates:
            return
        run = candidates[pick % len(candidates)]
        # The statement the monitor runs on a run past its maximum runtime.
        with self.engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE cron_executions SET status = 'timed_out', finished_at = :at,"
                    " error_message = :message WHERE id = :id AND status = 'started'"
                ),
                {"at": self._sql_time(run.started_at), "message": "timed out", "id": run.row_id},
            )
        run.status = "timed_out"

    def _prune(self, completed_offset: timedelta, failed_offset: timedelta) -> None:
        completed_before = BASE + completed_offset
        failed_before = BASE + failed_offset
        prune_runs(
            self.engine,
            completed_before=completed_before,
            failed_before=failed_before,
            keep_latest=0,
        )
        for run in self.model.runs:
            cutoff = completed_before if run.status == "completed" else failed_before
            if run.status != "started" and run.started_at < cutoff:
                run.pruned = True

    def _insert_sql(
        self, service: str, offset: timedelta, status: str, items: int, duration_ms: int | None
    ) -> None:
        # Another client writing a whole run in one statement, with an explicit
        # time: an aware literal on PostgreSQL, and on SQLite the naive UTC
        # text of CURRENT_TIMESTAMP, which has no fraction of a second.
        started_at = BASE + offset
        with self.engine.begin() as connection:
            row_id = connection.execute(
                text(
                    "INSERT INTO cron_executions"
                    " (service_name, execution_time, status, items_processed, duration_ms,"
                    " error_message) VALUES (:service, :at, :status, :items, :duration, :error)"
                    " RETURNING id"
                ),
                {
                    "service": service,
                    "at": self._sql_time(started_at),
                    "status": status,
                    "items": items,
                    "duration": duration_ms,
                    "error": None if status == "completed" else "failed in SQL",
                },
            ).scalar_one()
        self.model.runs.append(
            ModelRun(service, started_at, status, items, duration_ms, row_id=row_id)
        )

    def _insert_origin(self, service: str, finish: bool) -> None:
        # The origin's own writes: an insert that takes every default, the
        # start time included, then an update with the outcome.
        with self.engine.begin() as connection:
            row_id = connection.execute(
                text("INSERT INTO cron_executions (service_name) VALUES (:service) RETURNING id"),
                {"service": service},
            ).scalar_one()
        run = ModelRun(service, self._start_of(row_id), "started", row_id=row_id)
        if finish:
            with self.engine.begin() as connection:
                connection.execute(
                    text(
                        "UPDATE cron_executions SET status = 'completed', items_processed = 3,"
                        " duration_ms = 10 WHERE id = :id"
                    ),
                    {"id": row_id},
                )
            run.status, run.items, run.duration_ms = "completed", 3, 10
        self.model.runs.append(run)

    def _start_of(self, row_id: int) -> datetime:
        with self.engine.connect() as connection:
            started_at = connection.execute(
                select(cron_executions.c.execution_time).where(cron_executions.c.id == row_id)
            ).scalar_one()
        assert started_at is not None, f"row {row_id} has no execution_time"
        return started_at

    def _sql_time(self, value: datetime) -> str:
        if self.postgresql:
            return value.isoformat(sep=" ")
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


# -- the recount --------------------------------------------------------------


def in_window(moment: datetime, since: datetime | None, until: datetime | None) -> bool:
    return (since is None or since <= moment) and (until is None or moment < until)


def hour_covered(moment: datetime, since: datetime | None, until: datetime | None) -> bool:
    """Return whether the whole clock hour of ``moment`` lies in [since, until).

    Such an hour is counted from the rollups. Any other part of a window is
    counted from the raw rows.
    """
    if since is None and until is None:
        return True
    hour = moment.replace(minute=0, second=0, microsecond=0)
    return (since is None or since <= hour) and (
        until is None or hour + timedelta(hours=1) <= until
    )


@dataclass
class Expected:
    total: int = 0
    started: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    items: int = 0
    durations: list[int] = field(default_factory=list)
    from_rollups: bool = False


def recount(model: Model, service: str, since: datetime | None, until: datetime | None) -> Expected:
    expected = Expected()
    for run in model.runs:
        if run.service != service or not in_window(run.started_at, since, until):
            continue
        covered = hour_covered(run.started_at, since, until)
        expected.from_rollups = expected.from_rollups or covered
        if run.pruned and not covered:
            continue  # its raw row is gone, and no rollup covers its hour
        expected.total += 1
        kind = status_class(run.status)
        setattr(expected, kind, getattr(expected, kind) + 1)
        expected.items += run.items
        if run.duration_ms is not None:
            expected.durations.append(run.duration_ms)
    return expected


def assert_stats_match(
    stats: Sequence[ServiceStats], model: Model, since: datetime | None, until: datetime | None
) -> None:
    label = f"window [{since}, {until})"
    known = {run.service for run in model.runs}
    listed = [row.service_name for row in stats]
    assert sorted(listed) == sorted(known), f"{label}: services {listed}, expected {known}"

    for row in stats:
        where = f"{label}, service {row.service_name}"
        expected = recount(model, row.service_name, since, until)
        parts = row.completed + row.failed + row.timed_out + row.in_progress
        assert row.total == parts, f"{where}: total {row.total} != sum of statuses {parts}"
        assert row.total == expected.total, f"{where}: total {row.total}, expected {expected}"
        assert row.completed == expected.completed, f"{where}: completed {row.completed}"
        assert row.failed == expected.failed, f"{where}: failed {row.failed}"
        assert row.timed_out == expected.timed_out, f"{where}: timed_out {row.timed_out}"
        assert row.in_progress == expected.started, f"{where}: in_progress {row.in_progress}"
        assert row.items_processed == expected.items, f"{where}: items {row.items_processed}"
        assert_durations_match(row, expected, where)


def assert_durations_match(row: ServiceStats, expected: Expected, where: str) -> None:
    values = sorted(expected.durations)
    if not values:
        assert row.avg_duration_ms is None, f"{where}: avg {row.avg_duration_ms} without durations"
        assert row.max_duration_ms is None, f"{where}: max {row.max_duration_ms} without durations"
        assert row.p50_duration_ms is None, f"{where}: p50 {row.p50_duration_ms} without durations"
        assert row.p95_duration_ms is None, f"{where}: p95 {row.p95_duration_ms} without durations"
        return

    average = sum(values) / len(values)
    assert row.avg_duration_ms is not None, f"{where}: avg is None, expected {average}"
    assert math.isclose(row.avg_duration_ms, average, rel_tol=1e-9), (
        f"{where}: avg {row.avg_duration_ms}, expected {average}"
    )
    assert row.max_duration_ms == values[-1], f"{where}: max {row.max_duration_ms}, {values}"
    assert row.percentiles_exact == (not expected.from_rollups), (
        f"{where}: percentiles_exact {row.percentiles_exact}, rollups used {expected.from_rollups}"
    )

    for name, fraction, estimate in (
        ("p50", 0.50, row.p50_duration_ms),
        ("p95", 0.95, row.p95_duration_ms),
    ):
        exact = nearest_rank(values, fraction)
        assert exact is not None
        if row.percentiles_exact:
            assert estimate == exact, f"{where}: {name} {estimate}, nearest rank {exact}"
        else:
            assert estimate is not None, f"{where}: {name} is None, nearest rank {exact}"
            bound = BIN_RELATIVE_ERROR * (exact + 1) + 0.5
            assert abs(estimate - exact) <= bound, (
                f"{where}: {name} estimate {estimate} off nearest rank {exact} by more than {bound}"
            )


# -- the property -------------------------------------------------------------


def windows_around(model: Model) -> st.SearchStrategy[tuple[datetime | None, datetime | None]]:
    """Draw windows, some with an edge at a run's start or a microsecond off it."""
    starts = sorted({run.started_at for run in model.runs})
    if not starts:
        return windows
    # Draw an index rather than sampling the list: origin inserts take the
    # database clock, so the list's length can differ when hypothesis
    # replays an example, and sampled_from would then draw differently.
    at_runs = st.tuples(
        st.integers(0, 10**6).map(lambda index: starts[index % len(starts)]),
        st.sampled_from((-1, 0, 1)).map(lambda us: timedelta(microseconds=us)),
    ).map(lambda pair: pair[0] + pair[1])
    edges = st.none() | instants | at_runs
    return windows | st.tuples(at_runs, edges) | st.tuples(edges, at_runs)


def reset_tables(engine: Engine) -> None:
    ensure_schema(engine)
    with engine.begin() as connection:
        for table in TABLES:
            connection.execute(text(f"DELETE FROM {table}"))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=st.lists(operations, min_size=3, max_size=30), data=st.data())
def test_stats_equal_recount(
    database_url: str, sequence: list[tuple[object, ...]], data: st.DataObject
) -> None:
    model = Model()
    writer = Writer(database_url, model)
    reset_tables(writer.engine)
    # An event spooled by a failed example would be replayed into this one.
    shutil.rmtree(writer.recorder.spool.directory, ignore_errors=True)

    for operation in sequence:
        writer.apply(operation)

    assert_stats_match(service_stats(writer.engine), model, None, None)
    # Windows drawn after the writes may also start or end exactly at a run.
    checked_windows = data.draw(st.lists(windows_around(model), min_size=1, max_size=4))
    for since, until in checked_windows:
        stats = service_stats(writer.engine, since=since, until=until)
        assert_stats_match(stats, model, since, until)

    # More writes after the reads: on PostgreSQL the same windows now hit
    # cached rollup figures, which must notice every service that changed.
    for operation in data.draw(st.lists(operations, max_size=8), label="after the reads"):
        writer.apply(operation)
    assert_stats_match(service_stats(writer.engine), model, None, None)
    for since, until in checked_windows:
        stats = service_stats(writer.engine, since=since, until=until)
        assert_stats_match(stats, model, since, until)

    for service in SERVICES:
        alone = service_stats(writer.engine, service_name=service)
        if all(run.service != service for run in model.runs):
            assert alone == [], f"service {service} listed without a run: {alone}"
            continue
        expected = recount(model, service, None, None)
        assert len(alone) == 1, f"service_name={service} returned {alone}"
        assert alone[0].total == expected.total, f"service {service}: total {alone[0].total}"


@given(since=st.none() | instants, until=st.none() | instants, moment=instants)
def test_split_window_covers_window_once(
    since: datetime | None, until: datetime | None, moment: datetime
) -> None:
    parts = split_window(since, until)
    epoch = int(moment.timestamp())  # whole seconds, as the trigger floors them
    places = []
    if parts.all_time:
        places.append("all")
    if parts.days is not None:
        first, last = parts.days
        if first <= epoch - epoch % 86400 and (last is None or epoch - epoch % 86400 < last):
            places.append("days")
    for first, last in parts.hours:
        if first <= epoch - epoch % 3600 and (last is None or epoch - epoch % 3600 < last):
            places.append(f"hours {first}")
    for start, end in parts.raw:
        if start <= moment and (end is None or moment < end):
            places.append(f"raw {start}")

    expected = 1 if in_window(moment, since, until) else 0
    assert len(places) == expected, f"{moment} in [{since}, {until}) counted in {places}: {parts}"
    if places and places[0] != "all":
        from_rollups = not places[0].startswith("raw")
        assert from_rollups == hour_covered(moment, since, until), (
            f"{moment} in [{since}, {until}) counted in {places}"
        )
