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

A window [since, until) is split into whole days (daily rollups), whole
hours (hourly rollups) and the partial hours at its edges (raw rows). The
edges are exact while their raw rows exist, that is unless the window
starts before the prune cutoff.

Invariant: total = completed + failed + timed out + in progress.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    false,
    func,
    or_,
    select,
)

from cronledger.store.tables import (
    COMPLETED,
    STARTED,
    TIMED_OUT,
    cron_duration_bins,
    cron_executions,
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
    bins: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    raw_durations: list[int] = field(default_factory=list)
    from_rollups: bool = False

    def add_duration_max(self, value: int | None) -> None:
        if value is not None and (self.duration_max is None or value > self.duration_max):
            self.duration_max = value


@dataclass(frozen=True)
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
) -> list[ServiceStats]:
    """Return statistics per service for runs started in [since, until).

    Known services without a run in the window are included with zero
    counts, so a silent service stays visible.
    """
    parts = split_window(since, until)
    totals: dict[str, _Totals] = defaultdict(_Totals)

    with engine.connect() as connection:
        _fold_rollups(connection, parts, service_name, totals)
        _fold_bins(connection, parts, service_name, totals)
        _fold_raw(connection, parts, service_name, totals)
        services = _services(connection, service_name)

    names = sorted(set(totals) | set(services))
    return [_build(name, totals.get(name, _Totals()), services.get(name)) for name in names]


def _rollup_filter(
    table: object, parts: WindowParts, service_name: str | None
) -> ColumnElement[bool]:
    columns = table.c  # type: ignore[attr-defined]
    if parts.all_time:
        ranges: list[ColumnElement[bool]] = [columns.granularity == "all"]
    else:
        ranges = []
        if parts.days is not None:
            ranges.append(_bucket_range(columns, "day", parts.days))
        for hours in parts.hours:
            ranges.append(_bucket_range(columns, "hour", hours))
    condition = or_(false(), *ranges)
    if service_name is not None:
        condition = and_(condition, columns.service_name == service_name)
    return condition


def _bucket_range(
    columns: object, granularity: str, bounds: tuple[int, int | None]
) -> ColumnElement[bool]:
    start, end = bounds
    terms = [columns.granularity == granularity, columns.bucket_start >= start]  # type: ignore[attr-defined]
    if end is not None:
        terms.append(columns.bucket_start < end)  # type: ignore[attr-defined]
    return and_(*terms)


def _fold_rollups(
    connection: Connection, parts: WindowParts, service_name: str | None, totals: dict[str, _Totals]
) -> None:
    if not parts.all_time and parts.days is None and not parts.hours:
        return
    rollups = cron_rollups.c
    query = (
        select(
            rollups.service_name,
            func.sum(rollups.started_count),
            func.sum(rollups.completed_count),
            func.sum(rollups.failed_count),
            func.sum(rollups.timed_out_count),
            func.sum(rollups.items_sum),
            func.sum(rollups.duration_count),
            func.sum(rollups.duration_sum_ms),
            func.max(rollups.duration_max_ms),
        )
        .where(_rollup_filter(cron_rollups, parts, service_name))
        .group_by(rollups.service_name)
    )
    for (
        name,
        started,
        completed,
        failed,
        timed_out,
        items,
        count,
        total,
        maximum,
    ) in connection.execute(query):
        entry = totals[name]
        entry.started += int(started or 0)
        entry.completed += int(completed or 0)
        entry.failed += int(failed or 0)
        entry.timed_out += int(timed_out or 0)
        entry.items += int(items or 0)
        entry.duration_count += int(count or 0)
        entry.duration_sum += int(total or 0)
        entry.add_duration_max(int(maximum) if maximum is not None and maximum >= 0 else None)
        entry.from_rollups = True


def _fold_bins(
    connection: Connection, parts: WindowParts, service_name: str | None, totals: dict[str, _Totals]
) -> None:
    if not parts.all_time and parts.days is None and not parts.hours:
        return
    bins = cron_duration_bins.c
    query = (
        select(bins.service_name, bins.bin, func.sum(bins.runs))
        .where(_rollup_filter(cron_duration_bins, parts, service_name))
        .group_by(bins.service_name, bins.bin)
    )
    for name, index, runs in connection.execute(query):
        totals[name].bins[int(index)] += int(runs or 0)


def _fold_raw(
    connection: Connection, parts: WindowParts, service_name: str | None, totals: dict[str, _Totals]
) -> None:
    runs = cron_executions.c
    for start, end in parts.raw:
        dialect = connection.dialect.name
        conditions = [runs.execution_time >= time_bound(dialect, start)]
        if end is not None:
            conditions.append(runs.execution_time < time_bound(dialect, end))
        if service_name is not None:
            conditions.append(runs.service_name == service_name)
        query = select(
            runs.service_name, runs.status, runs.items_processed, runs.duration_ms
        ).where(*conditions)
        for name, status, items, duration in connection.execute(query):
            entry = totals[name]
            _count_status(entry, status)
            entry.items += int(items or 0)
            if duration is not None:
                value = max(int(duration), 0)
                entry.duration_count += 1
                entry.duration_sum += value
                entry.add_duration_max(value)
                entry.bins[duration_bin(value)] += 1
                entry.raw_durations.append(value)


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


def _services(connection: Connection, service_name: str | None) -> dict[str, dict[str, object]]:
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
    if service_name is not None:
        query = query.where(services.name == service_name)
    return {row.name: dict(row._mapping) for row in connection.execute(query)}


def _build(name: str, entry: _Totals, service: dict[str, object] | None) -> ServiceStats:
    exact = not entry.from_rollups
    if exact:
        values = sorted(entry.raw_durations)
        p50 = nearest_rank(values, 0.50)
        p95 = nearest_rank(values, 0.95)
    else:
        p50 = binned_percentile(entry.bins, 0.50, entry.duration_max)
        p95 = binned_percentile(entry.bins, 0.95, entry.duration_max)

    info = service or {}
    return ServiceStats(
        service_name=name,
        display_name=str(info.get("display_name") or name),
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
        last_run_at=info.get("last_run_at"),  # type: ignore[arg-type]
        last_status=info.get("last_status"),  # type: ignore[arg-type]
        last_success_at=info.get("last_success_at"),  # type: ignore[arg-type]
        last_failure_at=info.get("last_failure_at"),  # type: ignore[arg-type]
        last_error=info.get("last_error"),  # type: ignore[arg-type]
        streak_status=info.get("streak_status"),  # type: ignore[arg-type]
        streak_length=int(info.get("streak_length") or 0),  # type: ignore[call-overload]
    )


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
