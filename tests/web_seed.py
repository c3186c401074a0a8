"""Seed runs for the dashboard tests through the public Python API."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import text

from cronledger import CronExecutionLogger, CronSchedule, ServiceSettings, track
from cronledger.monitor import Monitor
from cronledger.recorder import utc_now
from cronledger.store.engine import get_engine

# Contains markup, so pages that show it prove they escape it.
HOSTILE_ERROR = "<script>window.hacked = 1</script> connection refused & retried"


@dataclass(frozen=True)
class Seeded:
    """Ids of the runs a test needs by role."""

    failed_run_id: int
    open_run_id: int
    timed_out_run_id: int


def _raise(message: str) -> None:
    raise RuntimeError(message)


def seed_runs(database_url: str) -> Seeded:
    """Record completed, failed, timed-out and open runs for three services."""
    for index in range(4):
        with track("flow-sync", database_url=database_url) as run:
            run.items_processed += index + 1
    try:
        with track("flow-sync", database_url=database_url) as run:
            run.items_processed += 2
            _raise(HOSTILE_ERROR)
    except RuntimeError:
        pass

    settings = ServiceSettings(
        name="api-key-sync",
        display_name="API Key Sync",
        schedule=CronSchedule("*/10 * * * *"),
    )
    with track("api-key-sync", database_url=database_url, settings=settings) as run:
        run.items_processed = 3

    async def origin_style() -> int | None:
        logger = CronExecutionLogger("payment-checker", database_url)
        for items in (5, 7):
            await logger.log_start()
            await logger.log_completion(items)
        await logger.log_start()
        await logger.log_completion(0, "payment gateway timed out")
        # A run that never finishes: the monitor times it out below.
        return await logger.log_start()

    stuck_id = asyncio.run(origin_style())
    assert stuck_id is not None, "the start of the stuck run went to the spool"

    engine = get_engine(database_url)
    Monitor(engine).check(now=utc_now() + timedelta(hours=2))

    async def open_run() -> int | None:
        return await CronExecutionLogger("payment-checker", database_url).log_start()

    open_id = asyncio.run(open_run())
    assert open_id is not None, "the start of the open run went to the spool"

    with engine.connect() as connection:
        failed_id = connection.execute(
            text(
                "SELECT id FROM cron_executions WHERE service_name = 'flow-sync'"
                " AND status = 'failed'"
            )
        ).scalar_one()
    return Seeded(failed_run_id=int(failed_id), open_run_id=open_id, timed_out_run_id=stuck_id)


def counts_in_database(database_url: str) -> dict[str, dict[str, int]]:
    """Count runs per service and status with the origin dashboard's plain query."""
    query = text(
        "SELECT service_name, status, COUNT(*) AS runs, COALESCE(SUM(items_processed), 0),"
        " COUNT(duration_ms)"
        " FROM cron_executions GROUP BY service_name, status"
    )
    counts: dict[str, dict[str, int]] = {}
    with get_engine(database_url).connect() as connection:
        for name, status, runs, items, durations in connection.execute(query):
            entry = counts.setdefault(
                name,
                {
                    "total": 0,
                    "completed": 0,
                    "failed": 0,
                    "timed_out": 0,
                    "started": 0,
                    "items_processed": 0,
                    "with_duration": 0,
                },
            )
            entry[status] += int(runs)
            entry["total"] += int(runs)
            entry["items_processed"] += int(items)
            entry["with_duration"] += int(durations)
    return counts
