"""Per-service statistics over all time or any window of start times.

Figures come from the rollups that a database trigger maintains on every
write (see migration 0002), so they cost the same at ten runs or ten
million, and stay exact after ``cronledger prune`` deletes old rows:

- counts per status, items processed, average and maximum duration: exact,
  except that the maximum keeps a run that an update later moved to another
  service or hour or gave a shorter duration (a maximum cannot be subtracted);
- p50 and p95 duration: exact when the window lies within one hour of raw
  rows, otherwise estimated from logarithmic duration bins (four per
  doubling). The estimate is the bin's log-scale midpoint rounded to whole
  ms, so it is within 9.1 % of the exact value plus 1 ms (10 ms reads as 9).
  A percentile whose rank is the last is the maximum, which is exact.

A window [since, until) is split into whole days (daily rollups), whole
hours (hourly rollups) and the partial hours at its edges (raw rows). The
edges are exact while their raw rows exist, that is unless the window
starts before the prune cutoff.

NOTE: runs that started before 1970 are not exact in windows. The trigger
rounds a negative epoch towards zero (``epoch - epoch % 3600``), so such a
run falls in the bucket after its own, and a window near or before
1970-01-01 can count it twice or miss it. All-time figures stay exact.

Invariant: total = completed + failed + timed out + in progress.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import accumulate
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    Subquery,
    Table,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    or_,
    select,
    text,
    type_coerce,
    union_all,
)
from sqlalchemy.types import NullType

from cronledger.bucket_cache import (
    BucketCache,
    BucketFigures,
    Figures,
    States,
    Version,
    cache_for,
    read_states,
)
from cronledger.store.tables import (
    COMPLETED,
    STARTED,
    TIMED_OUT,
    cron_duration_bins,
    cron_executions,
    cron_missed_runs,
    cron_rollups,
    cron_services,
    time_bound,
)

HOUR = 3600
DAY = 86400
BINS_PER_DOUBLING = 4


@dataclass
class _Totals:
    """Counts folded from rollup rows and raw rows of one service."""

    started: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    items: int = 0
    duration_count: int = 0
    duration_sum: int = 0
    duration_max: int | None = None
    raw_durations: list[int] = field(default_factory=list)
    percentile_bins: tuple[int | None, int | None] | None = None
    from_rollups: bool = False

    def add_duration_max(self, value: int | None) -> None:
        if value is not None and (self.duration_max is None or value > self.duration_max):
            self.duration_max = value


# Frozen: on PostgreSQL a long-running reader returns the same instance
# again while a service's inputs are unchanged, so a caller's edit would
# show in later calls. Freezing costs about 4 ms per 1,000 instances built,
# which only a process's first call builds.
@dataclass(frozen=True, slots=True)
class ServiceStats:
    """Statistics of one service within one window."""

    service_name: str
    display_name: str
    total: int
    completed: int
    failed: int
    timed_out: int
    in_progress: int
    items_processed: int
    avg_duration_ms: float | None
    p50_duration_ms: int | None
    p95_duration_ms: int | None
    max_duration_ms: int | None
    percentiles_exact: bool
    last_run_at: datetime | None
    last_status: str | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    streak_status: str | None
    streak_length: int
    missed: int = 0  # expected fire times in the window that never started

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.timed_out

    @property
    def success_rate(self) -> float | None:
        """Completed runs as a share of finished ones, or None before any finish."""
        return self.completed / self.finished if self.finished else None


@dataclass(frozen=True)
class WindowParts:
    """A window of start times split by where its runs are counted.

    Bucket bounds are epoch seconds; ``raw`` ranges are datetimes.
    """

    all_time: bool
    days: tuple[int, int | None] | None
    hours: tuple[tuple[int, int | None], ...]
    raw: tuple[tuple[datetime, datetime | None], ...]


def duration_bin(milliseconds: int) -> int:
    """Return the logarithmic bin of a duration, as the database trigger computes it."""
    return math.floor(BINS_PER_DOUBLING * math.log2(max(milliseconds, 0) + 1))


def bin_estimate(index: int) -> float:
    """Return the representative duration of a bin: its midpoint on the log scale."""
    return float(2 ** ((index + 0.5) / BINS_PER_DOUBLING) - 1)


def nearest_rank(sorted_values: Sequence[int], fraction: float) -> int | None:
    """Return the nearest-rank percentile of ascending ``sorted_values``."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def binned_percentile(bins: dict[int, int], fraction: float, maximum: int | None) -> int | None:
    """Return the nearest-rank percentile estimated from duration bins."""
    total = sum(count for count in bins.values() if count > 0)
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index in sorted(bins):
        seen += max(bins[index], 0)
        if seen >= rank:
            estimate = round(bin_estimate(index))
            return min(estimate, maximum) if maximum is not None else estimate
    return maximum


