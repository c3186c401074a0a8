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

from sqlalchemy import Engine, delete, func, select

from cronledger.store.tables import COMPLETED, STARTED, cron_executions, time_bound

log = logging.getLogger(__name__)

# Rows deleted per statement, so a large prune never holds a long lock.
BATCH_SIZE = 10_000


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
    dry_run: bool = False,
) -> PruneResult:
    """Delete finished runs that started before the cutoffs; return the counts."""
    runs = cron_executions.c
    dialect = engine.dialect.name
    completed_filter = (runs.status == COMPLETED) & (
        runs.execution_time < time_bound(dialect, completed_before)
    )
    failed_filter = runs.status.not_in((COMPLETED, STARTED)) & (
        runs.execution_time < time_bound(dialect, failed_before)
    )

    if dry_run:
        with engine.connect() as connection:
            completed = connection.execute(
                select(func.count()).where(completed_filter)
            ).scalar_one()
            failed = connection.execute(select(func.count()).where(failed_filter)).scalar_one()
        return PruneResult(completed=int(completed), failed=int(failed))

    completed = _delete_in_batches(engine, completed_filter)
    failed = _delete_in_batches(engine, failed_filter)
    log.info("pruned %d completed and %d failed or timed-out runs", completed, failed)
    return PruneResult(completed=completed, failed=failed)


def _delete_in_batches(engine: Engine, condition: object) -> int:
    runs = cron_executions.c
    deleted = 0
    while True:
        batch = select(runs.id).where(condition).limit(BATCH_SIZE)  # type: ignore[arg-type]
        with engine.begin() as connection:
            count = connection.execute(delete(cron_executions).where(runs.id.in_(batch))).rowcount
        deleted += count
        if count < BATCH_SIZE:
            return deleted
