"""The two services that run inside the connector's own asyncio process.

``payment-checker`` is recorded with ``CronExecutionLogger``, the two awaited
calls that a service written before cronledger already makes.
``kodosumi-status`` is recorded with ``@tracked``. Both wake on the interval
that ``cronledger.toml`` declares for them, so the monitor's expectation and
the real loop read the same number.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tomllib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine

from connector.database import EXAMPLE_DIR, utc_now
from connector.services import check_payments, complete_jobs
from cronledger import CronExecutionLogger, tracked
from cronledger.durations import parse_duration

log = logging.getLogger("connector.worker")

WORKER_SERVICES = ("payment-checker", "kodosumi-status")
DEFAULT_CONFIG = EXAMPLE_DIR / "cronledger.toml"


def load_intervals(config_path: Path) -> dict[str, timedelta]:
    """Read the ``interval`` of each worker service from a cronledger config file.

    Raises ValueError naming the file and the service when an interval is
    missing or invalid.
    """
    try:
        document = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"cannot read config file {config_path}: {error}") from None

    intervals = {}
    for name in WORKER_SERVICES:
        raw = document.get("services", {}).get(name, {}).get("interval")
        if raw is None:
            raise ValueError(
                f"{config_path}: [services.{name}] has no interval; the worker needs one, "
                'such as interval = "30s"'
            )
        intervals[name] = parse_duration(raw)
    return intervals


async def check_payments_once(cron_logger: CronExecutionLogger, engine: Engine) -> int:
    """Run payment-checker once, recorded by ``log_start`` and ``log_completion``; return its items.

    An error is recorded as a failed run and logged, and the loop goes on.
    """
    await cron_logger.log_start()
    items_processed = 0
    error: Exception | None = None
    try:
        items_processed = await asyncio.to_thread(check_payments, engine, utc_now())
    except Exception as exc:
        error = exc
        log.error("payment-checker failed: %s", exc)
    finally:
        await cron_logger.log_completion(items_processed, error)
    # One log line per finished run, as for kodosumi-status, so the log can
    # be checked against the recorded runs.
    if error is None:
        log.info("payment-checker: moved %d paid jobs to running", items_processed)
    return items_processed


def status_check(engine: Engine, database_url: str) -> Callable[[], Awaitable[int]]:
    """Return kodosumi-status's check, a coroutine function recorded by ``@tracked``."""

    @tracked("kodosumi-status", database_url=database_url)
    async def check_job_status() -> int:
        # An int result is recorded as the run's items processed.
        return await asyncio.to_thread(complete_jobs, engine, utc_now())

    return check_job_status


async def run_worker(
    engine: Engine, database_url: str, intervals: dict[str, timedelta], *, once: bool = False
) -> None:
    """Run both services on their intervals until SIGTERM or SIGINT, or once each with ``once``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # The worker's own handler lets a run in progress finish and be
        # recorded as it ended, and then stops the loops.
        loop.add_signal_handler(signum, stop.set)

    cron_logger = CronExecutionLogger("payment-checker", database_url)
    check_job_status = status_check(engine, database_url)

    async def payment_checker() -> None:
        await check_payments_once(cron_logger, engine)

    async def kodosumi_status() -> None:
        try:
            completed = await check_job_status()
        except Exception as error:
            # @tracked has recorded the failure; the loop retries next interval.
            log.error("kodosumi-status failed: %s", error)
        else:
            log.info("kodosumi-status: completed %d jobs", completed)

    log.info(
        "worker started: payment-checker every %s, kodosumi-status every %s",
        intervals["payment-checker"],
        intervals["kodosumi-status"],
    )
    try:
        await asyncio.gather(
            _every(intervals["payment-checker"], payment_checker, stop, once),
            _every(intervals["kodosumi-status"], kodosumi_status, stop, once),
        )
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("worker stopped")


async def _every(
    interval: timedelta, work: Callable[[], Awaitable[None]], stop: asyncio.Event, once: bool
) -> None:
    while not stop.is_set():
        await work()
        if once:
            return
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval.total_seconds())
        except TimeoutError:
            pass