def split_window(since: datetime | None, until: datetime | None) -> WindowParts:
    """Split [since, until) into daily buckets, hourly buckets and raw edges."""
    if since is None and until is None:
        return WindowParts(all_time=True, days=None, hours=(), raw=())

    low = int(since.timestamp()) if since is not None else 0
    low_exact = since is None or since.timestamp() == low
    high = int(until.timestamp()) if until is not None else None

    first_hour = _ceil(low, HOUR) if low_exact else _ceil(low + 1, HOUR)
    last_hour = _floor(high, HOUR) if high is not None else None

    raw: list[tuple[datetime, datetime | None]] = []
    if last_hour is not None and first_hour > last_hour:
        # The window lies within one hour: raw rows only.
        return WindowParts(all_time=False, days=None, hours=(), raw=((_dt(since, low), until),))

    if since is not None and _ts(since) < first_hour:
        raw.append((since, _from_epoch(first_hour)))
    if until is not None and last_hour is not None and last_hour < _ts(until):
        raw.append((_from_epoch(last_hour), until))

    first_day = _ceil(first_hour, DAY)
    last_day = _floor(last_hour, DAY) if last_hour is not None else None
    if last_day is not None and first_day >= last_day:
        return WindowParts(
            all_time=False, days=None, hours=((first_hour, last_hour),), raw=tuple(raw)
        )

    hours: list[tuple[int, int | None]] = []
    if first_hour < first_day:
        hours.append((first_hour, first_day))
    if last_day is not None and last_hour is not None and last_day < last_hour:
        hours.append((last_day, last_hour))
    return WindowParts(
        all_time=False, days=(first_day, last_day), hours=tuple(hours), raw=tuple(raw)
    )


def service_stats(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    service_name: str | None = None,
    percentiles: bool = True,
) -> list[ServiceStats]:
    """Return statistics per service for runs started in [since, until).

    Known services without a run in the window are included with zero
    counts, so a silent service stays visible. ``percentiles=False`` skips
    p50 and p95 (left None), which saves the largest query.
    """
    parts = split_window(since, until)
    totals: dict[str, _Totals] = defaultdict(_Totals)

    with engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            _tune_transaction(connection)
        if postgres and _uses_rollups(parts):
            # One service's figures cost a few ms to read. A service page requests
            # one window per chart bar, and those would push the overview's
            # windows out of the shared cache, so they get a cache of their own.
            cache = cache_for(engine) if service_name is None else BucketCache()
            return _cached_stats(connection, cache, parts, since, until, service_name, percentiles)

        _fold_rollups(connection, parts, service_name, totals)
        _fold_raw(connection, parts, service_name, totals)
        if percentiles:
            _fold_percentiles(connection, parts, service_name, totals)
        services = _services(connection, service_name)
        missed = _missed_counts(connection, since, until, service_name)

    names = sorted(set(totals) | set(services))
    return [
        _build(
            name, totals.get(name, _Totals()), services.get(name), percentiles, missed.get(name, 0)
        )
        for name in names
    ]


def read_ahead(
    engine: Engine, since: datetime, *, within: timedelta, percentiles: bool = True
) -> bool:
    """Read a sliding window's statistics as they will be once its start passes the next hour.

    A window that slides with the clock (``since`` = now - 7 days, say) is
    cached under the whole hours and days it covers, so once its start
    passes an hour boundary the next call finds nothing cached and reads
    every service. Called less than ``within`` before that boundary, this
    reads the next window ahead, and the first call after the boundary
    reads only the services that changed in between. Returns whether it
    read. Only PostgreSQL keeps statistics between calls, so elsewhere this
    does nothing.
    """
    if engine.dialect.name != "postgresql":
        return False
    # The first whole hour of the window, as split_window finds it: the
    # window keeps its buckets while its start stays at or before this hour.
    low = int(since.timestamp())
    boundary = _ceil(low, HOUR) if since.timestamp() == low else _ceil(low + 1, HOUR)
    if boundary - since.timestamp() > within.total_seconds():
        return False
    # A second past the boundary: the first start that gets the next window's
    # buckets, with the whole hour after the boundary as its raw edge.
    service_stats(engine, since=_from_epoch(boundary + 1), percentiles=percentiles)
    return True


def _tune_transaction(connection: Connection) -> None:
    """Set PostgreSQL options for the statistics' transaction, in one round trip."""
    # JIT off, because planning these short aggregates with JIT costs more
    # (tens of ms) than it saves. 32 MB work_mem, because a month's window
    # pools some million bin rows and 4 MB makes that aggregate spill to disk.
    # UTC, so that timestamps come back with nothing to convert.
    connection.execute(
        text(
            "SELECT set_config('jit', 'off', true), set_config('work_mem', '32MB', true),"
            " set_config('TimeZone', 'UTC', true)"
        )
    )


