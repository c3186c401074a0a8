"""Tests of runs recorded while the database is unreachable, and of their replay.

The PostgreSQL outages use ``private_postgres``, a server of the test's own
that the test stops and starts, so the shared server is never disturbed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row, select

from cronledger.recorder import get_recorder
from cronledger.store.engine import get_engine
from cronledger.store.tables import cron_executions
from cronledger.tracking import track, tracked
from tests.pgserver import PostgresServer

CLI = [sys.executable, "-c", "from cronledger.cli import main; main()"]


def fetch_runs(database_url: str) -> list[Row[Any]]:
    with get_engine(database_url).connect() as connection:
        return list(
            connection.execute(select(cron_executions).order_by(cron_executions.c.id)).all()
        )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def pending_events(database_url: str) -> list[Path]:
    return get_recorder(database_url).spool.pending()


def file_permissions_command() -> list[str]:
    """Return a command prefix under which a read-only directory stops writes, or skip.

    root bypasses file permissions with CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, so as root the job runs without those capabilities.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv, so a read-only directory stops nothing")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


# The job reports each run as one JSON line: its own clock readings around
# the run and the value the job returned.
JOB_SCRIPT = """
import json
import sys
import time
from datetime import UTC, datetime

from cronledger.tracking import track, tracked

database_url = sys.argv[1]


def report(service, run_key, wall_before, block_start, slept_ms, result):
    block_ms = (time.monotonic() - block_start) * 1000
    print(json.dumps({
        "service": service,
        "run_key": run_key,
        "wall_before": wall_before.isoformat(),
        "wall_after": datetime.now(UTC).isoformat(),
        "block_ms": block_ms,
        "slept_ms": slept_ms,
        "result": result,
    }), flush=True)


wall_before = datetime.now(UTC)
block_start = time.monotonic()
with track("nightly-export", database_url=database_url) as run:
    run.items_processed = 3
    sleep_start = time.monotonic()
    time.sleep(0.05)
    slept_ms = (time.monotonic() - sleep_start) * 1000
report("nightly-export", run.run_key, wall_before, block_start, slept_ms, None)


@tracked("nightly-report", database_url=database_url)
def build_report():
    time.sleep(0.03)
    return 7


wall_before = datetime.now(UTC)
block_start = time.monotonic()
result = build_report()
report("nightly-report", None, wall_before, block_start, 30.0, result)
"""


def check_replayed_runs(database_url: str, reports: list[dict[str, Any]], flushed_at: datetime):
    rows = {row.service_name: row for row in fetch_runs(database_url)}
    assert set(rows) == {"nightly-export", "nightly-report"}, f"rows {list(rows)}"
    for report in reports:
        row = rows[report["service"]]
        wall_before = datetime.fromisoformat(report["wall_before"])
        wall_after = datetime.fromisoformat(report["wall_after"])
        name = report["service"]
        assert row.status == "completed", f"{name}: status {row.status!r}"
        assert wall_before <= row.execution_time <= wall_after, f"{name}: start not original"
        assert row.finished_at <= wall_after < flushed_at, f"{name}: finish is the flush time"
        assert row.duration_ms >= math.floor(report["slept_ms"]), f"{name}: {row.duration_ms}"
        assert row.duration_ms <= math.ceil(report["block_ms"]), f"{name}: {row.duration_ms}"
    assert rows["nightly-export"].run_key == reports[0]["run_key"]
    assert rows["nightly-export"].items_processed == 3
    assert rows["nightly-report"].items_processed == 7


@pytest.mark.timeout(120)
def test_readonly_sqlite_directory_spools(tmp_path: Path) -> None:
    prefix = file_permissions_command()
    directory = tmp_path / "readonly"
    directory.mkdir()
    database_url = f"sqlite:///{directory / 'cronledger.db'}"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB_SCRIPT))

    directory.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        job = subprocess.run(
            [*prefix, sys.executable, str(script), database_url],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        directory.chmod(stat.S_IRWXU)

    assert job.returncode == 0, f"the job failed: {job.stderr}"
    assert "Traceback" not in job.stderr, job.stderr
    assert "unavailable" in job.stderr, f"the outage was not logged: {job.stderr!r}"
    reports = [json.loads(line) for line in job.stdout.splitlines()]
    assert [report["service"] for report in reports] == ["nightly-export", "nightly-report"]
    assert reports[1]["result"] == 7, "the tracked function's result was not returned"
    assert not (directory / "cronledger.db").exists(), "the database was written after all"
    assert len(pending_events(database_url)) == 4, "expected 2 starts and 2 finishes spooled"

    flush = run_cli("--database-url", database_url, "spool", "flush")
    flushed_at = datetime.now(UTC)
    again = run_cli("--database-url", database_url, "spool", "flush")

    assert flush.returncode == 0, f"flush failed: {flush.stderr}"
    assert "replayed 4 of 4 spooled events" in flush.stdout, flush.stdout
    assert again.returncode == 0, f"second flush failed: {again.stderr}"
    assert "no spooled events" in again.stdout, again.stdout
    assert len(fetch_runs(database_url)) == 2, "the second flush added rows"
    check_replayed_runs(database_url, reports, flushed_at)


@pytest.mark.timeout(120)
def test_closed_postgres_port_spools(private_postgres: PostgresServer, tmp_path: Path) -> None:
    database_url = private_postgres.url
    private_postgres.stop()
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB_SCRIPT))

    job = subprocess.run(
        [sys.executable, str(script), database_url], capture_output=True, text=True, timeout=60
    )
    refused_flush = run_cli("--database-url", database_url, "spool", "flush")

    assert job.returncode == 0, f"the job failed: {job.stderr}"
    assert "Traceback" not in job.stderr, job.stderr
    reports = [json.loads(line) for line in job.stdout.splitlines()]
    assert reports[1]["result"] == 7, "the tracked function's result was not returned"
    assert len(pending_events(database_url)) == 4, "expected 2 starts and 2 finishes spooled"
    assert refused_flush.returncode == 1, f"flush to a closed port: {refused_flush.returncode}"
    assert "cannot use the database" in refused_flush.stderr, refused_flush.stderr
    assert len(pending_events(database_url)) == 4, "a failed flush lost events"

    private_postgres.start()
    flush = run_cli("--database-url", database_url, "spool", "flush")
    flushed_at = datetime.now(UTC)
    again = run_cli("--database-url", database_url, "spool", "flush")

    assert flush.returncode == 0, f"flush failed: {flush.stderr}"
    assert "replayed 4 of 4 spooled events" in flush.stdout, flush.stdout
    assert again.returncode == 0, f"second flush failed: {again.stderr}"
    assert "no spooled events" in again.stdout, again.stdout
    assert len(fetch_runs(database_url)) == 2, "the second flush added rows"
    check_replayed_runs(database_url, reports, flushed_at)


