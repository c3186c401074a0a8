"""Tests of ``cronledger db upgrade`` and ``cronledger db sql`` on real databases.

The origin tests rebuild the table that teams created before cronledger
existed, fill it the way their jobs did, and upgrade it in place. On
PostgreSQL the origin column is a naive TIMESTAMP that contains the
wall-clock time of whichever session wrote it. Here the database default
zone is America/New_York and a session set to Europe/Berlin writes some
rows, so the conversion rule shows in exact UTC instants.

PostgreSQL reads a wall-clock time that a DST change makes ambiguous, or
skips, as standard time (PostgreSQL 15 docs, appendix B.2). The expected
instants below encode that: Berlin 2024-10-27 02:30 becomes 01:30 UTC and
Berlin 2024-03-31 02:30 (in the spring gap) also becomes 01:30 UTC.
"""

from __future__ import annotations

import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url

from cronledger.store.engine import dispose_engines, get_engine
from cronledger.store.migrate import VERSION_TABLE, head_revision
from cronledger.store.tables import cron_executions, cron_services
from tests.commands import run_cli
from tests.pgserver import free_port

pytestmark = pytest.mark.timeout(120)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")

# The origin table, exactly as teams created it on PostgreSQL.
ORIGIN_DDL = """
CREATE TABLE cron_executions (
    id SERIAL PRIMARY KEY,
    service_name VARCHAR(100) NOT NULL,
    execution_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    status VARCHAR(20) DEFAULT 'started',
    items_processed INTEGER DEFAULT 0,
    error_message TEXT,
    duration_ms INTEGER
);
"""

# SQLite makes only INTEGER PRIMARY KEY an auto-assigned rowid, so a team on
# SQLite wrote that instead of SERIAL. The other columns are the same.
SQLITE_ORIGIN_DDL = ORIGIN_DDL.replace("id SERIAL PRIMARY KEY", "id INTEGER PRIMARY KEY")

# The origin dashboard query, which must keep working unchanged.
DASHBOARD_QUERY = """
SELECT service_name, COUNT(*) as total_executions,
    COUNT(CASE WHEN status = 'completed' THEN 1 END) as successful_executions,
    COUNT(CASE WHEN status = 'failed' THEN 1 END) as failed_executions
FROM cron_executions GROUP BY service_name
"""

# Origin rows with explicit naive timestamps, as (service_name,
# execution_time, status, items_processed, error_message, duration_ms).
BERLIN_ROWS = (
    ("flow-sync", "2024-10-27 02:30:00", "completed", 7, None, 900),  # ambiguous hour
    ("flow-sync", "2024-03-31 02:30:00", "failed", 0, "connection reset", 15),  # skipped hour
    ("nightly-report", "2024-01-15 09:00:00", "failed", 0, "disk full", 50),
)
NEW_YORK_ROWS = (
    ("nightly-report", "2024-11-03 01:30:00", "completed", 3, None, 800),  # ambiguous hour
    ("cleanup", "2024-07-15 08:00:00", "started", 0, None, None),
)

# The UTC instant of each explicit timestamp, read in each zone by PostgreSQL.
EXPECTED_UTC = {
    ("2024-10-27 02:30:00", "Europe/Berlin"): datetime(2024, 10, 27, 1, 30, tzinfo=UTC),
    ("2024-03-31 02:30:00", "Europe/Berlin"): datetime(2024, 3, 31, 1, 30, tzinfo=UTC),
    ("2024-01-15 09:00:00", "Europe/Berlin"): datetime(2024, 1, 15, 8, 0, tzinfo=UTC),
    ("2024-11-03 01:30:00", "Europe/Berlin"): datetime(2024, 11, 3, 0, 30, tzinfo=UTC),
    ("2024-07-15 08:00:00", "Europe/Berlin"): datetime(2024, 7, 15, 6, 0, tzinfo=UTC),
    ("2024-10-27 02:30:00", "America/New_York"): datetime(2024, 10, 27, 6, 30, tzinfo=UTC),
    ("2024-03-31 02:30:00", "America/New_York"): datetime(2024, 3, 31, 6, 30, tzinfo=UTC),
    ("2024-01-15 09:00:00", "America/New_York"): datetime(2024, 1, 15, 14, 0, tzinfo=UTC),
    ("2024-11-03 01:30:00", "America/New_York"): datetime(2024, 11, 3, 6, 30, tzinfo=UTC),
    ("2024-07-15 08:00:00", "America/New_York"): datetime(2024, 7, 15, 12, 0, tzinfo=UTC),
}

