"""Follow docs/migrating.md on a database that the pre-cronledger logger filled.

tests/test_migrations.py checks the upgrade itself (rows, time zones, SQL
script). This file checks the guide: it runs the guide's own shell commands,
SQL and config file, in the guide's order, against an origin table filled
by that logger's two statements, and checks the admin page's query before
and after. A command that the guide no longer contains fails the test, so
guide and test cannot drift apart.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cronledger import CronExecutionLogger
from tests.test_migrations import DASHBOARD_QUERY, ORIGIN_DDL, SQLITE_ORIGIN_DDL

pytestmark = pytest.mark.timeout(180)

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "migrating.md"

# The services' runs, as (service, items processed, error); None for the
# items leaves the run started, as a service that crashed would.
ORIGIN_RUNS = (
    ("authenticator", 2, None),
    ("authenticator", 0, None),
    ("flow-sync", 3, None),
    ("flow-sync", 0, None),
    ("flow-sync", 0, "FileNotFoundError: flows.json"),
    ("payment-checker", 0, None),
    ("payment-checker", 0, None),
    ("payment-checker", 1, None),
    ("kodosumi-starter", 0, "connection refused by kodosumi at 127.0.0.1:3370"),
    ("kodosumi-starter", 2, None),
    ("kodosumi-status", None, None),
    ("kodosumi-status", 1, None),
)

# The logger's statements: insert the start with every default, then
# update the row when the run ends.
LOG_START = (
    "INSERT INTO cron_executions (service_name, status) VALUES ({p}, 'started') RETURNING id"
)
LOG_COMPLETION = (
    "UPDATE cron_executions SET status = {p}, items_processed = {p}, error_message = {p},"
    " duration_ms = {p} WHERE id = {p}"
)

# Two rows, one in summer and one in winter time, written as Berlin wall-clock times.
HISTORIC_BERLIN = {
    "2024-06-01 12:00:00": datetime(2024, 6, 1, 10, 0, tzinfo=UTC),
    "2024-12-01 12:00:00": datetime(2024, 12, 1, 11, 0, tzinfo=UTC),
}

# The guide's command that saves the admin page's numbers to a file.
SAVE_DASHBOARD = (
    'psql "$DATABASE_URL" --no-align --tuples-only --file=dashboard.sql | sort > {file}'
)

SERVICES = {
    "authenticator": "API Key Sync",
    "flow-sync": "Flow Sync",
    "payment-checker": "Payment Checker",
    "kodosumi-starter": "Kodosumi Starter",
    "kodosumi-status": "Kodosumi Status",
}


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def guide_commands(*commands: str) -> str:
    """Return ``commands`` as one shell script, after checking that the guide shows each."""
    text = guide()
    for command in commands:
        assert f"\n{command}\n" in text, f"docs/migrating.md no longer shows: {command}"
    return "set -e\n" + "\n".join(commands) + "\n"


def guide_block(language: str, after: str) -> str:
    """Return the first fenced ``language`` block of the guide after the text ``after``."""
    text = guide()
    start = text.find(after)
    assert start >= 0, f"docs/migrating.md no longer contains {after!r}"
    block = re.search(rf"```{language}\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, f"no {language} block after {after!r} in docs/migrating.md"
    return block.group(1)


def run_shell(script: str, cwd: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as a user of the guide would: cronledger on PATH, $DATABASE_URL set."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(cwd),
        "DATABASE_URL": database_url,
        "CRONLEDGER_SPOOL_DIR": os.environ["CRONLEDGER_SPOOL_DIR"],
    }
    result = subprocess.run(
        ["/bin/sh", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (
        f"guide step exited {result.returncode}:\n{script}\nstdout: {result.stdout}\n"
        f"stderr: {result.stderr}"
    )
    return result


def log_origin_runs(connection: Any, placeholder: str) -> None:
    """Write ORIGIN_RUNS with the old logger's statements."""
    for service, items, error in ORIGIN_RUNS:
        row_id = connection.execute(LOG_START.format(p=placeholder), (service,)).fetchone()[0]
        if items is None:
            continue
        status = "failed" if error else "completed"
        connection.execute(
            LOG_COMPLETION.format(p=placeholder), (status, items, error, 40 + items, row_id)
        )