def _rollup_filter(
    table: Table, parts: WindowParts, service_name: str | Sequence[str] | None
) -> ColumnElement[bool]:
    columns = table.c
    if parts.all_time:
        ranges: list[ColumnElement[bool]] = [columns.granularity == "all"]
    else:
        ranges = []
        if parts.days is not None:
            ranges.append(_bucket_range(table, "day", parts.days))
        for hours in parts.hours:
            ranges.append(_bucket_range(table, "hour", hours))
    condition = or_(false(), *ranges)
    if isinstance(service_name, str):
        condition = and_(condition, columns.service_name == service_name)
    elif service_name is not None:
        # The (service_name, granularity, bucket_start) index finds these
        # services' rows; without it, PostgreSQL reads every row of the range.
        condition = and_(condition, columns.service_name.in_(service_name))
    return condition


def _bucket_range(
    table: Table, granularity: str, bounds: tuple[int, int | None]
) -> ColumnElement[bool]:
    start, end = bounds
    terms = [table.c.granularity == granularity, table.c.bucket_start >= start]
    if end is not None:
        terms.append(table.c.bucket_start < end)
    return and_(*terms)


def _uses_rollups(parts: WindowParts) -> bool:
    return parts.all_time or parts.days is not None or bool(parts.hours)


def _fold_rollups(
    connection: Connection, parts: WindowParts, service_name: str | None, totals: dict[str, _Totals]
) -> None:
    if not _uses_rollups(parts):
        return
    for name, *figures in connection.execute(_rollup_query(parts, service_name)).all():
        entry = totals[name]
        _add_figures(entry, figures)
        entry.from_rollups = True


def _rollup_query(parts: WindowParts, service_name: str | Sequence[str] | None) -> Any:
    """Return the figures per service summed over the window's rollup rows."""
    rollups = cron_rollups.c
    return (
        select(
            rollups.service_name,
            _sum(rollups.started_count),
            _sum(rollups.completed_count),
            _sum(rollups.failed_count),
            _sum(rollups.timed_out_count),
            _sum(rollups.items_sum),
            _sum(rollups.duration_count),
            _sum(rollups.duration_sum_ms),
            func.max(rollups.duration_max_ms),
        )
        .where(_rollup_filter(cron_rollups, parts, service_name))
        .group_by(rollups.service_name)
    )


# A run at a window's edge: start, status, items processed, duration in ms.
EdgeRun = tuple[datetime, str | None, int | None, int | None]
# The runs of one service inside one raw edge: an hour's runs in start order,
# and the slice [low, high) of them that falls within the window.
EdgeSlice = tuple[tuple[EdgeRun, ...], int, int]

_run_start = itemgetter(0)


def _cached_stats(
    connection: Connection,
    cache: BucketCache,
    parts: WindowParts,
    since: datetime | None,
    until: datetime | None,
    service_name: str | None,
    percentiles: bool,
) -> list[ServiceStats]:
    """Return the statistics, reading only what changed since the previous call.

    PostgreSQL only: the versions are row ids that SQLite does not have
    (see ``cronledger.bucket_cache``). A service's result is built again only
    when one of its inputs differs from the previous call's: its rollup
    figures and edge runs (both by version), the slice of those runs inside
    the window, its cron_services row or its missed count. Between two calls
    a few seconds apart that is the few services that ran, and those whose
    oldest edge run left the window.
    """
    key = cache_key(parts)
    states = read_states(connection, None if service_name is None else (service_name,))
    buckets = _cached_buckets(connection, cache, key, parts, service_name, states, percentiles)
    edges = _cached_edges(connection, cache, key, parts, service_name, states.versions)
    services = _cached_services(connection, cache, key, service_name, states.row_versions)
    missed = _missed_counts(connection, since, until, service_name)

    previous = cache.results(key, percentiles)
    built: dict[str, tuple[Hashable, Any]] = {}
    for name in sorted(set(buckets) | set(edges) | set(services)):
        inputs = (buckets.get(name), edges.get(name), services.get(name), missed.get(name, 0))
        prior = previous.get(name)
        # The runs tuples compare by identity first, so an unchanged entry costs little.
        if prior is not None and prior[0] == inputs:
            built[name] = prior
        else:
            built[name] = (inputs, _combine(name, *inputs, percentiles=percentiles))
    cache.keep_results(key, percentiles, built)
    return [result for _, result in built.values()]


def cache_key(parts: WindowParts) -> Hashable:
    """Return the key a window's cached figures are kept under: its whole days and hours.

    Windows whose starts differ within one hour share it, and read only
    the slice of their raw edge that differs.
    """
    return (parts.all_time, parts.days, parts.hours)