SCHEMA_TABLES = ("cron_executions", "cron_services", VERSION_TABLE)
EXPECTED_INDEXES = {
    "ux_cron_executions_run_key",
    "ix_cron_executions_service_time",
    "ix_cron_executions_started",
}


def upgrade(url: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Run ``cronledger db upgrade`` and fail the test unless it succeeds."""
    result = run_cli("--database-url", url, "db", "upgrade", *options)
    assert result.returncode == 0, f"db upgrade exited {result.returncode}: {result.stderr}"
    return result


@pytest.fixture(autouse=True)
def no_client_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    # libpq sends PGTZ as the session TimeZone, which would override the
    # database default that these tests rely on.
    monkeypatch.delenv("PGTZ", raising=False)


@pytest.fixture
def create_database(postgres_server_url: str) -> Iterator[Callable[[], str]]:
    """Return a function that creates an empty PostgreSQL database and its URL."""
    names: list[str] = []

    def create() -> str:
        name = f"cronledger_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_server_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return make_url(postgres_server_url).set(database=name).render_as_string(False)

    yield create
    dispose_engines()
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class OriginDatabase:
    """A PostgreSQL database with an origin table, filled as the origin jobs did."""

    url: str
    rows: list[tuple[Any, ...]]
    dashboard: list[tuple[Any, ...]]
    explicit_ids: dict[int, tuple[str, str]]
    berlin_now_ids: dict[int, datetime]
    new_york_now_ids: dict[int, datetime]


def fill_origin(url: str, *, with_now_rows: bool = True) -> OriginDatabase:
    """Create the origin table in ``url`` and insert rows from two time zones."""
    name = make_url(url).database
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"ALTER DATABASE \"{name}\" SET timezone = 'America/New_York'")

    explicit_ids: dict[int, tuple[str, str]] = {}
    berlin_now_ids: dict[int, datetime] = {}
    new_york_now_ids: dict[int, datetime] = {}
    insert_explicit = (
        "INSERT INTO cron_executions (service_name, execution_time, status, items_processed,"
        " error_message, duration_ms) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"
    )

    # A new connection, so it takes the database default zone.
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(ORIGIN_DDL)
        zone = connection.execute("SHOW TimeZone").fetchone()
        assert zone == ("America/New_York",), f"database default zone not applied: {zone}"
        for service, stamp, status, items, error, duration in NEW_YORK_ROWS:
            row = connection.execute(
                insert_explicit, (service, stamp, status, items, error, duration)
            ).fetchone()
            assert row is not None
            explicit_ids[row[0]] = (stamp, "America/New_York")
        if with_now_rows:
            row = connection.execute(
                "INSERT INTO cron_executions (service_name, status, items_processed,"
                " duration_ms) VALUES ('nightly-report', 'completed', 10, 1200)"
                " RETURNING id, now()"
            ).fetchone()
            assert row is not None
            new_york_now_ids[row[0]] = row[1].astimezone(UTC)

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("SET TIME ZONE 'Europe/Berlin'")
        for service, stamp, status, items, error, duration in BERLIN_ROWS:
            row = connection.execute(
                insert_explicit, (service, stamp, status, items, error, duration)
            ).fetchone()
            assert row is not None
            explicit_ids[row[0]] = (stamp, "Europe/Berlin")
        if with_now_rows:
            # Rows that rely on every default: execution_time, status, items.
            for statement in (
                "INSERT INTO cron_executions (service_name) VALUES ('flow-sync')"
                " RETURNING id, now()",
                "INSERT INTO cron_executions (service_name, status, items_processed,"
                " duration_ms) VALUES ('flow-sync', 'completed', 120, 3400) RETURNING id, now()",
            ):
                row = connection.execute(statement).fetchone()
                assert row is not None
                berlin_now_ids[row[0]] = row[1].astimezone(UTC)

    return OriginDatabase(
        url=url,
        rows=origin_rows(url),
        dashboard=dashboard(url),
        explicit_ids=explicit_ids,
        berlin_now_ids=berlin_now_ids,
        new_york_now_ids=new_york_now_ids,
    )


def origin_rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return connection.execute(
            "SELECT id, service_name, status, items_processed, error_message, duration_ms"
            " FROM cron_executions ORDER BY id"
        ).fetchall()


def dashboard(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return sorted(connection.execute(DASHBOARD_QUERY).fetchall())


def execution_times(url: str) -> dict[int, datetime]:
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT id, execution_time FROM cron_executions").fetchall()
    # Normalised to UTC, because Python (PEP 495) compares an ambiguous time
    # with fold=1 as unequal to any datetime in another zone, even the same instant.
    return {row_id: value.astimezone(UTC) for row_id, value in rows}


def wall_clock_read_in(instant: datetime, writer: ZoneInfo, reader: ZoneInfo) -> datetime:
    """Return the instant that ``writer``'s wall-clock time of ``instant`` means in ``reader``."""
    wall = instant.astimezone(writer).replace(tzinfo=None)
    return wall.replace(tzinfo=reader).astimezone(UTC)


@pytest.fixture
def origin(create_database: Callable[[], str]) -> OriginDatabase:
    return fill_origin(create_database())


def postgres_schema(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Return the columns, indexes and revision of every table in ``url``."""
    with psycopg.connect(url) as connection:
        columns = connection.execute(
            "SELECT table_name, column_name, ordinal_position, data_type, is_nullable,"
            " column_default, character_maximum_length FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        ).fetchall()
        indexes = connection.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = 'public' ORDER BY tablename, indexname"
        ).fetchall()
        revision = connection.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall()
    return {"columns": columns, "indexes": indexes, "revision": revision}


def apply_with_psql(url: str, sql_file: Path) -> subprocess.CompletedProcess[str]:
    parts = make_url(url)
    env = {"PATH": "/usr/bin:/bin"}
    if parts.password:
        env["PGPASSWORD"] = parts.password
    return subprocess.run(
        [
            "psql",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            parts.host or "127.0.0.1",
            "-p",
            str(parts.port or 5432),
            "-U",
            parts.username or "postgres",
            "-d",
            str(parts.database),
            "-f",
            str(sql_file),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        check=False,
    )


def printed_sql(tmp_path: Path, *options: str) -> Path:
    result = run_cli("db", "sql", *options)
    assert result.returncode == 0, f"db sql exited {result.returncode}: {result.stderr}"
    path = tmp_path / "cronledger.sql"
    path.write_text(result.stdout)
    return path


# PostgreSQL origin table upgraded in place.


def test_upgrade_keeps_origin_rows(origin: OriginDatabase) -> None:
    result = upgrade(origin.url)

    assert "upgraded" in result.stdout, f"unexpected output: {result.stdout!r}"
    assert f"{len(origin.rows)} rows" in result.stderr, f"no row count: {result.stderr!r}"
    assert "America/New_York" in result.stderr, f"zone used is not named: {result.stderr!r}"
    assert origin_rows(origin.url) == origin.rows, "origin rows changed during the upgrade"
    with psycopg.connect(origin.url) as connection:
        data_type = connection.execute(
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_name = 'cron_executions' AND column_name = 'execution_time'"
        ).fetchone()
    assert data_type == ("timestamp with time zone",), f"execution_time is {data_type}"


def test_upgrade_reads_session_zone(origin: OriginDatabase) -> None:
    upgrade(origin.url)
    times = execution_times(origin.url)

    # The migrating session has the database default zone, America/New_York.
    for row_id, (stamp, _writer) in origin.explicit_ids.items():
        expected = EXPECTED_UTC[(stamp, "America/New_York")]
        assert times[row_id] == expected, f"row {row_id} ({stamp}) became {times[row_id]}"
    for row_id, written_at in origin.new_york_now_ids.items():
        assert times[row_id] == written_at, f"New York row {row_id} moved to {times[row_id]}"
    # Rows that a Berlin session wrote are read as New York times too. The
    # rule has one zone per table, so they move by the zones' difference.
    for row_id, written_at in origin.berlin_now_ids.items():
        expected = wall_clock_read_in(written_at, BERLIN, NEW_YORK)
        assert times[row_id] == expected, f"Berlin row {row_id} became {times[row_id]}"


def test_origin_timezone_option_converts(origin: OriginDatabase) -> None:
    result = upgrade(origin.url, "--origin-timezone", "Europe/Berlin")
    times = execution_times(origin.url)

    assert "Europe/Berlin" in result.stderr, f"zone used is not named: {result.stderr!r}"
    for row_id, (stamp, _writer) in origin.explicit_ids.items():
        expected = EXPECTED_UTC[(stamp, "Europe/Berlin")]
        assert times[row_id] == expected, f"row {row_id} ({stamp}) became {times[row_id]}"
    for row_id, written_at in origin.berlin_now_ids.items():
        assert times[row_id] == written_at, f"Berlin row {row_id} moved to {times[row_id]}"
    for row_id, written_at in origin.new_york_now_ids.items():
        expected = wall_clock_read_in(written_at, NEW_YORK, BERLIN)
        assert times[row_id] == expected, f"New York row {row_id} became {times[row_id]}"


def test_dashboard_counts_unchanged(origin: OriginDatabase) -> None:
    upgrade(origin.url)

    assert dashboard(origin.url) == origin.dashboard, "the origin dashboard counts changed"
    assert origin.dashboard == [
        ("cleanup", 1, 0, 0),
        ("flow-sync", 4, 2, 1),
        ("nightly-report", 3, 2, 1),
    ], f"unexpected counts before the upgrade: {origin.dashboard}"


def test_upgrade_twice_nothing_to_do(origin: OriginDatabase) -> None:
    upgrade(origin.url)
    times = execution_times(origin.url)
    second = upgrade(origin.url)

    assert "nothing to do" in second.stdout, f"unexpected output: {second.stdout!r}"
    assert execution_times(origin.url) == times, "the second upgrade changed execution_time"
    assert origin_rows(origin.url) == origin.rows, "the second upgrade changed rows"


def test_services_backfilled(origin: OriginDatabase) -> None:
    upgrade(origin.url)

    with psycopg.connect(origin.url) as connection:
        services = dict(connection.execute("SELECT name, created_at FROM cron_services").fetchall())
        first_runs = dict(
            connection.execute(
                "SELECT service_name, MIN(execution_time) FROM cron_executions"
                " GROUP BY service_name"
            ).fetchall()
        )
    assert set(services) == {"cleanup", "flow-sync", "nightly-report"}, f"services: {services}"
    assert services == first_runs, "created_at is not each service's first run"


def test_rows_after_upgrade_follow_ids(origin: OriginDatabase) -> None:
    upgrade(origin.url, "--origin-timezone", "Europe/Berlin")
    last_origin_id = max(row[0] for row in origin.rows)

    run = run_cli("--database-url", origin.url, "run", "flow-sync", "--", "true")
    assert run.returncode == 0, f"cronledger run exited {run.returncode}: {run.stderr}"

    # The origin's own statements, unchanged: insert with defaults, then update.
    with psycopg.connect(origin.url, autocommit=True) as connection:
        connection.execute("SET TIME ZONE 'Europe/Berlin'")
        inserted = connection.execute(
            "INSERT INTO cron_executions (service_name) VALUES (%s) RETURNING id, now()",
            ("flow-sync",),
        ).fetchone()
        assert inserted is not None
        connection.execute(
            "UPDATE cron_executions SET status = %s, items_processed = %s, duration_ms = %s"
            " WHERE id = %s",
            ("completed", 12, 340, inserted[0]),
        )
        connection.execute(
            "INSERT INTO cron_executions (service_name, status, items_processed, error_message,"
            " duration_ms) VALUES (%s, %s, %s, %s, %s)",
            ("nightly-report", "failed", 0, "timeout", 30_000),
        )
        new_rows = connection.execute(
            "SELECT id, service_name, status, items_processed, execution_time, run_key"
            " FROM cron_executions WHERE id > %s ORDER BY id",
            (last_origin_id,),
        ).fetchall()

    assert len(new_rows) == 3, f"expected 3 new rows after id {last_origin_id}: {new_rows}"
    assert new_rows[0][1] == "flow-sync", f"first new row is {new_rows[0]}"
    assert new_rows[0][5] is not None, "the cronledger run has no run_key"
    assert new_rows[1][0] == inserted[0], "the origin insert is not the second new row"
    assert new_rows[1][2:4] == ("completed", 12), f"origin update not applied: {new_rows[1]}"
    assert new_rows[1][4].astimezone(UTC) == inserted[1].astimezone(UTC), (
        "a default execution_time is not the insert's now()"
    )
    assert new_rows[2][1:4] == ("nightly-report", "failed", 0), f"row is {new_rows[2]}"


# SQLite origin table.


def fill_sqlite_origin(path: Path, rows: tuple[tuple[Any, ...], ...]) -> None:
    with sqlite3.connect(path) as connection:
        connection.executescript(SQLITE_ORIGIN_DDL)
        connection.executemany(
            "INSERT INTO cron_executions (service_name, execution_time, status,"
            " items_processed, error_message, duration_ms) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        # A row that relies on every default. SQLite's CURRENT_TIMESTAMP is UTC.
        connection.execute("INSERT INTO cron_executions (service_name) VALUES ('flow-sync')")
    connection.close()


def sqlite_query(path: Path, query: str) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def test_sqlite_origin_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "origin.db"
    url = f"sqlite:///{path}"
    before = datetime.now(UTC).replace(microsecond=0)
    fill_sqlite_origin(path, (*BERLIN_ROWS, *NEW_YORK_ROWS))
    after = datetime.now(UTC)
    select_origin = (
        "SELECT id, service_name, execution_time, status, items_processed, error_message,"
        " duration_ms FROM cron_executions ORDER BY id"
    )
    rows_before = sqlite_query(path, select_origin)
    dashboard_before = sorted(sqlite_query(path, DASHBOARD_QUERY))

    result = upgrade(url)

    assert "upgraded" in result.stdout, f"unexpected output: {result.stdout!r}"
    assert sqlite_query(path, select_origin) == rows_before, "origin rows or times changed"
    assert sorted(sqlite_query(path, DASHBOARD_QUERY)) == dashboard_before, "dashboard changed"
    with get_engine(url).connect() as connection:
        times = dict(
            connection.execute(select(cron_executions.c.id, cron_executions.c.execution_time)).all()
        )
    assert times[1] == datetime(2024, 10, 27, 2, 30, tzinfo=UTC), f"row 1 reads as {times[1]}"
    default_time = times[len(rows_before)]
    assert before <= default_time <= after, f"default time {default_time} is not the insert time"

    run = run_cli("--database-url", url, "run", "flow-sync", "--", "true")
    assert run.returncode == 0, f"cronledger run exited {run.returncode}: {run.stderr}"
    ids = [row[0] for row in sqlite_query(path, "SELECT id FROM cron_executions ORDER BY id")]
    assert ids[-1] == len(rows_before) + 1, f"the new run did not follow the origin ids: {ids}"
    services = {row[0] for row in sqlite_query(path, "SELECT name FROM cron_services")}
    assert services == {"cleanup", "flow-sync", "nightly-report"}, f"services: {services}"
    assert "nothing to do" in upgrade(url).stdout, "the second upgrade did something"


def test_sqlite_origin_timezone_matches_postgresql(tmp_path: Path) -> None:
    path = tmp_path / "origin.db"
    url = f"sqlite:///{path}"
    fill_sqlite_origin(path, BERLIN_ROWS)

    upgrade(url, "--origin-timezone", "Europe/Berlin")

    with get_engine(url).connect() as connection:
        times = dict(
            connection.execute(select(cron_executions.c.id, cron_executions.c.execution_time)).all()
        )
    for row_id, (_service, stamp, *_rest) in enumerate(BERLIN_ROWS, start=1):
        expected = EXPECTED_UTC[(stamp, "Europe/Berlin")]
        assert times[row_id] == expected, f"{stamp} Berlin became {times[row_id]}"


# A new database.


def test_fresh_database_schema(database_url: str) -> None:
    result = upgrade(database_url)
    inspector = inspect(get_engine(database_url))
    indexes = {index["name"] for index in inspector.get_indexes("cron_executions")}

    assert "upgraded" in result.stdout, f"unexpected output: {result.stdout!r}"
    for table in SCHEMA_TABLES:
        assert inspector.has_table(table), f"table {table} is missing"
    assert indexes >= EXPECTED_INDEXES, f"indexes missing: {EXPECTED_INDEXES - indexes}"
    with get_engine(database_url).connect() as connection:
        revisions = connection.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").all()
    assert [row[0] for row in revisions] == [head_revision()], f"revisions: {revisions}"
    assert "nothing to do" in upgrade(database_url).stdout, "the second upgrade did something"


def test_core_tables_match_schema(database_url: str) -> None:
    upgrade(database_url)
    inspector = inspect(get_engine(database_url))

    for table in (cron_executions, cron_services):
        migrated = [column["name"] for column in inspector.get_columns(table.name)]
        declared = [column.name for column in table.columns]
        assert migrated == declared, f"{table.name}: migrated {migrated}, tables.py {declared}"


def test_core_tables_match_origin_upgrade(origin: OriginDatabase) -> None:
    upgrade(origin.url)
    inspector = inspect(get_engine(origin.url))

    for table in (cron_executions, cron_services):
        migrated = [column["name"] for column in inspector.get_columns(table.name)]
        declared = [column.name for column in table.columns]
        assert migrated == declared, f"{table.name}: migrated {migrated}, tables.py {declared}"


# SQL printed by 'db sql'.


def test_sql_matches_upgrade_fresh(create_database: Callable[[], str], tmp_path: Path) -> None:
    by_psql = create_database()
    by_upgrade = create_database()

    applied = apply_with_psql(by_psql, printed_sql(tmp_path))
    upgrade(by_upgrade)

    assert applied.returncode == 0, f"psql failed: {applied.stderr}"
    assert "ERROR" not in applied.stderr, f"psql reported an error: {applied.stderr}"
    psql_schema = postgres_schema(by_psql)
    upgrade_schema = postgres_schema(by_upgrade)
    for part in ("columns", "indexes", "revision"):
        assert psql_schema[part] == upgrade_schema[part], f"{part} differ from db upgrade"


def test_sql_applies_to_origin(create_database: Callable[[], str], tmp_path: Path) -> None:
    by_psql = fill_origin(create_database(), with_now_rows=False)
    by_upgrade = fill_origin(create_database(), with_now_rows=False)

    applied = apply_with_psql(by_psql.url, printed_sql(tmp_path))
    upgrade(by_upgrade.url)

    assert applied.returncode == 0, f"psql failed: {applied.stderr}"
    assert "ERROR" not in applied.stderr, f"psql reported an error: {applied.stderr}"
    psql_schema = postgres_schema(by_psql.url)
    upgrade_schema = postgres_schema(by_upgrade.url)
    for part in ("columns", "indexes", "revision"):
        assert psql_schema[part] == upgrade_schema[part], f"{part} differ from db upgrade"
    assert origin_rows(by_psql.url) == by_psql.rows, "psql changed origin rows"
    assert execution_times(by_psql.url) == execution_times(by_upgrade.url), (
        "psql and db upgrade converted execution_time differently"
    )
    assert dashboard(by_psql.url) == by_psql.dashboard, "the origin dashboard counts changed"


def test_sql_with_origin_timezone(create_database: Callable[[], str], tmp_path: Path) -> None:
    database = fill_origin(create_database(), with_now_rows=False)

    applied = apply_with_psql(
        database.url, printed_sql(tmp_path, "--origin-timezone", "Europe/Berlin")
    )

    assert applied.returncode == 0, f"psql failed: {applied.stderr}"
    times = execution_times(database.url)
    for row_id, (stamp, _writer) in database.explicit_ids.items():
        expected = EXPECTED_UTC[(stamp, "Europe/Berlin")]
        assert times[row_id] == expected, f"row {row_id} ({stamp}) became {times[row_id]}"


def test_sqlite_sql_matches_upgrade(tmp_path: Path) -> None:
    by_script = tmp_path / "script.db"
    by_upgrade = tmp_path / "upgrade.db"

    script = printed_sql(tmp_path, "--dialect", "sqlite").read_text()
    connection = sqlite3.connect(by_script)
    try:
        connection.executescript(script)
    finally:
        connection.close()
    upgrade(f"sqlite:///{by_upgrade}")

    schema_query = (
        "SELECT type, name, tbl_name, sql FROM sqlite_master"
        " WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    )
    script_schema = sqlite_query(by_script, schema_query)
    upgrade_schema = sqlite_query(by_upgrade, schema_query)
    assert [row[:3] for row in script_schema] == [row[:3] for row in upgrade_schema], (
        "the SQLite script creates other tables or indexes than db upgrade"
    )
    for table in SCHEMA_TABLES:
        script_columns = sqlite_query(by_script, f"PRAGMA table_info({table})")
        upgrade_columns = sqlite_query(by_upgrade, f"PRAGMA table_info({table})")
        assert script_columns == upgrade_columns, f"columns of {table} differ from db upgrade"
    assert sqlite_query(by_script, f"SELECT version_num FROM {VERSION_TABLE}") == [
        (head_revision(),)
    ], "the SQLite script did not record the revision"


# Errors.


@pytest.mark.parametrize("command", [("db", "upgrade"), ("db", "sql")], ids=" ".join)
def test_unknown_timezone_rejected(command: tuple[str, ...], tmp_path: Path) -> None:
    path = tmp_path / "never.db"
    result = run_cli(
        "--database-url", f"sqlite:///{path}", *command, "--origin-timezone", "Nowhere/Zone"
    )

    assert result.returncode == 2, f"exit code {result.returncode}: {result.stderr}"
    assert "'Nowhere/Zone'" in result.stderr, f"stderr does not name the zone: {result.stderr}"
    assert "Traceback" not in result.stderr, f"traceback:\n{result.stderr}"
    assert not path.exists(), "the database was created although the zone is invalid"


def test_unreachable_database_one_line() -> None:
    port = free_port()
    url = f"postgresql://cron:secret@127.0.0.1:{port}/ledger"
    result = run_cli("--database-url", url, "db", "upgrade")
    lines = result.stderr.strip().splitlines()

    assert result.returncode != 0, "db upgrade succeeded without a database"
    assert len(lines) == 1, f"expected a one-line error, got:\n{result.stderr}"
    assert f"cron:***@127.0.0.1:{port}/ledger" in lines[0], f"URL not named: {lines[0]}"
    assert "secret" not in result.stderr, f"the password leaked: {result.stderr}"
    assert "Traceback" not in result.stderr, f"traceback:\n{result.stderr}"