def expected_after_new_runs(before: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Return the dashboard rows after one more completed run of every service."""
    return sorted(
        (name, total + 1, completed + 1, failed) for name, total, completed, failed in before
    )


async def log_new_runs(database_url: str) -> None:
    """Log one run of each service with cronledger's logger, as step 6 of the guide does."""
    for service in SERVICES:
        cron_logger = CronExecutionLogger(service, database_url)
        execution_id = await cron_logger.log_start()
        assert execution_id is not None, f"{service}: the start went to the spool"
        await cron_logger.log_completion(1, None)


def declare_and_check_status(cwd: Path, database_url: str, dashboard: list[Any]) -> None:
    """Follow step 7: write the guide's cronledger.toml, sync it and read the status."""
    (cwd / "cronledger.toml").write_text(guide_block("toml", "## 7. Declare the schedules"))
    script = guide_commands(
        'export CRONLEDGER_DATABASE_URL="$DATABASE_URL"',
        "cronledger services sync",
        "cronledger status",
    )
    shown = run_shell(script, cwd, database_url)
    status = run_shell(
        script.replace("cronledger status", "cronledger status --json"), cwd, database_url
    )

    for service in SERVICES:
        assert service in shown.stdout, f"status does not show {service}:\n{shown.stdout}"
    rows = json.loads(status.stdout[status.stdout.index("[") :])
    counts = sorted(
        (row["service_name"], row["total"], row["completed"], row["failed"]) for row in rows
    )
    names = {row["service_name"]: row["display_name"] for row in rows}
    assert counts == dashboard, f"status counts {counts} differ from the dashboard {dashboard}"
    assert names == SERVICES, f"display names after the sync: {names}"


def test_guide_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    # The services connected with their own zone while the database default
    # is UTC, the case that needs --origin-timezone.
    before_runs = datetime.now(UTC).replace(microsecond=0)
    berlin = {"options": "-c TimeZone=Europe/Berlin"}
    with psycopg.connect(postgres_url, autocommit=True, **berlin) as connection:
        connection.execute(ORIGIN_DDL)
        log_origin_runs(connection, "%s")
        historic_ids = {
            stamp: connection.execute(
                "INSERT INTO cron_executions (service_name, execution_time, status,"
                " items_processed, duration_ms) VALUES ('authenticator', %s, 'completed', 0, 35)"
                " RETURNING id",
                (stamp,),
            ).fetchone()[0]
            for stamp in HISTORIC_BERLIN
        }
    after_runs = datetime.now(UTC)
    with psycopg.connect(postgres_url) as connection:
        dashboard_before = sorted(connection.execute(DASHBOARD_QUERY).fetchall())
    (tmp_path / "dashboard.sql").write_text(
        guide_block("sql", "Save the admin page's query as `dashboard.sql`")
    )

    script = guide_commands(
        'export CRONLEDGER_DATABASE_URL="$DATABASE_URL"',
        'pg_dump --table=cron_executions --file=cron_executions-backup.sql "$DATABASE_URL"',
        SAVE_DASHBOARD.format(file="dashboard-before.txt"),
        "psql \"$DATABASE_URL\" --command='SHOW TimeZone'",
        "cronledger db upgrade --origin-timezone Europe/Berlin",
        SAVE_DASHBOARD.format(file="dashboard-after.txt"),
        'diff dashboard-before.txt dashboard-after.txt && echo "dashboard unchanged"',
    )
    upgraded = run_shell(script, tmp_path, postgres_url)

    assert "upgraded postgresql://" in upgraded.stdout, f"stdout: {upgraded.stdout}"
    assert "dashboard unchanged" in upgraded.stdout, f"stdout: {upgraded.stdout}"
    assert (
        "CREATE TABLE public.cron_executions"
        in (tmp_path / "cron_executions-backup.sql").read_text()
    ), "the backup does not contain the table"
    saved = (tmp_path / "dashboard-before.txt").read_text().splitlines()
    assert len(saved) == len(SERVICES), f"the saved dashboard has {len(saved)} lines: {saved}"
    with psycopg.connect(postgres_url) as connection:
        times = dict(
            connection.execute("SELECT id, execution_time FROM cron_executions").fetchall()
        )
        assert sorted(connection.execute(DASHBOARD_QUERY).fetchall()) == dashboard_before
    for stamp, instant in HISTORIC_BERLIN.items():
        converted = times[historic_ids[stamp]].astimezone(UTC)
        assert converted == instant, f"Berlin {stamp} became {converted.isoformat()}"
    recent = [
        value.astimezone(UTC)
        for row_id, value in times.items()
        if row_id not in historic_ids.values()
    ]
    for value in recent:
        assert before_runs <= value <= after_runs, (
            f"a default execution_time became {value.isoformat()}, outside the time it was "
            f"written ({before_runs.isoformat()} to {after_runs.isoformat()})"
        )

    asyncio.run(log_new_runs(postgres_url))
    with psycopg.connect(postgres_url) as connection:
        dashboard_after = sorted(connection.execute(DASHBOARD_QUERY).fetchall())
    assert dashboard_after == expected_after_new_runs(dashboard_before), (
        f"new runs counted wrong: {dashboard_after}"
    )
    declare_and_check_status(tmp_path, postgres_url, dashboard_after)


def test_guide_on_sqlite(tmp_path: Path) -> None:
    database = tmp_path / "app.db"
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.executescript(SQLITE_ORIGIN_DDL)
        log_origin_runs(connection, "?")
        dashboard_before = sorted(connection.execute(DASHBOARD_QUERY).fetchall())
        rows_before = connection.execute(
            "SELECT id, service_name, execution_time, status, items_processed, error_message,"
            " duration_ms FROM cron_executions ORDER BY id"
        ).fetchall()
    finally:
        connection.close()

    script = guide_commands(
        "cp app.db app.db.backup",
        "export CRONLEDGER_DATABASE_URL=sqlite:///app.db",
        "cronledger db upgrade",
    )
    upgraded = run_shell(script, tmp_path, f"sqlite:///{database}")

    assert "upgraded sqlite:///" in upgraded.stdout, f"stdout: {upgraded.stdout}"
    assert (tmp_path / "app.db.backup").exists(), "the backup was not made"
    connection = sqlite3.connect(database)
    try:
        assert sorted(connection.execute(DASHBOARD_QUERY).fetchall()) == dashboard_before
        rows_after = connection.execute(
            "SELECT id, service_name, execution_time, status, items_processed, error_message,"
            " duration_ms FROM cron_executions ORDER BY id"
        ).fetchall()
    finally:
        connection.close()
    assert rows_after == rows_before, "the upgrade changed origin rows on SQLite"

    url = f"sqlite:///{database}"
    asyncio.run(log_new_runs(url))
    connection = sqlite3.connect(database)
    try:
        dashboard_after = sorted(connection.execute(DASHBOARD_QUERY).fetchall())
    finally:
        connection.close()
    assert dashboard_after == expected_after_new_runs(dashboard_before), (
        f"new runs counted wrong: {dashboard_after}"
    )
    declare_and_check_status(tmp_path, url, dashboard_after)
