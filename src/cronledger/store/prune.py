"""Delete old raw runs; their figures stay in the rollups.

Every run is folded into the rollups by the database trigger at the moment
it is written, and deleting a run does not subtract it, so all-time totals,
items and durations stay exact after a prune. A prune gives each service it
deleted runs of a new version, so readers that keep its runs between calls
read them again. Runs still in progress are
never deleted. Failed and timed-out runs may be kept longer than completed
ones, because their error messages are what people come back for.

``prune_bookkeeping`` deletes the rows that the scheduler and the alerts
keep per fire time and per message: fire claims, skipped fire times, and
notifications that were sent or gave up. Missed fire times and health
events are kept, because the statistics count the first and the history
shows the second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    delete,
    func,
    or_,
    select,
    update,
)

from cronledger.store.tables import (
    COMPLETED,
    STARTED,
    cron_executions,
    cron_fire_claims,
    cron_notifications,
    cron_rollups,
    cron_services,
    cron_skipped_runs,
    time_bound,
)

log = logging.getLogger(__name__)

# Rows deleted per statement, so a large prune never holds a long lock.
BATCH_SIZE = 10_000

# Finished runs per service that a prune never deletes.
KEEP_LATEST_RUNS = 20


@dataclass(frozen=True)
class PruneResult:
    """How many rows a prune deleted, or would delete in a dry run."""

    completed: int
    failed: int


def prune_runs(
    engine: Engine,
    *,
    completed_before: datetime,
    failed_before: datetime,
    keep_latest: int = KEEP_LATEST_RUNS,
    dry_run: bool = False,
) -> PruneResult:
    """Delete finished runs that started before the cutoffs; return the counts.

    The newest ``keep_latest`` finished runs of each service are kept
    whatever their age, because health is judged from them: a monthly job
    pruned at 7 days must still show its last run and error.
    """
    runs = cron_executions.c
    dialect = engine.dialect.name
    completed = failed = 0

    with engine.connect() as connection:
        names = list(connection.execute(select(cron_services.c.name)).scalars())

    for name in names:
        completed_cutoff, failed_cutoff = completed_before, failed_before
        if keep_latest > 0:
            with engine.connect() as connection:
                protected = connection.execute(
                    select(runs.execution_time)
                    .where(runs.service_name == name, runs.status != STARTED)
                    .order_by(runs.execution_time.desc())
                    .offset(keep_latest - 1)
                    .limit(1)
                ).scalar()
            if protected is None:
                continue  # no more finished runs than are always kept
            completed_cutoff = min(completed_cutoff, protected)
            failed_cutoff = min(failed_cutoff, protected)

        completed_filter = and_(
            runs.service_name == name,
            runs.status == COMPLETED,
            runs.execution_time < time_bound(dialect, completed_cutoff),
        )
        failed_filter = and_(
            runs.service_name == name,
            or_(runs.status.is_(None), runs.status.not_in((COMPLETED, STARTED))),
            runs.execution_time < time_bound(dialect, failed_cutoff),
        )
        if dry_run:
            completed += _count(engine, completed_filter)
            failed += _count(engine, failed_filter)
        else:
            completed += _delete_in_batches(engine, cron_executions, completed_filter, name)
            failed += _delete_in_batches(engine, cron_executions, failed_filter, name)

    if not dry_run:
        log.info("pruned %d completed and %d failed or timed-out runs", completed, failed)
    return PruneResult(completed=completed, failed=failed)


@dataclass(frozen=True)
class BookkeepingResult:
    """How many scheduler and alert rows a prune deleted, or would delete."""

    fire_claims: int
    skipped_runs: int
    notifications: int


def prune_bookkeeping(
    engine: Engine, *, before: datetime, dry_run: bool = False
) -> BookkeepingResult:
    """Delete fire claims, skipped fire times and finished notifications older than ``before``.

    A scheduler claims only fire times near the present, so a claim days old
    is never consulted again. Pending notifications are kept whatever their
    age, so a prune never drops an alert that has yet to go out.
    """
    dialect = engine.dialect.name
    bound = time_bound(dialect, before)
    conditions = (
        (cron_fire_claims, cron_fire_claims.c.scheduled_at < bound),
        (cron_skipped_runs, cron_skipped_runs.c.scheduled_at < bound),
        (
            cron_notifications,
            and_(
                cron_notifications.c.created_at < bound,
                # The outbox's status of a message still to send.
                cron_notifications.c.status != "pending",
            ),
        ),
    )
    counts = [
        _count(engine, condition) if dry_run else _delete_in_batches(engine, table, condition)
        for table, condition in conditions
    ]
    return BookkeepingResult(*counts)


def _count(engine: Engine, condition: ColumnElement[bool]) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).where(condition)).scalar_one())


def _delete_in_batches(
    engine: Engine, table: Table, condition: ColumnElement[bool], service_name: str | None = None
) -> int:
    """Delete the matching rows in batches, and mark ``service_name`` changed if one is given."""
    deleted = 0
    while True:
        batch = select(table.c.id).where(condition).limit(BATCH_SIZE)
        with engine.begin() as connection:
            count = connection.execute(delete(table).where(table.c.id.in_(batch))).rowcount
            if count and service_name is not None:
                _touch_version(connection, service_name)
        deleted += count
        if count < BATCH_SIZE:
            return deleted


def _touch_version(connection: Connection, service_name: str) -> None:
    """Give the service a new version, so long-running readers read its runs again.

    Deleting a run does not change the rollups, so without this a reader's
    cached recent runs and window edges (``cronledger.bucket_cache``) would
    keep the pruned runs. Rewriting the all-time row with its own values
    gives it a new xmin on PostgreSQL, in the transaction of the delete.
    """
    rollups = cron_rollups.c
    connection.execute(
        update(cron_rollups)
        .where(rollups.service_name == service_name, rollups.granularity == "all")
        .values(started_count=rollups.started_count)
    )
