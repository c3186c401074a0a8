"""Tests of ``track()`` and ``@tracked`` against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import signal
import socket
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row, func, select, text
from sqlalchemy import inspect as inspect_database

from cronledger.errors import InvalidDatabaseURLError, InvalidValueError
from cronledger.recorder import get_recorder
from cronledger.store.engine import get_engine
from cronledger.store.migrate import VERSION_TABLE
from cronledger.store.tables import cron_executions
from cronledger.tracking import track, tracked
from tests.commands import run_together


def fetch_runs(database_url: str) -> list[Row[Any]]:
    """Return every row of cron_executions, oldest first, with decoded types."""
    with get_engine(database_url).connect() as connection:
        return list(
            connection.execute(select(cron_executions).order_by(cron_executions.c.id)).all()
        )


def count_runs(database_url: str) -> int:
    """Return the number of rows in cron_executions, 0 if the table does not exist yet."""
    engine = get_engine(database_url)
    if not inspect_database(engine).has_table("cron_executions"):
        return 0
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(cron_executions)).scalar())


def assert_utc(value: datetime | None, column: str) -> None:
    assert value is not None, f"{column} is NULL"
    assert value.tzinfo is not None, f"{column} {value!r} is naive"
    assert value.utcoffset() == timedelta(0), f"{column} {value!r} is not UTC"


# Runs that complete


def test_track_sync_completed_run(database_url: str) -> None:
    wall_before = datetime.now(UTC)
    block_start = time.monotonic()
    with track("flow-sync", database_url=database_url) as run:
        run.items_processed = 5
        run.add_items(2)
        sleep_start = time.monotonic()
        time.sleep(0.05)
        slept_ms = math.floor((time.monotonic() - sleep_start) * 1000)
    block_ms = math.ceil((time.monotonic() - block_start) * 1000)
    wall_after = datetime.now(UTC)

    rows = fetch_runs(database_url)
    assert len(rows) == 1, f"expected one row, got {rows}"
    row = rows[0]
    assert row.service_name == "flow-sync"
    assert row.status == "completed", f"status {row.status!r}"
    assert row.items_processed == 7, f"items_processed {row.items_processed}"
    assert row.error_message is None, f"error_message {row.error_message!r}"
    assert row.duration_ms >= slept_ms, f"duration_ms {row.duration_ms} < slept {slept_ms} ms"
    assert row.duration_ms <= block_ms, f"duration_ms {row.duration_ms} > block {block_ms} ms"
    assert_utc(row.execution_time, "execution_time")
    assert_utc(row.finished_at, "finished_at")
    assert wall_before <= row.execution_time, f"{row.execution_time} before {wall_before}"
    assert row.execution_time <= row.finished_at, "execution_time after finished_at"
    assert row.finished_at <= wall_after, f"finished_at {row.finished_at} after {wall_after}"
    assert row.execution_time == run.started_at, "execution_time differs from run.started_at"
    assert row.host == socket.gethostname(), f"host {row.host!r}"
    assert row.pid == os.getpid(), f"pid {row.pid}"
    assert row.run_key == run.run_key, f"run_key {row.run_key!r} != {run.run_key!r}"
    assert row.id == run.execution_id, f"row id {row.id} != execution_id {run.execution_id}"


async def test_track_async_completed_run(database_url: str) -> None:
    wall_before = datetime.now(UTC)
    block_start = time.monotonic()
    async with track("payment-checker", database_url=database_url) as run:
        run.add_items(3)
        sleep_start = time.monotonic()
        await asyncio.sleep(0.05)
        slept_ms = math.floor((time.monotonic() - sleep_start) * 1000)
        run.items_processed += 1
    block_ms = math.ceil((time.monotonic() - block_start) * 1000)
    wall_after = datetime.now(UTC)

    rows = fetch_runs(database_url)
    assert len(rows) == 1, f"expected one row, got {rows}"
    row = rows[0]
    assert row.service_name == "payment-checker"
    assert row.status == "completed", f"status {row.status!r}"
    assert row.items_processed == 4, f"items_processed {row.items_processed}"
    assert row.error_message is None, f"error_message {row.error_message!r}"
    assert row.duration_ms >= slept_ms, f"duration_ms {row.duration_ms} < slept {slept_ms} ms"
    assert row.duration_ms <= block_ms, f"duration_ms {row.duration_ms} > block {block_ms} ms"
    assert_utc(row.execution_time, "execution_time")
    assert_utc(row.finished_at, "finished_at")
    assert wall_before <= row.execution_time <= row.finished_at <= wall_after
    assert row.host == socket.gethostname(), f"host {row.host!r}"
    assert row.pid == os.getpid(), f"pid {row.pid}"
    assert row.run_key == run.run_key


def test_track_run_keys_unique(database_url: str) -> None:
    keys = []
    for _ in range(5):
        with track("flow-sync", database_url=database_url) as run:
            keys.append(run.run_key)

    rows = fetch_runs(database_url)
    stored = [row.run_key for row in rows]
    assert len(rows) == 5, f"expected 5 rows, got {len(rows)}"
    assert len(set(stored)) == 5, f"duplicate run keys: {stored}"
    assert sorted(stored) == sorted(keys), "stored run keys differ from the runs' keys"


def test_track_restores_default_sigterm(database_url: str) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with track("flow-sync", database_url=database_url):
        inside = signal.getsignal(signal.SIGTERM)

    assert before is signal.SIG_DFL, f"test precondition: SIGTERM handler is {before!r}"
    assert inside is not signal.SIG_DFL, "SIGTERM is not handled during the run"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "SIGTERM handler not restored"


# Runs that fail


def test_track_exception_marks_failed(database_url: str) -> None:
    with (
        pytest.raises(ValueError, match="bad record 42"),
        track("flow-sync", database_url=database_url) as run,
    ):
        run.items_processed = 3
        raise ValueError("bad record 42")

    row = fetch_runs(database_url)[0]
    assert row.status == "failed", f"status {row.status!r}"
    first_line = row.error_message.splitlines()[0]
    assert first_line == "ValueError: bad record 42", f"first line {first_line!r}"
    assert "Traceback (most recent call last)" in row.error_message, "no traceback stored"
    assert row.items_processed == 3, f"items_processed {row.items_processed}"
    assert row.duration_ms is not None, "duration_ms is NULL"
    assert_utc(row.finished_at, "finished_at")


async def test_track_async_exception_marks_failed(database_url: str) -> None:
    with pytest.raises(KeyError):
        async with track("payment-checker", database_url=database_url):
            await asyncio.sleep(0)
            raise KeyError("invoice-17")

    row = fetch_runs(database_url)[0]
    assert row.status == "failed", f"status {row.status!r}"
    first_line = row.error_message.splitlines()[0]
    assert first_line == "KeyError: 'invoice-17'", f"first line {first_line!r}"
    assert_utc(row.finished_at, "finished_at")


def test_run_fail_marks_failed(database_url: str) -> None:
    with track("flow-sync", database_url=database_url) as run:
        run.items_processed = 7
        run.fail("3 of 10 flows rejected by upstream")

    row = fetch_runs(database_url)[0]
    assert row.status == "failed", f"status {row.status!r}"
    assert row.error_message == "3 of 10 flows rejected by upstream"
    assert row.items_processed == 7, f"items_processed {row.items_processed}"


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [(0, "completed", None), (None, "completed", None), (3, "failed", "SystemExit: 3")],
)
def test_track_system_exit_status(
    database_url: str, code: int | None, status: str, message: str | None
) -> None:
    with pytest.raises(SystemExit), track("flow-sync", database_url=database_url):
        sys.exit(code)

    row = fetch_runs(database_url)[0]
    assert row.status == status, f"SystemExit({code}) gave status {row.status!r}"
    first_line = row.error_message.splitlines()[0] if row.error_message else None
    assert first_line == message, f"SystemExit({code}) gave error {row.error_message!r}"


# Several runs at once


def test_track_nested_runs_own_rows(database_url: str) -> None:
    with track("nightly-batch", database_url=database_url) as outer:
        outer.add_items(2)
        with track("nightly-batch-step", database_url=database_url) as inner:
            inner.add_items(1)
        with (
            pytest.raises(RuntimeError),
            track("nightly-batch-step", database_url=database_url),
        ):
            raise RuntimeError("step 2 failed")

    rows = {row.run_key: row for row in fetch_runs(database_url)}
    assert len(rows) == 3, f"expected 3 rows, got {len(rows)}"
    outer_row = rows[outer.run_key]
    inner_row = rows[inner.run_key]
    assert outer_row.status == "completed", f"outer status {outer_row.status!r}"
    assert outer_row.items_processed == 2, f"outer items {outer_row.items_processed}"
    assert inner_row.status == "completed", f"inner status {inner_row.status!r}"
    assert inner_row.items_processed == 1, f"inner items {inner_row.items_processed}"
    assert outer_row.execution_time <= inner_row.execution_time, "inner started before outer"
    assert inner_row.finished_at <= outer_row.finished_at, "inner finished after outer"
    failed = [row for row in rows.values() if row.status == "failed"]
    assert len(failed) == 1, f"expected one failed step, got {failed}"
    assert failed[0].error_message.startswith("RuntimeError: step 2 failed")


async def test_track_twenty_concurrent_tasks(database_url: str) -> None:
    async def job(index: int) -> str:
        async with track(f"worker-{index % 4}", database_url=database_url) as run:
            await asyncio.sleep(0.01 * (index % 5))
            run.items_processed = index
            return run.run_key

    keys = await asyncio.gather(*(job(index) for index in range(20)))

    rows = fetch_runs(database_url)
    assert len(rows) == 20, f"expected 20 rows, got {len(rows)}"
    assert len({row.run_key for row in rows}) == 20, "run keys are not unique"
    assert {row.run_key for row in rows} == set(keys), "stored keys differ from the runs"
    assert sorted(row.items_processed for row in rows) == list(range(20))
    statuses = {row.status for row in rows}
    assert statuses == {"completed"}, f"statuses {statuses}"
    for row in rows:
        expected_service = f"worker-{row.items_processed % 4}"
        assert row.service_name == expected_service, f"row {row.id}: {row.service_name!r}"


def test_run_heartbeat_updates_heartbeat_at(database_url: str) -> None:
    with track("long-export", database_url=database_url) as run:
        time.sleep(0.02)
        run.heartbeat()
        # A background thread writes the heartbeat, so poll until it lands.
        deadline = time.monotonic() + 10
        row = fetch_runs(database_url)[0]
        while row.heartbeat_at <= row.execution_time and time.monotonic() < deadline:
            time.sleep(0.02)
            row = fetch_runs(database_url)[0]

        assert row.status == "started", f"status during the run {row.status!r}"
        assert_utc(row.heartbeat_at, "heartbeat_at")
        assert row.heartbeat_at > row.execution_time, "heartbeat_at did not move forward"
        assert row.heartbeat_at <= datetime.now(UTC), "heartbeat_at lies in the future"


# @tracked


def test_tracked_keeps_function_metadata() -> None:
    @tracked("flow-sync")
    def sync_flows(source: str, *, limit: int = 10) -> int:
        """Copy flows from ``source``."""
        return limit

    @tracked
    async def check_payments(day: str, retries: int = 3) -> list[str]:
        """Check the payments of ``day``."""
        return []

    assert sync_flows.__name__ == "sync_flows"
    assert sync_flows.__doc__ == "Copy flows from ``source``."
    assert str(inspect.signature(sync_flows)) == "(source: 'str', *, limit: 'int' = 10) -> 'int'"
    assert check_payments.__name__ == "check_payments"
    assert check_payments.__doc__ == "Check the payments of ``day``."
    signature = str(inspect.signature(check_payments))
    assert signature == "(day: 'str', retries: 'int' = 3) -> 'list[str]'", signature
    assert inspect.iscoroutinefunction(check_payments), "async wrapper is not a coroutine function"
    assert not inspect.iscoroutinefunction(sync_flows), "sync wrapper became a coroutine function"


def test_tracked_sync_counts_int_result(database_url: str) -> None:
    @tracked("flow-sync", database_url=database_url)
    def sync_flows(count: int) -> int:
        return count

    assert sync_flows(12) == 12
    assert sync_flows(0) == 0

    rows = fetch_runs(database_url)
    assert [row.items_processed for row in rows] == [12, 0]
    assert [row.status for row in rows] == ["completed", "completed"]
    assert {row.service_name for row in rows} == {"flow-sync"}


async def test_tracked_async_counts_int_result(database_url: str) -> None:
    @tracked(database_url=database_url)
    async def check_payments(count: int) -> int:
        await asyncio.sleep(0)
        return count

    assert await check_payments(9) == 9

    row = fetch_runs(database_url)[0]
    assert row.service_name == "check_payments", "bare @tracked must use the function name"
    assert row.items_processed == 9, f"items_processed {row.items_processed}"
    assert row.status == "completed", f"status {row.status!r}"


def test_tracked_passes_other_results(database_url: str) -> None:
    results: list[object] = [{"flows": 3}, "done", None, True, 2.5, -4]

    @tracked("flow-sync", database_url=database_url)
    def sync_flows(result: object) -> object:
        return result

    for result in results:
        assert sync_flows(result) is result, f"{result!r} was not passed through unchanged"

    rows = fetch_runs(database_url)
    assert len(rows) == len(results), f"expected {len(results)} rows, got {len(rows)}"
    for result, row in zip(results, rows, strict=True):
        assert row.items_processed == 0, f"{result!r} counted as {row.items_processed} items"
        assert row.status == "completed", f"{result!r}: status {row.status!r}"


async def test_tracked_exception_reraised(database_url: str) -> None:
    @tracked("flow-sync", database_url=database_url)
    def sync_flows() -> int:
        raise ConnectionError("upstream refused")

    @tracked("payment-checker", database_url=database_url)
    async def check_payments() -> int:
        raise TimeoutError("bank API timed out")

    with pytest.raises(ConnectionError):
        sync_flows()
    with pytest.raises(TimeoutError):
        await check_payments()

    rows = fetch_runs(database_url)
    assert [row.status for row in rows] == ["failed", "failed"]
    assert rows[0].error_message.startswith("ConnectionError: upstream refused")
    assert rows[1].error_message.startswith("TimeoutError: bank API timed out")


# Invalid input

# Empty, whitespace-only, too long, surrounding whitespace, control characters.
INVALID_SERVICE_NAMES = [
    "",
    "   ",
    "a" * 101,
    " flow-sync",
    "flow-sync\n",
    "flow\x00sync",
    "a\x1bb",
]


def test_track_rejects_invalid_service_names(database_url: str) -> None:
    for name in INVALID_SERVICE_NAMES:
        with pytest.raises(InvalidValueError) as info:
            track(name, database_url=database_url)
        with pytest.raises(InvalidValueError):
            tracked(name, database_url=database_url)

        message = str(info.value)
        name_prefix = repr(name[:40]).rstrip("'")
        assert name_prefix in message, f"message {message!r} does not show the name {name!r}"
        assert "service name" in message, f"message {message!r} does not say what is wrong"

    assert count_runs(database_url) == 0, "a row was written for an invalid name"


def test_track_invalid_name_shows_length() -> None:
    with pytest.raises(InvalidValueError) as info:
        track("a" * 101)

    message = str(info.value)
    assert "101 characters" in message, f"message {message!r} does not give the length"
    assert "100 characters" in message, f"message {message!r} does not give the limit"


# Negative, bool, float, str and over PostgreSQL's INTEGER maximum.
INVALID_ITEMS: list[object] = [-1, True, 1.5, "3", 2**31]


def test_run_items_rejects_invalid_values(database_url: str) -> None:
    with track("flow-sync", database_url=database_url) as run:
        run.items_processed = 4
        for value in INVALID_ITEMS:
            with pytest.raises(InvalidValueError) as setter_error:
                run.items_processed = value  # type: ignore[assignment]
            with pytest.raises(InvalidValueError) as add_error:
                run.add_items(value)  # type: ignore[arg-type]
            assert run.items_processed == 4, f"{value!r} changed items_processed"

            for error in (setter_error.value, add_error.value):
                message = str(error)
                assert repr(value) in message, f"message {message!r} does not show {value!r}"
                assert "items_processed" in message, f"message {message!r} names no field"

    row = fetch_runs(database_url)[0]
    assert row.items_processed == 4, f"stored items_processed {row.items_processed}"
    assert row.status == "completed", "a caught invalid value must not fail the run"


def test_run_add_items_overflow_rejected(database_url: str) -> None:
    with track("flow-sync", database_url=database_url) as run:
        run.items_processed = 2**31 - 1
        with pytest.raises(InvalidValueError, match="maximum"):
            run.add_items(1)

    row = fetch_runs(database_url)[0]
    assert row.items_processed == 2**31 - 1, f"stored items_processed {row.items_processed}"


def bad_urls(tmp_path: Path) -> list[tuple[str, str]]:
    """Return pairs of an unusable URL and a fragment of the fix its error must give."""
    return [
        ("mysql://x", "postgresql://USER:PASSWORD@HOST"),
        ("not a url", "postgresql://USER:PASSWORD@HOST"),
        ("sqlite://", "name a file"),
        ("sqlite:///:memory:", "name a file"),
        (f"sqlite:///{tmp_path}/missing/dir/cronledger.db", "create it"),
        ("mysql://admin:S3cretPw@127.0.0.1/jobs", "postgresql://USER:PASSWORD@HOST"),
        ("admin:S3cretPw@127.0.0.1/jobs", "postgresql://USER:PASSWORD@HOST"),
        ("postgresql://admin:S3cretPw@127.0.0.1:port/jobs", "postgresql://USER:PASSWORD@HOST"),
        ("postgresql://admin:S3cretPw@127.0.0.1:5432", "names no database"),
        ("mysql://admin:S3c@retPw@127.0.0.1/jobs", "postgresql://USER:PASSWORD@HOST"),
    ]


def test_track_rejects_malformed_urls(tmp_path: Path, isolated_state: Path) -> None:
    for url, fix in bad_urls(tmp_path):
        with pytest.raises(InvalidDatabaseURLError) as info:
            track("flow-sync", database_url=url)

        message = str(info.value)
        assert fix in message, f"{url!r}: message {message!r} does not give the fix {fix!r}"
        assert "S3cret" not in message, f"{url!r}: message {message!r} shows the password"
        assert "retPw" not in message, f"{url!r}: message {message!r} shows the password"

    assert not (tmp_path / "missing").exists(), "a missing directory was created"
    assert not isolated_state.exists(), "a spool directory was created for an invalid URL"


# First use of an empty database

FIRST_USE_SCRIPT = """
import sys
import time
from pathlib import Path