def _cached_buckets(
    connection: Connection,
    cache: BucketCache,
    key: Hashable,
    parts: WindowParts,
    service_name: str | None,
    states: States,
    percentiles: bool,
) -> dict[str, BucketFigures]:
    """Return each service's figures in the rollup part, reading only changed services."""
    read = partial(
        _read_bucket_figures, connection, parts, all_time=states.all_time, percentiles=percentiles
    )
    # Figures read with bins and without are kept apart, so a list view's
    # entries never stand in for a view that needs percentiles.
    return cache.fetch(
        key,
        ("buckets", percentiles),
        states.versions,
        read,
        service_name=service_name,
        missing=BucketFigures(None, () if percentiles else None, () if percentiles else None),
    )


def _cached_edges(
    connection: Connection,
    cache: BucketCache,
    key: Hashable,
    parts: WindowParts,
    service_name: str | None,
    versions: dict[str, Version],
) -> dict[str, tuple[EdgeSlice, ...]]:
    """Return each service's runs in the window's raw edges, as slices of whole hours.

    The runs of each edge's hour are kept under the service's version, so a
    call reads only the changed services' runs, however long the edge is.
    """
    edges: dict[str, list[EdgeSlice]] = defaultdict(list)
    for start, end in parts.raw:
        hour = _floor(int(start.timestamp()), HOUR)

        no_runs: tuple[EdgeRun, ...] = ()
        found = cache.fetch(
            key,
            ("edge", hour),
            versions,
            partial(_read_hour_runs, connection, hour),
            service_name=service_name,
            missing=no_runs,
        )
        for name, runs in found.items():
            if not runs:
                continue
            # Usually every run of the hour lies inside the window, so no search is needed.
            low = 0 if runs[0][0] >= start else bisect_left(runs, start, key=_run_start)
            high = len(runs)
            if end is not None and runs[-1][0] >= end:
                high = bisect_left(runs, end, key=_run_start)
            if low < high:
                edges[name].append((runs, low, high))
    return {name: tuple(slices) for name, slices in edges.items()}


def _cached_services(
    connection: Connection,
    cache: BucketCache,
    key: Hashable,
    service_name: str | None,
    row_versions: dict[str, Version],
) -> dict[str, _ServiceRow]:
    """Return each service's cron_services columns, reading only rows changed since last time."""
    read = partial(_services, connection)
    return cache.fetch(key, "services", row_versions, read, service_name=service_name)


def _read_hour_runs(
    connection: Connection, hour: int, names: str | Sequence[str] | None
) -> dict[str, tuple[EdgeRun, ...]]:
    """Read the runs that started in one hour, per service in start order."""
    runs = cron_executions.c
    dialect = connection.dialect.name
    condition = and_(
        runs.execution_time >= time_bound(dialect, _from_epoch(hour)),
        runs.execution_time < time_bound(dialect, _from_epoch(hour + HOUR)),
    )
    if isinstance(names, str):
        condition = and_(condition, runs.service_name == names)
    elif names is not None:
        condition = and_(condition, runs.service_name.in_(names))
    query = (
        select(
            runs.service_name,
            # Plain DateTime: the statistics' transaction is in UTC, so the
            # driver's values are already what UTCDateTime would return, and
            # its check per row cost 3 ms of an hour's 7,000 runs.
            type_coerce(runs.execution_time, DateTime(timezone=True)),
            runs.status,
            runs.items_processed,
            runs.duration_ms,
        )
        .where(condition)
        .order_by(runs.service_name, runs.execution_time)
    )
    found: dict[str, list[EdgeRun]] = defaultdict(list)
    for row in connection.execute(query).all():
        found[row[0]].append(row[1:])
    return {name: tuple(hour_runs) for name, hour_runs in found.items()}


def _combine(
    name: str,
    bucket: BucketFigures | None,
    edge: tuple[EdgeSlice, ...] | None,
    service: _ServiceRow | None,
    missed: int,
    *,
    percentiles: bool,
) -> ServiceStats:
    """Build one service's statistics from its rollup part and its raw edge runs."""
    entry = _Totals()
    if bucket is not None and bucket.figures is not None:
        # Already whole numbers: set, not added.
        entry = _Totals(*bucket.figures, from_rollups=True)
    durations = _add_edge_runs(entry, edge) if edge else []

    if not entry.from_rollups:
        # Runs only in the raw edges get exact percentiles, as in a window
        # that needs no rollups at all.
        entry.raw_durations = durations
    elif percentiles and bucket is not None:
        bins: Sequence[int] = bucket.bins or ()
        counts: Sequence[int] = bucket.counts or ()
        if durations:
            more = sorted(Counter(map(_postgres_bin, durations)).items())
            bins, counts = _merge_bins(
                bins, counts, [index for index, _ in more], [runs for _, runs in more]
            )
        if bins:
            cumulative = list(accumulate(counts))
            entry.percentile_bins = (
                _rank_bin(bins, cumulative, 0.50),
                _rank_bin(bins, cumulative, 0.95),
            )
    return _build(name, entry, service, percentiles, missed)


