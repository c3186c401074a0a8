"""Tests of ``CronExecutionLogger``, used the way the origin code uses it."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import Row, select, text
from sqlalchemy import inspect as inspect_database
from sqlalchemy.engine import make_url

from cronledger.errors import InvalidValueError
from cronledger.store.engine import get_engine
from cronledger.store.tables import cron_executions
from cronledger.tracking import CronExecutionLogger

# The dashboard query of the origin code, unchanged.
ORIGIN_DASHBOARD_QUERY = (
    "SELECT service_name, COUNT(*) as total_executions, "
    "COUNT(CASE WHEN status = 'completed' THEN 1 END) as successful_executions, "
    "COUNT(CASE WHEN status = 'failed' THEN 1 END) as failed_executions "
    "FROM cron_executions GROUP BY service_name"
)


def fetch_runs(database_url: str) -> list[Row[Any]]:
    """Return every row of cron_executions, oldest first, with decoded types."""
    with get_engine(database_url).connect() as connection:
        return list(
            connection.execute(select(cron_executions).order_by(cron_executions.c.id)).all()
        )


def fetch_run(database_url: str, execution_id: int) -> Row[Any]:
    with get_engine(database_url).connect() as connection:
        return connection.execute(
            select(cron_executions).where(cron_executions.c.id == execution_id)
        ).one()


async def test_logger_log_start_returns_id(database_url: str) -> None:
    logger = CronExecutionLogger("flow-sync", database_url)

    execution_id = await logger.log_start()

    assert type(execution_id) is int, f"log_start() returned {execution_id!r}"
    assert logger.execution_id == execution_id, "execution_id property differs"
    row = fetch_run(database_url, execution_id)
    assert row.service_name == "flow-sync"
    assert row.status == "started", f"status {row.status!r}"
    assert row.finished_at is None, "a started run has finished_at"
    assert row.duration_ms is None, "a started run has duration_ms"


async def test_logger_completion_with_items(database_url: str) -> None:
    logger = CronExecutionLogger("flow-sync", database_url)
    execution_id = await logger.log_start()
    sleep_start = time.monotonic()
    await asyncio.sleep(0.03)
    slept_ms = math.floor((time.monotonic() - sleep_start) * 1000)

    await logger.log_completion(5)

    row = fetch_run(database_url, execution_id)
    assert row.status == "completed", f"status {row.status!r}"
    assert row.items_processed == 5, f"items_processed {row.items_processed}"
    assert row.error_message is None, f"error_message {row.error_message!r}"
    assert row.duration_ms >= slept_ms, f"duration_ms {row.duration_ms} < slept {slept_ms} ms"
    assert row.finished_at >= row.execution_time, "finished_at before execution_time"
    assert logger.execution_id is None, "execution_id still set after the run ended"


async def test_logger_completion_with_error_string(database_url: str) -> None:
    logger = CronExecutionLogger("flow-sync", database_url)
    execution_id = await logger.log_start()

    await logger.log_completion(0, "boom")

    row = fetch_run(database_url, execution_id)
    assert row.status == "failed", f"status {row.status!r}"
    assert row.error_message == "boom", f"error_message {row.error_message!r}"
    assert row.items_processed == 0, f"items_processed {row.items_processed}"


async def test_logger_completion_with_exception(database_url: str) -> None:
    logger = CronExecutionLogger("flow-sync", database_url)
    raised_id = await logger.log_start()
    try:
        raise ConnectionError("lost connection to upstream")
    except ConnectionError as error:
        await logger.log_completion(2, error)
    created_id = await logger.log_start()
    await logger.log_completion(0, ValueError("no flows for 2026-12-04"))

    raised = fetch_run(database_url, raised_id)
    created = fetch_run(database_url, created_id)
    assert raised.status == "failed", f"status {raised.status!r}"
    first_line = raised.error_message.splitlines()[0]
    assert first_line == "ConnectionError: lost connection to upstream", first_line
    assert "Traceback (most recent call last)" in raised.error_message, "no traceback"
    assert raised.items_processed == 2, f"items_processed {raised.items_processed}"
    assert created.status == "failed", f"status {created.status!r}"
    assert created.error_message == "ValueError: no flows for 2026-12-04"


async def test_logger_origin_usage_pattern(database_url: str) -> None:
    async def sync_flows(fail: bool) -> int:
        await asyncio.sleep(0)
        if fail:
            raise RuntimeError("flow API returned 503")
        return 14

    cron_logger = CronExecutionLogger("flow-sync", database_url)
    for fail in (False, True):
        await cron_logger.log_start()
        try:
            items = await sync_flows(fail)
        except Exception as exc:
            await cron_logger.log_completion(0, str(exc))
        else:
            await cron_logger.log_completion(items)

    rows = fetch_runs(database_url)
    assert [row.status for row in rows] == ["completed", "failed"]
    assert [row.items_processed for row in rows] == [14, 0]
    assert rows[1].error_message == "flow API returned 503"


async def test_logger_sequential_runs_one_instance(database_url: str) -> None:
    logger = CronExecutionLogger("invoice-export", database_url)
    ids = []
    for index in range(4):
        ids.append(await logger.log_start())
        if index == 2:
            await logger.log_completion(0, f"run {index} failed")
        else:
            await logger.log_completion(index)

    rows = fetch_runs(database_url)
    assert len(rows) == 4, f"expected 4 rows, got {len(rows)}"
    assert [row.id for row in rows] == ids, "rows do not match the returned ids"
    assert ids == sorted(set(ids)), f"ids are not distinct and increasing: {ids}"
    assert [row.status for row in rows] == ["completed", "completed", "failed", "completed"]
    assert [row.items_processed for row in rows] == [0, 1, 0, 3]
    assert len({row.run_key for row in rows}) == 4, "runs share a run key"
    for earlier, later in itertools.pairwise(rows):
        assert earlier.finished_at <= later.execution_time, "runs overlap"


async def test_logger_completion_without_start(database_url: str) -> None:
    logger = CronExecutionLogger("flow-sync", database_url)

    with pytest.raises(RuntimeError) as info:
        await logger.log_completion(1)

    assert "log_start()" in str(info.value), f"message {info.value} does not give the fix"
    assert "flow-sync" in str(info.value), f"message {info.value} does not name the service"


async def test_logger_rejects_invalid_items(database_url: str) -> None:
    # An invalid count raises, and the run ends as failed with that error
    # rather than staying open until the monitor times it out.
    logger = CronExecutionLogger("flow-sync", database_url)

    for value in [-1, True, 2.5, "5", None, 2**31]:
        execution_id = await logger.log_start()
        with pytest.raises(InvalidValueError) as info:
            await logger.log_completion(value)  # type: ignore[arg-type]

        message = str(info.value)
        assert repr(value) in message, f"message {message!r} does not show {value!r}"
        assert "items_processed" in message, f"message {message!r} does not name the field"
        row = fetch_run(database_url, execution_id)
        assert row.status == "failed", f"{value!r} left status {row.status!r}"
        assert row.error_message == message, f"stored error {row.error_message!r}"
        assert row.items_processed == 0, f"{value!r} stored items {row.items_processed}"

    execution_id = await logger.log_start()
    await logger.log_completion(1)
    row = fetch_run(database_url, execution_id)
    assert row.status == "completed", "the logger cannot record a run after an invalid count"
    assert row.items_processed == 1, f"items_processed {row.items_processed}"


def test_logger_rejects_invalid_service_names(database_url: str) -> None:
    for name in ["", "   ", "x" * 101, "flow\tsync"]:
        with pytest.raises(InvalidValueError) as info:
            CronExecutionLogger(name, database_url)

        assert repr(name[:40]).rstrip("'") in str(info.value), str(info.value)

    assert not inspect_database(get_engine(database_url)).has_table("cron_executions"), (
        "the database was touched for an invalid service name"
    )


async def test_origin_dashboard_query_counts(database_url: str) -> None:
    outcomes = {
        "flow-sync": ["completed", "completed", "failed", "completed"],
        "payment-checker": ["failed", "failed"],
        "invoice-export": ["started"],
    }
    for service, statuses in outcomes.items():
        logger = CronExecutionLogger(service, database_url)
        for status in statuses:
            await logger.log_start()
            if status == "completed":
                await logger.log_completion(1)
            elif status == "failed":
                await logger.log_completion(0, "boom")

    with get_engine(database_url).connect() as connection:
        rows = connection.execute(text(ORIGIN_DASHBOARD_QUERY)).all()

    counts = {row.service_name: tuple(row[1:]) for row in rows}
    assert counts == {
        "flow-sync": (4, 3, 1),
        "payment-checker": (2, 0, 2),
        "invoice-export": (1, 0, 0),
    }, f"dashboard counts {counts}"


async def test_logger_fifty_runs_release_connections(database_url: str) -> None:
    logger = CronExecutionLogger("flow-sync", database_url)
    for index in range(50):
        await logger.log_start()
        await logger.log_completion(index, "boom" if index % 10 == 0 else None)

    pool = get_engine(database_url).pool
    assert pool.checkedout() == 0, f"{pool.checkedout()} connections still checked out"
    rows = fetch_runs(database_url)
    assert len(rows) == 50, f"expected 50 rows, got {len(rows)}"
    assert sum(row.status == "failed" for row in rows) == 5


async def test_logger_reuses_postgres_connections(postgres_url: str) -> None:
    logger = CronExecutionLogger("flow-sync", postgres_url)
    for index in range(50):
        await logger.log_start()
        await logger.log_completion(index)

    database = make_url(postgres_url).database
    with psycopg.connect(postgres_url) as connection:
        connections = connection.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = 'cronledger'",
            (database,),
        ).fetchone()[0]
    assert 1 <= connections <= 2, f"{connections} cronledger connections after 50 runs"
    pool = get_engine(postgres_url).pool
    assert pool.checkedout() == 0, f"{pool.checkedout()} connections still checked out"