def test_tracked_job_survives_closed_port(private_postgres: PostgresServer) -> None:
    database_url = private_postgres.url
    private_postgres.stop()

    @tracked("nightly-report", database_url=database_url)
    def build_report() -> dict[str, int]:
        return {"pages": 4}

    with track("nightly-export", database_url=database_url) as run:
        run.add_items(2)
        result = build_report()

    assert result == {"pages": 4}, "the tracked function's result was not returned"
    assert run.execution_id is None, "a spooled start has a row id"
    assert len(pending_events(database_url)) == 4, "expected 2 starts and 2 finishes spooled"


@pytest.mark.timeout(180)
def test_outage_series_thirty_runs(private_postgres: PostgresServer) -> None:
    database_url = private_postgres.url
    measured: dict[str, dict[str, Any]] = {}
    spooled_during_outage = 0

    # The server stops inside run 10 (its start is written, its finish
    # spooled) and starts inside run 20 (the reverse).
    for index in range(30):
        wall_before = datetime.now(UTC)
        block_start = time.monotonic()
        with track("flow-sync", database_url=database_url) as run:
            wall_entered = datetime.now(UTC)
            if index == 10:
                private_postgres.stop()
            if index == 20:
                spooled_during_outage = len(pending_events(database_url))
                private_postgres.start()
            run.items_processed = 100 + index
            sleep_start = time.monotonic()
            time.sleep(0.01)
            slept_ms = math.floor((time.monotonic() - sleep_start) * 1000)
        measured[run.run_key] = {
            "index": index,
            "started_at": run.started_at,
            "wall_before": wall_before,
            "wall_entered": wall_entered,
            "slept_ms": slept_ms,
            "block_ms": math.ceil((time.monotonic() - block_start) * 1000),
        }

    # The finish of run 10, both events of runs 11 to 19 and the start of run 20.
    assert spooled_during_outage == 20, f"{spooled_during_outage} events spooled while down"
    rows = fetch_runs(database_url)
    keys = [row.run_key for row in rows]
    assert len(rows) == 30, f"expected 30 rows, got {len(rows)}"
    assert len(set(keys)) == 30, "a run has more than one row"
    assert set(keys) == set(measured), "stored run keys differ from the runs"
    items = sorted(row.items_processed for row in rows)
    assert items == list(range(100, 130)), f"items {items}"
    for row in rows:
        run_info = measured[row.run_key]
        label = f"run {run_info['index']}"
        assert row.status == "completed", f"{label}: status {row.status!r}"
        assert row.execution_time == run_info["started_at"], f"{label}: start time changed"
        assert run_info["wall_before"] <= row.execution_time <= run_info["wall_entered"], label
        assert row.duration_ms >= run_info["slept_ms"], f"{label}: {row.duration_ms} ms"
        assert row.duration_ms <= run_info["block_ms"], f"{label}: {row.duration_ms} ms"
    assert pending_events(database_url) == [], "events remain in the spool"
    rejected = get_recorder(database_url).spool.directory / "rejected"
    assert not rejected.exists(), "events were rejected"


@pytest.mark.timeout(120)
def test_run_spanning_restart_recorded_once(private_postgres: PostgresServer) -> None:
    database_url = private_postgres.url
    private_postgres.stop()

    wall_before = datetime.now(UTC)
    with track("flow-sync", database_url=database_url) as run:
        wall_entered = datetime.now(UTC)
        spooled_start = pending_events(database_url)
        run.items_processed = 11
        private_postgres.start()
        time.sleep(0.02)
    wall_after = datetime.now(UTC)

    assert run.execution_id is None, "the start reached a stopped server"
    assert len(spooled_start) == 1, f"spool during the run: {spooled_start}"
    rows = fetch_runs(database_url)
    assert len(rows) == 1, f"expected one row, got {len(rows)}"
    row = rows[0]
    assert row.run_key == run.run_key
    assert row.status == "completed", f"status {row.status!r}"
    assert row.items_processed == 11, f"items_processed {row.items_processed}"
    assert row.execution_time == run.started_at, "start time is not the original"
    assert wall_before <= row.execution_time <= wall_entered, "start time out of bounds"
    assert row.finished_at <= wall_after, "finished_at after the run ended"
    assert row.duration_ms >= 20, f"duration_ms {row.duration_ms}"
    assert pending_events(database_url) == [], "events remain in the spool"
