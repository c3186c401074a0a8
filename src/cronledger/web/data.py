"""What the pages, the API and the metrics read: statuses, runs, history, charts.

Counts and durations come from ``service_stats``, and health from the
monitor's evaluation, both joined in ``cronledger.status``. This module
only reads single rows and lists of rows, and never counts runs itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, RowMapping, Table, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from cronledger.alerts.outbox import NotificationRecord, recent_notifications
from cronledger.errors import InvalidValueError
from cronledger.stats import ServiceStats, read_ahead, service_stats
from cronledger.status import (
    RecentRunsCache,
    ServiceStatus,
    collect_status,
    evaluate_services,
    join_status,
)
from cronledger.store.tables import (
    FINISHED_STATUSES,
    STARTED,
    cron_executions,
    cron_health_events,
    cron_missed_runs,
    cron_services,
    cron_skipped_runs,
    time_bound,
)

log = logging.getLogger("cronledger.web")

# Windows offered by the window selector, as (key, label, length).
WINDOWS: tuple[tuple[str, str, timedelta | None], ...] = (
    ("24h", "24 h", timedelta(hours=24)),
    ("7d", "7 d", timedelta(days=7)),
    ("30d", "30 d", timedelta(days=30)),
    ("all", "all time", None),
)
WINDOW_KEYS = tuple(key for key, _, _ in WINDOWS)
DEFAULT_WINDOW = "24h"
RUN_STATUSES = (STARTED, *FINISHED_STATUSES)

# Runs shown per service in the overview's strip.
STRIP_RUNS = 20
# How long before a sliding window's start passes an hour the overview
# reads the next window ahead. A longer cache age widens it to twice that
# age, so that one refresh always falls inside it.
READ_AHEAD_LEAD = timedelta(seconds=60)


def window_since(window: str, now: datetime) -> datetime | None:
    """Return the start of a named window ending at ``now``; None for all time."""
    for key, _, length in WINDOWS:
        if key == window:
            return None if length is None else now - length
    raise InvalidValueError(f"invalid window {window!r}: use one of {', '.join(WINDOW_KEYS)}")


@dataclass(frozen=True)
class Snapshot:
    """Statuses of every service for one window, as computed at ``computed_at``.

    ``renderings`` contains what is derived from the statuses alone (the
    overview's table body, the API's JSON), so that concurrent viewers of
    one snapshot share one rendering instead of each paying for 1,000 rows.
    """

    window: str
    computed_at: datetime
    statuses: tuple[ServiceStatus, ...]
    renderings: dict[Hashable, Any] = field(default_factory=dict, compare=False, repr=False)

    def rendered(self, key: Hashable, render: Callable[[], Any]) -> Any:
        """Return the rendering ``key``, making it with ``render`` on first use."""
        if key not in self.renderings:
            # Two threads may render at once; both results are equal.
            self.renderings[key] = render()
        return self.renderings[key]


class OverviewCache:
    """Statuses of every service per window, recomputed at most every ``max_age`` seconds.

    With 1,000 services a recomputation reads tens of thousands of rows, so
    concurrent viewers share one. Only the first request of a window waits
    for it. Once an entry is older than ``max_age``, a background thread
    recomputes it, and requests keep getting the old one meanwhile; past
    twice ``max_age`` (after an idle spell) a request waits for new figures
    instead, so no viewer sees figures older than that. Pages show
    ``computed_at``, so a viewer knows how fresh the figures are.
    """

    def __init__(
        self,
        engine: Engine,
        max_age: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.max_age = max_age
        self.clock = clock
        # Called with each new snapshot before requests see it, in the thread
        # that computed it, to render what every viewer will ask for.
        self.on_refresh: Callable[[Snapshot], None] | None = None
        self._entries: dict[str, tuple[float, Snapshot]] = {}
        self._locks = {key: threading.Lock() for key in WINDOW_KEYS}
        # Each snapshot judges health anew, right after its statistics, so a
        # row's health and run strip match its counts, except for a write in
        # the few ms between the two reads. On PostgreSQL that costs little,
        # because the recent runs are read only for services that changed.
        self._runs = RecentRunsCache()

    def get(self, window: str) -> Snapshot:
        """Return the snapshot of ``window``, computing it first if there is none."""
        window_since(window, self.clock())  # rejects an unknown window
        entry = self._entries.get(window)
        if entry is None or self._expired(entry):
            with self._locks[window]:
                entry = self._entries.get(window)
                if entry is None or self._expired(entry):
                    return self._refresh(window)
        if time.monotonic() - entry[0] >= self.max_age:
            if self.max_age <= 0:
                with self._locks[window]:
                    return self._refresh(window)
            self._refresh_soon(window)
        return entry[1]

    def peek(self, window: str) -> Snapshot | None:
        """Return the snapshot of ``window`` without blocking, or None if ``get`` must wait.

        A stale snapshot is returned while a background thread refreshes it,
        so an async handler can call this on the event loop.
        """
        entry = self._entries.get(window)
        if entry is None or self.max_age <= 0 or self._expired(entry):
            return None
        if time.monotonic() - entry[0] >= self.max_age:
            self._refresh_soon(window)
        return entry[1]

    async def get_without_waiting(self, window: str) -> Snapshot:
        """Return ``peek(window)``, else ``get(window)`` from a worker thread."""
        snapshot = self.peek(window)
        if snapshot is None:
            snapshot = await run_in_threadpool(self.get, window)
        return snapshot

    def _expired(self, entry: tuple[float, Snapshot]) -> bool:
        """Tell whether an entry is too old to serve even while a refresh runs."""
        return time.monotonic() - entry[0] >= 2 * self.max_age

    def _refresh_soon(self, window: str, *, keep: bool = True) -> None:
        """Start a background refresh of ``window`` unless one is running.

        ``keep=False`` reads the figures without keeping the snapshot.
        """
        if self._locks[window].acquire(blocking=False):
            thread = threading.Thread(
                target=self._refresh_in_background,
                args=(window, keep),
                name=f"cronledger-overview-{window}",
                daemon=True,
            )
            thread.start()

    def clear(self) -> None:
        """Forget every entry, after an action changed what the pages show."""
        self._entries.clear()

    def _refresh(self, window: str) -> Snapshot:
        snapshot = self._compute(window)
        self._entries[window] = (time.monotonic(), snapshot)
        return snapshot

    def _compute(self, window: str) -> Snapshot:
        now = self.clock()
        rows = service_stats(self.engine, since=window_since(window, now))
        evaluations = evaluate_services(self.engine, now, runs_cache=self._runs)
        statuses = join_status(rows, evaluations)
        snapshot = Snapshot(window=window, computed_at=now, statuses=tuple(statuses))
        if self.on_refresh is not None:
            self.on_refresh(snapshot)
        return snapshot

    def warm(self, *windows: str) -> None:
        """Read ``windows`` in background threads, so the first viewers find their figures cached.

        The snapshots are not kept. The first request of a window computes
        its own, which then reads only what changed since (on PostgreSQL),
        and so shows the runs recorded after the server started.
        """
        for window in windows:
            window_since(window, self.clock())  # rejects an unknown window
            self._refresh_soon(window, keep=False)

    def _read_ahead(self, snapshot: Snapshot) -> None:
        """Read the window that follows this one at the next hour, shortly before that hour.

        Each refresh is at most ``max_age`` apart while viewers are active,
        so one of them falls within the lead and the first refresh after
        the hour reads only what changed since (see ``read_ahead``).
        """
        since = window_since(snapshot.window, snapshot.computed_at)
        if since is not None:
            lead = max(READ_AHEAD_LEAD, timedelta(seconds=2 * self.max_age))
            read_ahead(self.engine, since, within=lead)

    def _refresh_in_background(self, window: str, keep: bool) -> None:
        """Recompute one window; the caller acquired its lock, which this releases."""
        try:
            snapshot = self._refresh(window) if keep else self._compute(window)
            # Here, not in _refresh: a viewer who waits for a snapshot
            # should not wait for the next hour's figures too.
            self._read_ahead(snapshot)
        except SQLAlchemyError as error:
            # Requests keep the stale entry; the next one past max_age retries.
            log.warning(
                "overview for window %s not refreshed: %s", window, str(error).splitlines()[0]
            )
        finally:
            self._locks[window].release()


def service_status(engine: Engine, name: str, window: str, now: datetime) -> ServiceStatus | None:
    """Return the status of one service, freshly computed, or None if unknown."""
    found = collect_status(engine, now=now, since=window_since(window, now), service_name=name)
    return found[0] if found else None


def service_exists(engine: Engine, name: str) -> bool:
    with engine.connect() as connection:
        found = connection.execute(
            select(cron_services.c.name).where(cron_services.c.name == name)
        ).first()
    return found is not None


def list_runs(
    engine: Engine,
    service_name: str,
    *,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[RowMapping]:
    """Return runs of one service, newest start first."""
    runs = cron_executions.c
    query = select(cron_executions).where(runs.service_name == service_name)
    dialect = engine.dialect.name
    if status is not None:
        query = query.where(runs.status == status)
    if since is not None:
        query = query.where(runs.execution_time >= time_bound(dialect, since))
    if until is not None:
        query = query.where(runs.execution_time < time_bound(dialect, until))
    query = query.order_by(runs.execution_time.desc(), runs.id.desc()).limit(limit).offset(offset)
    with engine.connect() as connection:
        return [row._mapping for row in connection.execute(query)]


def get_run(engine: Engine, run_id: int) -> RowMapping | None:
    with engine.connect() as connection:
        row = connection.execute(
            select(cron_executions).where(cron_executions.c.id == run_id)
        ).first()
    return row._mapping if row is not None else None


def health_events(engine: Engine, service_name: str, limit: int = 100) -> list[RowMapping]:
    """Return the newest changes of health state of one service, newest first."""
    events = cron_health_events.c
    query = (
        select(cron_health_events)
        .where(events.service_name == service_name)
        .order_by(events.changed_at.desc(), events.id.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        return [row._mapping for row in connection.execute(query)]


def missed_runs(engine: Engine, service_name: str, limit: int = 100) -> list[RowMapping]:
    """Return the newest missed fire times of one service, newest first."""
    return _newest_fire_times(engine, cron_missed_runs, service_name, limit)


def skipped_runs(engine: Engine, service_name: str, limit: int = 100) -> list[RowMapping]:
    """Return the newest fire times the scheduler skipped, newest first."""
    return _newest_fire_times(engine, cron_skipped_runs, service_name, limit)


def _newest_fire_times(
    engine: Engine, table: Table, service_name: str, limit: int
) -> list[RowMapping]:
    query = (
        select(table)
        .where(table.c.service_name == service_name)
        .order_by(table.c.scheduled_at.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        return [row._mapping for row in connection.execute(query)]


def notifications(engine: Engine, service_name: str, limit: int = 50) -> list[NotificationRecord]:
    """Return the newest alerts of one service with their outcome, newest first."""
    with engine.connect() as connection:
        return recent_notifications(connection, service_name, limit)


def mark_run_failed(engine: Engine, run_id: int, by: str, now: datetime) -> bool:
    """Mark a run that is still ``started`` as failed; return False if it is not.

    The status condition makes this safe against a finish or a monitor
    timeout that arrives at the same moment: whichever writes first wins.
    """
    runs = cron_executions.c
    with engine.begin() as connection:
        started_at = connection.execute(
            select(runs.execution_time).where(runs.id == run_id, runs.status == STARTED)
        ).scalar()
        if started_at is None:
            return False
        duration = max(0, round((now - started_at).total_seconds() * 1000))
        message = (
            f"marked failed by {by} from the dashboard at "
            f"{now.strftime('%Y-%m-%d %H:%M:%S')} UTC: the run was still started"
        )
        count = connection.execute(
            cron_executions.update()
            .where(runs.id == run_id, runs.status == STARTED)
            .values(status="failed", finished_at=now, duration_ms=duration, error_message=message)
        ).rowcount
    return bool(count)


@dataclass(frozen=True)
class Bucket:
    """Statistics of one service in one chart bucket [start, end)."""

    start: datetime
    end: datetime
    stats: ServiceStats | None


# Chart ranges: (key, label, bucket length, bucket count).
CHART_RANGES: tuple[tuple[str, str, timedelta, int], ...] = (
    ("24h", "last 24 hours, by hour", timedelta(hours=1), 24),
    ("30d", "last 30 days, by day", timedelta(days=1), 30),
)


def chart_buckets(engine: Engine, service_name: str, range_key: str, now: datetime) -> list[Bucket]:
    """Return ``service_stats`` per hour or day, oldest first, ending with the current one.

    Buckets are whole UTC hours or days, so each reads one rollup row and
    its duration bins, and the current bucket its raw rows so far.
    """
    ranges = {key: (step, count) for key, _, step, count in CHART_RANGES}
    if range_key not in ranges:
        raise InvalidValueError(
            f"invalid chart range {range_key!r}: use one of {', '.join(ranges)}"
        )
    step, count = ranges[range_key]
    seconds = int(step.total_seconds())
    current = datetime.fromtimestamp(int(now.timestamp()) // seconds * seconds, UTC)
    buckets = []
    for index in range(count - 1, -1, -1):
        start = current - step * index
        end = start + step
        found = service_stats(engine, since=start, until=end, service_name=service_name)
        buckets.append(Bucket(start=start, end=end, stats=found[0] if found else None))
    return buckets


def as_iso(value: Any) -> str | None:
    """Return a datetime as ISO 8601 in UTC, or None."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return None