from cronledger.tracking import track

database_url, start_file, items = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
while not start_file.exists():
    time.sleep(0.002)
with track("first-use", database_url=database_url) as run:
    run.items_processed = items
print(run.run_key, flush=True)
"""


@pytest.mark.timeout(180)
def test_track_first_use_twenty_processes(
    database_url: str, tmp_path: Path, isolated_state: Path
) -> None:
    script = tmp_path / "first_use.py"
    script.write_text(textwrap.dedent(FIRST_USE_SCRIPT))
    start_file = tmp_path / "start"

    commands = [
        [sys.executable, str(script), database_url, str(start_file), str(index)]
        for index in range(20)
    ]
    outputs = run_together(commands, start_file, timeout=120)

    for index, (_, stderr) in enumerate(outputs):
        assert stderr == "", f"process {index} logged: {stderr}"
    printed_keys = {stdout.strip() for stdout, _ in outputs}
    rows = fetch_runs(database_url)
    assert {row.run_key for row in rows} == printed_keys, "rows differ from the processes' runs"
    assert len(rows) == 20, f"expected 20 rows, got {len(rows)}"
    assert sorted(row.items_processed for row in rows) == list(range(20))
    assert {row.status for row in rows} == {"completed"}
    assert len({row.pid for row in rows}) == 20, "rows do not come from 20 processes"
    with get_engine(database_url).connect() as connection:
        versions = connection.execute(text(f"SELECT COUNT(*) FROM {VERSION_TABLE}")).scalar()
    assert versions == 1, f"{VERSION_TABLE} has {versions} rows"
    spooled = list(isolated_state.rglob("*.json"))
    assert spooled == [], f"events were spooled instead of written: {spooled}"


def test_track_duration_excludes_start_write(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with track("warm-up", database_url=database_url):
        pass
    recorder = get_recorder(database_url)
    real_start = recorder.start

    def slow_start(event: Any) -> Any:
        # As a first connection or a database timeout would delay it.
        time.sleep(0.5)
        return real_start(event)

    monkeypatch.setattr(recorder, "start", slow_start)
    with track("flow-sync", database_url=database_url):
        pass

    (row,) = [row for row in fetch_runs(database_url) if row.service_name == "flow-sync"]
    assert row.duration_ms < 500, f"duration_ms {row.duration_ms} counts the start write"
