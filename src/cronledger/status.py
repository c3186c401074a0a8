"""Statistics and health of each service, put together for a status view.

``cronledger status``, the dashboard, the JSON API and the metrics all
show the same figures: the counts come from ``service_stats`` and the
health from ``evaluate_health``, fed with the same runs the monitor reads.
This module is the one place where the two are joined.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, true
from sqlalchemy.sql import lateral

from cronledger.bucket_cache import Version, read_versions
from cronledger.health import Health, RunSnapshot, evaluate_health, runs_needed
from cronledger.monitor import KNOWN_STATUSES, REASON_RUNS
from cronledger.stats import ServiceStats, service_stats
from cronledger.store.services import ServiceRecord, _settings_from_row, load_services
from cronledger.store.tables import STARTED, cron_executions, cron_services


@dataclass(frozen=True)
class ServiceStatus:
    """One service: its statistics in a window, its health now and its newest runs."""

    stats: ServiceStats
    health: Health | None
    record: ServiceRecord | None
    recent_runs: tuple[RunSnapshot, ...] = ()

    @property
    def name(self) -> str:
        return self.stats.service_name


# Up to this many services, runs in progress are read with a filter on their
# names. For more, one scan of the partial index over all of them costs less.
SERVICES_FILTERED = 100


def finished_runs_needed(record: ServiceRecord) -> int:
    """Return how many finished runs the health of ``record`` is judged on."""
    # As monitor.current_health: more than the thresholds need, so a reason
    # such as "5 consecutive failures" counts the whole streak.
    return max(runs_needed(record.settings), REASON_RUNS)


@dataclass(frozen=True)
class Evaluation:
    """The health of one service at one instant, with the runs it was judged on."""

    record: ServiceRecord
    health: Health
    runs: tuple[RunSnapshot, ...]


class RecentRunsCache:
    """Each service's recent runs, kept between evaluations while its version holds.

    Health is judged anew at every ``now``, but on the same runs until one of
    them changes. Every start, finish, time-out or move of a run changes its
    service's version (see ``cronledger.bucket_cache``), so a dashboard that
    evaluates 1,000 services every few seconds reads the runs of those that
    changed, not 30,000 rows each time. PostgreSQL only, like the versions.

    ``cronledger prune`` gives each service it deletes runs of a new version.
    NOTE: runs deleted by hand do not, and can stay in this cache until
    their service changes again.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Version | None, int, list[RunSnapshot]]] = {}
        self._lock = threading.Lock()

    def read(
        self, connection: Connection, records: list[ServiceRecord]
    ) -> dict[str, list[RunSnapshot]]:
        """Return ``recent_runs_by_service(connection, records)``, reading only what changed."""
        if connection.dialect.name != "postgresql":
            return recent_runs_by_service(connection, records)
        # Before the runs, so that a change in between leaves an old version.
        versions = read_versions(connection, None)
        with self._lock:
            entries = dict(self._entries)
        found: dict[str, list[RunSnapshot]] = {}
        stale: dict[str, tuple[ServiceRecord, Version | None, int]] = {}
        for record in records:
            name = record.settings.name
            entry = entries.get(name)
            version, needed = versions.get(name), finished_runs_needed(record)
            if entry is not None and entry[:2] == (version, needed):
                found[name] = entry[2]
            else:
                stale[name] = (record, version, needed)
        if stale:
            fresh = recent_runs_by_service(connection, [record for record, _, _ in stale.values()])
            with self._lock:
                for name, (_, version, needed) in stale.items():
                    found[name] = fresh.get(name, [])
                    self._entries[name] = (version, needed, found[name])
        return found


def evaluate_services(
    engine: Engine,
    now: datetime,
    service_name: str | None = None,
    runs_cache: RecentRunsCache | None = None,
) -> dict[str, Evaluation]:
    """Evaluate the health of every service (or of ``service_name``) at ``now``.

    The result does not depend on a statistics window, so views of several
    windows can share one. A long-running caller passes a ``runs_cache``.
    """
    with engine.connect() as connection:
        if service_name is None:
            records = load_services(connection)
        else:
            records = _load_service(connection, service_name)
        if runs_cache is not None:
            runs = runs_cache.read(connection, records)
        else:
            runs = recent_runs_by_service(connection, records)

    evaluations = {}
    for record in records:
        name = record.settings.name
        health = evaluate_health(
            record.settings,
            runs[name],
            now,
            first_seen=record.created_at,
            resumed_at=record.resumed_at,
        )
        evaluations[name] = Evaluation(record, health, tuple(runs[name]))
    return evaluations