def _add_edge_runs(entry: _Totals, edge: tuple[EdgeSlice, ...]) -> list[int]:
    """Add the edge runs' figures to ``entry`` and return their durations (0 or more)."""
    # Plain local counters: a first call builds 1,000 services, each with an
    # hour of edge runs, and attribute updates per run cost twice as much.
    started = completed = timed_out = failed = items = 0
    durations: list[int] = []

    for runs, low, high in edge:
        for _, status, run_items, duration in runs[low:high]:
            # The same status mapping as the trigger: an unknown status counts as failed.
            if status == COMPLETED:
                completed += 1
            elif status == STARTED:
                started += 1
            elif status == TIMED_OUT:
                timed_out += 1
            else:
                failed += 1
            if run_items:
                items += run_items
            if duration is not None:
                durations.append(duration if duration > 0 else 0)

    entry.started += started
    entry.completed += completed
    entry.timed_out += timed_out
    entry.failed += failed
    entry.items += items
    if durations:
        entry.duration_count += len(durations)
        entry.duration_sum += sum(durations)
        entry.add_duration_max(max(durations))
    return durations


def _merge_bins(
    bins: Sequence[int], counts: Sequence[int], more_bins: Sequence[int], more_counts: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Add one ascending histogram to another, both as (bins, counts)."""
    merged_bins, merged_counts = list(bins), list(counts)
    for index, runs in zip(more_bins, more_counts, strict=True):
        position = bisect_left(merged_bins, index)
        if position < len(merged_bins) and merged_bins[position] == index:
            merged_counts[position] += runs
        else:
            merged_bins.insert(position, index)
            merged_counts.insert(position, runs)
    return merged_bins, merged_counts


def _read_bucket_figures(
    connection: Connection,
    parts: WindowParts,
    names: str | Sequence[str] | None,
    all_time: dict[str, tuple[Any, ...]],
    percentiles: bool,
) -> dict[str, BucketFigures]:
    """Read the rollup figures (and bins) of ``names`` in the window from the database."""
    if parts.all_time:
        # The all-time rollup rows came with the versions a moment ago.
        figures = {name: _whole(values) for name, values in all_time.items()}
        if isinstance(names, str):
            figures = {names: figures[names]} if names in figures else {}
        elif names is not None:
            figures = {name: figures[name] for name in names if name in figures}
        histograms = {}
        if percentiles:
            rows = connection.execute(_bins_query(parts, names)).all()
            histograms = {name: _ascending(found, counts) for name, found, counts in rows}
        return {
            name: BucketFigures(values, *histograms.get(name, ((), ())))
            if percentiles
            else BucketFigures(values, None, None)
            for name, values in figures.items()
        }

    if not percentiles:
        rows = connection.execute(_rollup_query(parts, names)).all()
        return {row[0]: BucketFigures(_whole(row[1:]), None, None) for row in rows}
    # Figures and bins in one statement: a call after a few changes reads
    # only a few services, where each statement's own cost counts.
    summed = _rollup_query(parts, names).subquery("summed")
    binned = _bins_query(parts, names).subquery("binned")
    query = select(*summed.c, binned.c.bins, binned.c.counts).select_from(
        summed.outerjoin(binned, binned.c.service_name == summed.c.service_name)
    )
    read: dict[str, BucketFigures] = {}
    for row in connection.execute(query).all():
        histogram = _ascending(row[9], row[10]) if row[9] is not None else ((), ())
        read[row[0]] = BucketFigures(_whole(row[1:9]), *histogram)
    return read


def _bins_query(parts: WindowParts, names: str | Sequence[str] | None) -> Any:
    """Return each service's duration bins in the rollup part of the window, as two arrays.

    One row per service comes back: a cumulative walk over some thirty bins
    costs less in Python than a window function over every (service, bin)
    row costs in PostgreSQL. The arrays come unordered (see ``_ascending``).
    """
    counted = _pooled_bins(parts, names)
    # NullType: psycopg already returns Python lists, and SQLAlchemy's ARRAY
    # result processing would walk every element once more.
    return select(
        counted.c.service_name,
        func.array_agg(counted.c.bin, type_=NullType()).label("bins"),
        func.array_agg(counted.c.n, type_=NullType()).label("counts"),
    ).group_by(counted.c.service_name)


def _ascending(
    bins: Sequence[int], counts: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return a histogram's bins in ascending order, with their counts.

    Sorted here because ``array_agg(... ORDER BY bin)`` sorts each service's
    bins apart, which doubled the all-time read (26 ms against 13 ms for
    1,000 services). The arrays of one group are never empty.
    """
    ordered_bins, ordered_counts = zip(*sorted(zip(bins, counts, strict=True)), strict=True)
    return ordered_bins, ordered_counts


def _raw_filter(
    connection: Connection, parts: WindowParts, service_name: str | None
) -> ColumnElement[bool] | None:
    runs = cron_executions.c
    dialect = connection.dialect.name
    ranges = []
    for start, end in parts.raw:
        terms = [runs.execution_time >= time_bound(dialect, start)]
        if end is not None:
            terms.append(runs.execution_time < time_bound(dialect, end))
        ranges.append(and_(*terms))
    if not ranges:
        return None
    condition = or_(*ranges)
    if service_name is not None:
        condition = and_(condition, runs.service_name == service_name)
    return condition


def _fold_raw(
    connection: Connection, parts: WindowParts, service_name: str | None, totals: dict[str, _Totals]
) -> None:
    condition = _raw_filter(connection, parts, service_name)
    if condition is None:
        return
    runs = cron_executions.c
    status = runs.status
    duration = case((runs.duration_ms < 0, 0), else_=runs.duration_ms)

    def count_of(matches: ColumnElement[bool]) -> ColumnElement[int]:
        return func.sum(case((matches, 1), else_=0))

    # The same status mapping as the trigger: an unknown status counts as failed.
    query = (
        select(
            runs.service_name,
            count_of(status == STARTED),
            count_of(status == COMPLETED),
            count_of(or_(status.is_(None), status.not_in((STARTED, COMPLETED, TIMED_OUT)))),
            count_of(status == TIMED_OUT),
            func.sum(runs.items_processed),
            func.count(runs.duration_ms),
            func.sum(duration),
            func.max(duration),
        )
        .where(condition)
        .group_by(runs.service_name)
    )
    for name, *figures in connection.execute(query).all():
        _add_figures(totals[name], figures)


def _whole(figures: Sequence[Any]) -> Figures:
    """Return an aggregate row as _Totals fields: counts as ints, an absent maximum as None."""
    started, completed, failed, timed_out, items, count, total, maximum = figures
    return (
        int(started or 0),
        int(completed or 0),
        int(failed or 0),
        int(timed_out or 0),
        int(items or 0),
        int(count or 0),
        int(total or 0),
        int(maximum) if maximum is not None and int(maximum) >= 0 else None,
    )


def _add_figures(entry: _Totals, figures: Sequence[Any]) -> None:
    """Add one aggregate row (counts per status, items, duration count, sum, max)."""
    started, completed, failed, timed_out, items, count, total, maximum = figures
    entry.started += int(started or 0)
    entry.completed += int(completed or 0)
    entry.failed += int(failed or 0)
    entry.timed_out += int(timed_out or 0)
    entry.items += int(items or 0)
    entry.duration_count += int(count or 0)
    entry.duration_sum += int(total or 0)
    if maximum is not None and int(maximum) >= 0:
        entry.add_duration_max(int(maximum))


def _fold_percentiles(
    connection: Connection, parts: WindowParts, service_name: str | None, totals: dict[str, _Totals]
) -> None:
    if not _uses_rollups(parts):
        _fold_raw_durations(connection, parts, service_name, totals)
        return

    # PostgreSQL reads its rollup windows through _cached_stats, so this
    # path, which pools the bins in SQL, serves SQLite.
    raw_condition = _raw_filter(connection, parts, service_name)
    raw_rows = None
    if raw_condition is not None:
        raw_rows = _raw_bins_query(connection, raw_condition)
    _fold_bin_ranks(connection, _pooled_bins(parts, service_name, raw_rows), totals)

    # A service with runs only in the raw edges gets exact percentiles, as
    # in a window that needs no rollups at all.
    raw_only = [
        name for name, entry in totals.items() if not entry.from_rollups and entry.duration_count
    ]
    if raw_only:
        _fold_raw_durations(connection, parts, service_name, totals, only=raw_only)


def _raw_bins_query(connection: Connection, condition: ColumnElement[bool]) -> Any:
    """Return the raw rows' duration bins, binned the way the trigger bins them."""
    runs = cron_executions.c
    duration_bin = _sql_bin(connection, runs.duration_ms).label("bin")
    return select(runs.service_name, duration_bin, literal(1).label("runs")).where(
        condition, runs.duration_ms.is_not(None)
    )


def _pooled_bins(
    parts: WindowParts,
    service_name: str | Sequence[str] | None,
    raw_rows: Any | None = None,
) -> Subquery:
    """Return one count per service and duration bin, from rollup bins and ``raw_rows``.

    ``raw_rows`` is a select of (service_name, bin, runs) for the raw rows at
    the window's edges (``_raw_bins_query``), or None to count the rollups only.
    """
    bins = cron_duration_bins.c
    condition = _rollup_filter(cron_duration_bins, parts, service_name)
    if parts.all_time:
        # All time is one bucket per service, so each (service, bin) row is
        # already the count, and the primary key order feeds the window
        # without a sort.
        return (
            select(bins.service_name, bins.bin, bins.runs.label("n"))
            .where(condition, bins.runs > 0)
            .subquery("counted")
        )
    # As INTEGER: PostgreSQL sums BIGINT as NUMERIC, which made this
    # aggregate over a week's 240,000 bin rows some 15 % slower. One bin of
    # one day or hour counts far fewer than 2**31 runs.
    rollup_rows = select(bins.service_name, bins.bin, cast(bins.runs, Integer).label("runs")).where(
        condition
    )
    if raw_rows is None:
        pooled = rollup_rows.subquery("pooled")
    else:
        pooled = union_all(rollup_rows, raw_rows).subquery("pooled")
    return (
        select(pooled.c.service_name, pooled.c.bin, func.sum(pooled.c.runs).label("n"))
        .group_by(pooled.c.service_name, pooled.c.bin)
        .having(func.sum(pooled.c.runs) > 0)
        .subquery("counted")
    )


def _rank_bin(bins: Sequence[int], cumulative: Sequence[int], fraction: float) -> int:
    """Return the bin that contains the nearest-rank percentile."""
    rank = max(1, math.ceil(fraction * cumulative[-1]))
    return bins[bisect_left(cumulative, rank)]


def _fold_bin_ranks(connection: Connection, counted: Subquery, totals: dict[str, _Totals]) -> None:
    """Find the percentile bins in SQL, so one row per service comes back.

    The percentile's bin is the first whose cumulative count reaches
    fraction * total (for whole counts, cum >= ceil(x) exactly when cum >= x).
    """
    service = counted.c.service_name
    cumulative = select(
        service,
        counted.c.bin,
        func.sum(counted.c.n).over(partition_by=service, order_by=counted.c.bin).label("cum"),
        func.sum(counted.c.n).over(partition_by=service).label("total"),
    ).subquery("cumulative")

    def first_bin(percent: int) -> ColumnElement[int]:
        reached = cumulative.c.cum * 100 >= cumulative.c.total * percent
        return func.min(case((reached, cumulative.c.bin)))

    query = select(cumulative.c.service_name, first_bin(50), first_bin(95)).group_by(
        cumulative.c.service_name
    )
    for name, p50_bin, p95_bin in connection.execute(query).all():
        totals[name].percentile_bins = (p50_bin, p95_bin)


def _fold_raw_durations(
    connection: Connection,
    parts: WindowParts,
    service_name: str | None,
    totals: dict[str, _Totals],
    only: list[str] | None = None,
) -> None:
    condition = _raw_filter(connection, parts, service_name)
    if condition is None:
        return
    runs = cron_executions.c
    query = select(runs.service_name, runs.duration_ms).where(
        condition, runs.duration_ms.is_not(None)
    )
    if only is not None:
        query = query.where(runs.service_name.in_(only))
    for name, duration in connection.execute(query).all():
        totals[name].raw_durations.append(max(int(duration), 0))


def _sql_bin(connection: Connection, duration: ColumnElement[int]) -> ColumnElement[int]:
    """Return SQL for the duration bin, the same expression the trigger uses."""
    positive = case((duration < 0, 0), else_=duration)
    if connection.dialect.name == "postgresql":
        # The trigger's PG_BIN expression (store/rollups.py), built in Core.
        return cast(
            func.floor(
                4 * func.ln(cast(positive, Float) + 1) / func.ln(cast(literal(2), Float)) + 1e-9
            ),
            Integer,
        )
    return cast(func.floor(4 * func.log2(positive + 1)), Integer)


_LN_2 = math.log(2.0)


def _postgres_bin(milliseconds: int) -> int:
    """Return the bin of a duration (0 or more) as PostgreSQL's trigger computes it.

    The trigger's PG_BIN (store/rollups.py), operation for operation in the
    same double precision, so a duration on a bin's boundary lands where the
    trigger put the rollup part's runs.
    """
    return math.floor(4 * math.log(milliseconds + 1.0) / _LN_2 + 1e-9)


def _count_status(entry: _Totals, status: str | None) -> None:
    # Same mapping as the trigger: an unknown status counts as failed.
    if status == STARTED:
        entry.started += 1
    elif status == COMPLETED:
        entry.completed += 1
    elif status == TIMED_OUT:
        entry.timed_out += 1
    else:
        entry.failed += 1


def _sum(column: ColumnElement[Any]) -> ColumnElement[int]:
    # PostgreSQL sums BIGINT as NUMERIC, which psycopg returns as Decimal
    # and sorts more slowly; the sums fit in BIGINT.
    return cast(func.sum(column), BigInteger)


class _ServiceRow(NamedTuple):
    """The columns of cron_services that the statistics report."""

    display_name: str | None
    last_run_at: datetime | None
    last_status: str | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    streak_status: str | None
    streak_length: int | None


def _services(
    connection: Connection, service_name: str | Sequence[str] | None
) -> dict[str, _ServiceRow]:
    services = cron_services.c
    query = select(
        services.name,
        services.display_name,
        services.last_run_at,
        services.last_status,
        services.last_success_at,
        services.last_failure_at,
        services.last_error,
        services.streak_status,
        services.streak_length,
    )
    if isinstance(service_name, str):
        query = query.where(services.name == service_name)
    elif service_name is not None:
        query = query.where(services.name.in_(service_name))
    make = _ServiceRow._make
    return {row[0]: make(row[1:]) for row in connection.execute(query).all()}


def _missed_counts(
    connection: Connection, since: datetime | None, until: datetime | None, service_name: str | None
) -> dict[str, int]:
    """Count the missed fire times per service whose scheduled time is in the window."""
    missed = cron_missed_runs.c
    query = select(missed.service_name, func.count()).group_by(missed.service_name)
    dialect = connection.dialect.name
    if since is not None:
        query = query.where(missed.scheduled_at >= time_bound(dialect, since))
    if until is not None:
        query = query.where(missed.scheduled_at < time_bound(dialect, until))
    if service_name is not None:
        query = query.where(missed.service_name == service_name)
    return {name: int(count) for name, count in connection.execute(query).all()}


_NO_SERVICE_ROW = _ServiceRow(None, None, None, None, None, None, None, None)


def _build(
    name: str,
    entry: _Totals,
    service: _ServiceRow | None,
    percentiles: bool,
    missed: int,
) -> ServiceStats:
    exact = not entry.from_rollups
    p50: int | None = None
    p95: int | None = None
    if percentiles and exact:
        values = sorted(entry.raw_durations)
        p50 = nearest_rank(values, 0.50)
        p95 = nearest_rank(values, 0.95)
    elif percentiles and entry.percentile_bins is not None:
        p50 = _ranked_value(entry, 0.50, entry.percentile_bins[0])
        p95 = _ranked_value(entry, 0.95, entry.percentile_bins[1])

    info = service if service is not None else _NO_SERVICE_ROW
    return ServiceStats(
        service_name=name,
        display_name=info.display_name or name,
        total=entry.started + entry.completed + entry.failed + entry.timed_out,
        completed=entry.completed,
        failed=entry.failed,
        timed_out=entry.timed_out,
        in_progress=entry.started,
        items_processed=entry.items,
        avg_duration_ms=entry.duration_sum / entry.duration_count if entry.duration_count else None,
        p50_duration_ms=p50,
        p95_duration_ms=p95,
        max_duration_ms=entry.duration_max,
        percentiles_exact=exact,
        last_run_at=info.last_run_at,
        last_status=info.last_status,
        last_success_at=info.last_success_at,
        last_failure_at=info.last_failure_at,
        last_error=info.last_error,
        streak_status=info.streak_status,
        streak_length=info.streak_length or 0,
        missed=missed,
    )


# The rounded estimate of every bin up to 2**32 ms, looked up 2,000 times per call.
_BIN_ESTIMATES = tuple(round(bin_estimate(index)) for index in range(32 * BINS_PER_DOUBLING + 1))


def _ranked_value(entry: _Totals, fraction: float, index: int | None) -> int | None:
    """Return a binned percentile, exact when its rank is the last: then it is the maximum.

    That covers p95 of up to 19 runs, where a bin's midpoint would
    otherwise show a value below the only or the slowest run.
    """
    count, maximum = entry.duration_count, entry.duration_max
    if maximum is not None and count > 0 and math.ceil(fraction * count) >= count:
        return maximum
    return _bin_value(index, maximum)


def _bin_value(index: int | None, maximum: int | None) -> int | None:
    if index is None:
        return None
    estimate = (
        _BIN_ESTIMATES[index] if 0 <= index < len(_BIN_ESTIMATES) else round(bin_estimate(index))
    )
    return min(estimate, maximum) if maximum is not None else estimate


def _ceil(value: int, step: int) -> int:
    return -(-value // step) * step


def _floor(value: int, step: int) -> int:
    return value // step * step


def _ts(value: datetime) -> float:
    return value.timestamp()


def _from_epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _dt(value: datetime | None, fallback: int) -> datetime:
    return value if value is not None else _from_epoch(fallback)
