"""Delete old raw runs; their figures stay in the rollups.

Every run is folded into the rollups by the database trigger at the moment
it is written, and deleting a run does not subtract it, so all-time totals,
items and durations stay exact after a prune. Runs still in progress are
never deleted. Failed and timed-out runs may be kept longer than completed
ones, because their error messages are what people come back for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, and_, delete, func, or_, select

from cronledger.store.tables import (
    COMPLETED,
    STARTED,
    cron_executions,
    cron_services,
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
            completed += _delete_in_batches(engine, completed_filter)
            failed += _delete_in_batches(engine, failed_filter)

    if not dry_run:
        log.info("pruned %d completed and %d failed or timed-out runs", completed, failed)
    return PruneResult(completed=completed, failed=failed)


def _count(engine: Engine, condition: ColumnElement[bool]) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).where(condition)).scalar_one())


def _delete_in_batches(engine: Engine, condition: ColumnElement[bool]) -> int:
    runs = cron_executions.c
    deleted = 0
    while True:
        batch = select(runs.id).where(condition).limit(BATCH_SIZE)
        with engine.begin() as connection:
            count = connection.execute(delete(cron_executions).where(runs.id.in_(batch))).rowcount
        deleted += count
        if count < BATCH_SIZE:
            return deleted