def join_status(
    rows: list[ServiceStats], evaluations: dict[str, Evaluation]
) -> list[ServiceStatus]:
    """Pair each row of statistics with its service's evaluation, if there is one."""
    statuses = []
    for row in rows:
        found = evaluations.get(row.service_name)
        if found is None:
            statuses.append(ServiceStatus(stats=row, health=None, record=None))
        else:
            statuses.append(ServiceStatus(row, found.health, found.record, found.runs))
    return statuses


def collect_status(
    engine: Engine,
    *,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    service_name: str | None = None,
    percentiles: bool = True,
) -> list[ServiceStatus]:
    """Return the status of every service (or of ``service_name``), sorted by name.

    Counts cover runs started in [since, until); health is evaluated at ``now``.
    """
    rows = service_stats(
        engine, since=since, until=until, service_name=service_name, percentiles=percentiles
    )
    return join_status(rows, evaluate_services(engine, now, service_name))


def _load_service(connection: Connection, name: str) -> list[ServiceRecord]:
    """Read one service as ``load_services`` reads each, or none if unknown."""
    row = connection.execute(select(cron_services).where(cron_services.c.name == name)).first()
    if row is None:
        return []
    return [
        ServiceRecord(
            settings=_settings_from_row(row),
            created_at=row.created_at,
            resumed_at=row.resumed_at,
            health_state=row.health_state,
            health_since=row.health_since,
            declared=row.settings_source is not None,
        )
    ]


def recent_runs_by_service(
    connection: Connection, records: list[ServiceRecord]
) -> dict[str, list[RunSnapshot]]:
    """Return, per service, the runs ``monitor.recent_runs`` returns for it.

    That is every run in progress and the newest finished runs its health
    needs, newest first. The monitor sends two statements per service; this
    reads runs in progress for all services in one scan of their partial
    index. Finished runs come from one LATERAL join on PostgreSQL, and from
    one query per service on SQLite, where a query costs no round trip.
    """
    needed = {record.settings.name: finished_runs_needed(record) for record in records}
    if not needed:
        return {}

    runs = cron_executions.c
    columns = (
        runs.service_name,
        runs.id,
        runs.execution_time,
        runs.finished_at,
        runs.status,
        runs.error_message,
    )
    in_progress = select(*columns).where(runs.status == STARTED)
    if len(needed) <= SERVICES_FILTERED:
        in_progress = in_progress.where(runs.service_name.in_(list(needed)))
    started: dict[str, list[Any]] = defaultdict(list)
    for row in connection.execute(in_progress):
        started[row.service_name].append(row)

    finished: dict[str, list[Any]] = defaultdict(list)
    if connection.dialect.name == "postgresql":
        names = (
            select(cron_services.c.name.label("name"))
            .where(cron_services.c.name.in_(list(needed)))
            .subquery("names")
        )
        newest = lateral(
            select(*columns)
            .where(runs.service_name == names.c.name, runs.status != STARTED)
            .order_by(runs.execution_time.desc(), runs.id.desc())
            .limit(max(needed.values()))
        ).alias("newest")
        for row in connection.execute(select(newest).select_from(names.join(newest, true()))):
            finished[row.service_name].append(row)
    else:
        for name, count in needed.items():
            query = (
                select(*columns)
                .where(runs.service_name == name, runs.status != STARTED)
                .order_by(runs.execution_time.desc(), runs.id.desc())
                .limit(count)
            )
            finished[name].extend(connection.execute(query))

    return {
        name: _snapshots([*started[name], *finished[name][:count]])
        for name, count in needed.items()
    }


def _snapshots(rows: list[Any]) -> list[RunSnapshot]:
    """Turn rows into snapshots the way ``monitor.recent_runs`` does, newest first."""
    snapshots = []
    for row in rows:
        if row.execution_time is None:
            continue  # a row from another writer without a start time
        status = row.status if row.status in KNOWN_STATUSES else "failed"
        snapshots.append(
            RunSnapshot(row.id, row.execution_time, row.finished_at, status, row.error_message)
        )
    snapshots.sort(key=lambda run: run.started_at, reverse=True)
    return snapshots
