"""Tests of syncing services from cronledger.toml, declaring them from code, and pausing them.

Each test runs on a fresh SQLite database and a fresh PostgreSQL database.
Command line tests run the installed ``cronledger`` console script as a
subprocess, the way operators run it.
"""

from __future__ import annotations

import logging
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Row, func, select

from cronledger.recorder import get_recorder
from cronledger.schedule import CronSchedule, IntervalSchedule
from cronledger.settings import ServiceSettings, load_config
from cronledger.store.engine import get_engine
from cronledger.store.executions import FinishEvent, StartEvent
from cronledger.store.migrate import ensure_schema
from cronledger.store.services import load_services, set_paused, sync_services
from cronledger.store.tables import cron_executions, cron_services
from cronledger.tracking import track
from tests.commands import run_cli

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)

FLOW_SYNC = """\
[services.flow-sync]
schedule = "*/5 * * * *"
grace = "2m"
max_runtime = "10m"
"""

HEARTBEAT = """\
[services.heartbeat]
interval = "30s"
grace = "10s"
"""

NIGHTLY_BACKUP = """\
[services.nightly-backup]
schedule = "30 2 * * *"
timezone = "Europe/Berlin"
failure_threshold = 2
recovery_threshold = 3
"""

THREE_SERVICES = "\n".join([FLOW_SYNC, HEARTBEAT, NIGHTLY_BACKUP])


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cronledger.toml"
    path.write_text(text, encoding="utf-8")
    return path


def migrated_engine(database_url: str) -> Engine:
    engine = get_engine(database_url)
    ensure_schema(engine)
    return engine


def service_rows(engine: Engine) -> dict[str, Row[Any]]:
    """Return every row of cron_services by name."""
    with engine.connect() as connection:
        rows = connection.execute(select(cron_services).order_by(cron_services.c.name)).all()
    return {row.name: row for row in rows}


def count_runs(engine: Engine, service: str) -> int:
    with engine.connect() as connection:
        query = select(func.count()).where(cron_executions.c.service_name == service)
        return int(connection.execute(query).scalar_one())


def record_completed_run(database_url: str, service: str, started_at: datetime) -> None:
    start = StartEvent(uuid.uuid4().hex, service, started_at, host=None, pid=None)
    recorder = get_recorder(database_url)
    recorder.start(start)
    recorder.finish(FinishEvent(start, "completed", started_at + timedelta(seconds=5), 5000, 0))


# Add, update, unchanged


def test_sync_adds_new_services(database_url: str, tmp_path: Path) -> None:
    engine = migrated_engine(database_url)
    config = load_config(write_config(tmp_path, THREE_SERVICES))

    result = sync_services(engine, config, T0)

    assert result.added == ["flow-sync", "heartbeat", "nightly-backup"], f"added {result.added}"
    assert result.updated == [], f"updated {result.updated}"
    assert result.unchanged == [], f"unchanged {result.unchanged}"
    assert result.undeclared == [], f"undeclared {result.undeclared}"

    rows = service_rows(engine)
    flow = rows["flow-sync"]
    assert flow.settings_source == "config", f"settings_source {flow.settings_source!r}"
    assert flow.created_at == T0, f"created_at {flow.created_at}"
    assert flow.settings_updated_at == T0, f"settings_updated_at {flow.settings_updated_at}"
    assert flow.schedule == "*/5 * * * *", f"schedule {flow.schedule!r}"
    assert flow.interval_seconds is None, f"interval_seconds {flow.interval_seconds}"
    assert flow.grace_seconds == 120, f"grace_seconds {flow.grace_seconds}"
    assert flow.max_runtime_seconds == 600, f"max_runtime_seconds {flow.max_runtime_seconds}"
    assert flow.paused is False, f"paused {flow.paused!r}"

    heartbeat = rows["heartbeat"]
    assert heartbeat.schedule is None, f"schedule {heartbeat.schedule!r}"
    assert heartbeat.interval_seconds == 30, f"interval_seconds {heartbeat.interval_seconds}"
    assert heartbeat.grace_seconds == 10, f"grace_seconds {heartbeat.grace_seconds}"

    backup = rows["nightly-backup"]
    assert backup.timezone == "Europe/Berlin", f"timezone {backup.timezone!r}"
    assert backup.failure_threshold == 2, f"failure_threshold {backup.failure_threshold}"
    assert backup.recovery_threshold == 3, f"recovery_threshold {backup.recovery_threshold}"

    with engine.connect() as connection:
        stored = {record.settings.name: record.settings for record in load_services(connection)}
    for name, settings in config.services.items():
        assert stored[name] == settings, f"{name}: stored {stored[name]} != file {settings}"


def test_sync_updates_changed_service(database_url: str, tmp_path: Path) -> None:
    engine = migrated_engine(database_url)
    sync_services(engine, load_config(write_config(tmp_path, THREE_SERVICES)), T0)
    edited = THREE_SERVICES.replace('grace = "2m"', 'grace = "7m"').replace(
        'interval = "30s"', 'interval = "45s"'
    )
    later = T0 + timedelta(hours=1)

    result = sync_services(engine, load_config(write_config(tmp_path, edited)), later)

    assert result.added == [], f"added {result.added}"
    assert result.updated == ["flow-sync", "heartbeat"], f"updated {result.updated}"
    assert result.unchanged == ["nightly-backup"], f"unchanged {result.unchanged}"
    rows = service_rows(engine)
    assert rows["flow-sync"].grace_seconds == 420, f"grace {rows['flow-sync'].grace_seconds}"
    assert rows["heartbeat"].interval_seconds == 45, (
        f"interval {rows['heartbeat'].interval_seconds}"
    )
    assert rows["flow-sync"].created_at == T0, "an update changed created_at"
    assert rows["flow-sync"].settings_updated_at == later, (
        f"settings_updated_at {rows['flow-sync'].settings_updated_at}, expected {later}"
    )
    assert rows["nightly-backup"].settings_updated_at == T0, (
        "an unchanged service got a new settings_updated_at"
    )


def test_sync_same_file_unchanged(database_url: str, tmp_path: Path) -> None:
    engine = migrated_engine(database_url)
    config = load_config(write_config(tmp_path, THREE_SERVICES))
    sync_services(engine, config, T0)
    before = service_rows(engine)

    result = sync_services(engine, config, T0 + timedelta(hours=1))

    assert result.unchanged == ["flow-sync", "heartbeat", "nightly-backup"], (
        f"unchanged {result.unchanged}"
    )
    assert result.added == [], f"added {result.added}"
    assert result.updated == [], f"updated {result.updated}"
    assert service_rows(engine) == before, "a sync of the same file changed cron_services"


def test_sync_takes_over_recorded_service(database_url: str, tmp_path: Path) -> None:
    # A run recorded before any declaration creates the row without settings.
    engine = migrated_engine(database_url)
    record_completed_run(database_url, "flow-sync", T0 - timedelta(days=1))
    assert service_rows(engine)["flow-sync"].settings_source is None, "row already declared"

    result = sync_services(engine, load_config(write_config(tmp_path, THREE_SERVICES)), T0)

    assert result.updated == ["flow-sync"], f"updated {result.updated}"
    row = service_rows(engine)["flow-sync"]
    assert row.settings_source == "config", f"settings_source {row.settings_source!r}"
    assert row.schedule == "*/5 * * * *", f"schedule {row.schedule!r}"
    assert row.created_at == T0 - timedelta(days=1), f"created_at {row.created_at}"


# A service removed from the file


def test_sync_removed_service_kept(database_url: str, tmp_path: Path) -> None:
    engine = migrated_engine(database_url)
    sync_services(engine, load_config(write_config(tmp_path, THREE_SERVICES)), T0)
    record_completed_run(database_url, "heartbeat", T0 + timedelta(minutes=1))
    record_completed_run(database_url, "heartbeat", T0 + timedelta(minutes=2))
    before = service_rows(engine)["heartbeat"]
    config = load_config(write_config(tmp_path, FLOW_SYNC + NIGHTLY_BACKUP))
    assert "heartbeat" not in config.services, "the edited file still declares heartbeat"

    result = sync_services(engine, config, T0 + timedelta(hours=1))

    assert result.undeclared == ["heartbeat"], f"undeclared {result.undeclared}"
    assert result.unchanged == ["flow-sync", "nightly-backup"], f"unchanged {result.unchanged}"
    after = service_rows(engine)
    assert "heartbeat" in after, "the removed service was deleted"
    assert after["heartbeat"] == before, "the removed service's row changed"
    assert after["heartbeat"].interval_seconds == 30, "the removed service lost its settings"
    assert count_runs(engine, "heartbeat") == 2, "the removed service lost runs"


def test_sync_cli_reports_removed_service(database_url: str, tmp_path: Path) -> None:
    path = write_config(tmp_path, THREE_SERVICES)
    first = run_cli(
        "--database-url", database_url, "--config", str(path), "services", "sync", cwd=tmp_path
    )
    assert first.returncode == 0, f"first sync exited {first.returncode}: {first.stderr}"
    assert f"{path}: 3 added, 0 updated, 0 unchanged" in first.stdout, first.stdout
    path.write_text(FLOW_SYNC, encoding="utf-8")

    second = run_cli(
        "--database-url", database_url, "--config", str(path), "services", "sync", cwd=tmp_path
    )

    assert second.returncode == 0, f"second sync exited {second.returncode}: {second.stderr}"
    assert f"{path}: 0 added, 0 updated, 1 unchanged" in second.stdout, second.stdout
    for name in ("heartbeat", "nightly-backup"):
        line = f"kept     {name} (no longer in the file; runs and settings kept)"
        assert line in second.stdout, f"stdout lacks {line!r}:\n{second.stdout}"
    assert "kept     flow-sync" not in second.stdout, f"flow-sync reported:\n{second.stdout}"
    rows = service_rows(migrated_engine(database_url))
    assert sorted(rows) == ["flow-sync", "heartbeat", "nightly-backup"], f"rows {sorted(rows)}"


# Pause state


def test_sync_without_paused_keeps_pause(database_url: str, tmp_path: Path) -> None:
    engine = migrated_engine(database_url)
    sync_services(engine, load_config(write_config(tmp_path, THREE_SERVICES)), T0)
    assert set_paused(engine, "flow-sync", True, T0), "set_paused found no flow-sync"

    unchanged = sync_services(engine, load_config(write_config(tmp_path, THREE_SERVICES)), T0)
    assert "flow-sync" in unchanged.unchanged, f"unchanged {unchanged.unchanged}"
    assert service_rows(engine)["flow-sync"].paused is True, "a sync of the same file resumed"

    edited = THREE_SERVICES.replace('grace = "2m"', 'grace = "3m"')
    updated = sync_services(engine, load_config(write_config(tmp_path, edited)), T0)
    assert "flow-sync" in updated.updated, f"updated {updated.updated}"
    row = service_rows(engine)["flow-sync"]
    assert row.paused is True, "a sync of an edited file without paused resumed the service"
    assert row.grace_seconds == 180, f"grace_seconds {row.grace_seconds}"


def test_sync_paused_false_resumes(database_url: str, tmp_path: Path) -> None:
    engine = migrated_engine(database_url)
    sync_services(engine, load_config(write_config(tmp_path, THREE_SERVICES)), T0)
    set_paused(engine, "flow-sync", True, T0)
    set_paused(engine, "heartbeat", True, T0)
    resumed = THREE_SERVICES.replace('max_runtime = "10m"', 'max_runtime = "10m"\npaused = false')
    config = load_config(write_config(tmp_path, resumed))
    assert config.pause_declared == {"flow-sync"}, f"pause_declared {config.pause_declared}"

    result = sync_services(engine, config, T0 + timedelta(minutes=1))

    assert result.updated == ["flow-sync"], f"updated {result.updated}"
    rows = service_rows(engine)
    assert rows["flow-sync"].paused is False, "paused = false did not resume flow-sync"
    assert rows["flow-sync"].resumed_at == T0 + timedelta(minutes=1), (
        f"resumed_at {rows['flow-sync'].resumed_at}"
    )
    assert rows["heartbeat"].paused is True, "a service without paused in the file was resumed"


def test_sync_paused_true_pauses(database_url: str, tmp_path: Path) -> None:
    engine = migrated_engine(database_url)
    sync_services(engine, load_config(write_config(tmp_path, THREE_SERVICES)), T0)
    paused = THREE_SERVICES.replace('interval = "30s"', 'interval = "30s"\npaused = true')

    result = sync_services(engine, load_config(write_config(tmp_path, paused)), T0)

    assert result.updated == ["heartbeat"], f"updated {result.updated}"
    rows = service_rows(engine)
    assert rows["heartbeat"].paused is True, "paused = true did not pause heartbeat"
    assert rows["flow-sync"].paused is False, "flow-sync was paused"


# Config errors


# Each bad file also drops nightly-backup and pauses heartbeat, so a partial
# sync would show in the database.
BAD_FILE_HEAD = """\
[services.heartbeat]
interval = "30s"
paused = true

[services.flow-sync]
"""

CONFIG_ERRORS = [
    (
        'schedule = "61 * * * *"',
        'services.flow-sync.schedule = "61 * * * *" is invalid: minute 61 is out of range 0-59',
    ),
    ("retries = 3", "unknown key services.flow-sync.retries = 3"),
    ('grace = "-5m"', 'services.flow-sync.grace = "-5m" is invalid'),
    ("failure_threshold = 0", "services.flow-sync.failure_threshold = 0 is invalid"),
]


def sync_bad_file(database_url: str, tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """Sync the good file, pause flow-sync, then run services sync on ``text``.

    Asserts that the failed sync left cron_services as it was.
    """
    engine = migrated_engine(database_url)
    sync_services(engine, load_config(write_config(tmp_path, THREE_SERVICES)), T0)
    set_paused(engine, "flow-sync", True, T0)
    before = service_rows(engine)
    path = write_config(tmp_path, text)

    result = run_cli(
        "--database-url", database_url, "--config", str(path), "services", "sync", cwd=tmp_path
    )

    after = service_rows(engine)
    assert sorted(after) == sorted(before), f"services {sorted(before)} became {sorted(after)}"
    assert after == before, "a failed sync changed cron_services"
    assert after["heartbeat"].paused is False, "a failed sync paused heartbeat"
    assert after["flow-sync"].paused is True, "a failed sync resumed flow-sync"
    return result


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    CONFIG_ERRORS,
    ids=["bad cron", "unknown key", "negative grace", "threshold 0"],
)
def test_sync_cli_config_error(
    bad_line: str, expected: str, sqlite_url: str, tmp_path: Path
) -> None:
    text = BAD_FILE_HEAD + bad_line + "\n"
    bad_line_number = text.splitlines().index(bad_line) + 1

    result = sync_bad_file(sqlite_url, tmp_path, text)

    assert result.returncode == 2, f"exit code {result.returncode}, stderr: {result.stderr}"
    location = f"{tmp_path / 'cronledger.toml'} line {bad_line_number}:"
    assert location in result.stderr, f"stderr lacks {location!r}: {result.stderr}"
    assert expected in result.stderr, f"stderr lacks {expected!r}: {result.stderr}"
    assert "Traceback" not in result.stderr, f"traceback on a config error:\n{result.stderr}"
    assert result.stdout == "", f"a failed sync printed a result: {result.stdout!r}"


def test_sync_cli_every_config_error(database_url: str, tmp_path: Path) -> None:
    text = BAD_FILE_HEAD + "".join(f"{bad_line}\n" for bad_line, _ in CONFIG_ERRORS)
    path = tmp_path / "cronledger.toml"

    result = sync_bad_file(database_url, tmp_path, text)

    assert result.returncode == 2, f"exit code {result.returncode}, stderr: {result.stderr}"
    for bad_line, expected in CONFIG_ERRORS:
        line_number = text.splitlines().index(bad_line) + 1
        problem = f"{path} line {line_number}: "
        lines = [line for line in result.stderr.splitlines() if problem in line]
        assert lines, f"no problem reported for line {line_number}: {result.stderr}"
        assert expected in lines[0], f"line {line_number} lacks {expected!r}: {lines[0]}"
    assert result.stdout == "", f"a failed sync printed a result: {result.stdout!r}"


# Declarations from code


def test_code_declaration_stored(database_url: str) -> None:
    settings = ServiceSettings(
        name="report",
        schedule=IntervalSchedule(timedelta(hours=1)),
        grace=timedelta(minutes=2),
        max_runtime=timedelta(minutes=10),
        failure_threshold=3,
    )

    with track("report", database_url=database_url, settings=settings):
        pass

    engine = migrated_engine(database_url)
    row = service_rows(engine)["report"]
    assert row.settings_source == "code", f"settings_source {row.settings_source!r}"
    assert row.interval_seconds == 3600, f"interval_seconds {row.interval_seconds}"
    assert row.grace_seconds == 120, f"grace_seconds {row.grace_seconds}"
    assert row.max_runtime_seconds == 600, f"max_runtime_seconds {row.max_runtime_seconds}"
    assert row.failure_threshold == 3, f"failure_threshold {row.failure_threshold}"
    with engine.connect() as connection:
        stored = {record.settings.name: record.settings for record in load_services(connection)}
    assert stored["report"] == settings, f"stored {stored['report']} != declared {settings}"
    assert count_runs(engine, "report") == 1, "the tracked run was not recorded"


def test_code_declaration_yields_to_config(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = migrated_engine(database_url)
    sync_services(engine, load_config(write_config(tmp_path, THREE_SERVICES)), T0)
    before = service_rows(engine)["flow-sync"]
    settings = ServiceSettings(
        name="flow-sync",
        schedule=CronSchedule("0 * * * *"),
        grace=timedelta(minutes=30),
    )

    with (
        caplog.at_level(logging.WARNING, logger="cronledger"),
        track("flow-sync", database_url=database_url, settings=settings),
    ):
        pass

    after = service_rows(engine)["flow-sync"]
    assert after.settings_source == "config", f"settings_source {after.settings_source!r}"
    assert after.schedule == "*/5 * * * *", f"schedule {after.schedule!r}"
    assert after.grace_seconds == 120, f"grace_seconds {after.grace_seconds}"
    assert after.settings_updated_at == before.settings_updated_at, "settings_updated_at changed"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = (
        "service flow-sync: settings declared in code differ from the config file's; "
        "the config file wins"
    )
    assert expected in warnings, f"no warning that the config file wins: {warnings}"
    assert count_runs(engine, "flow-sync") == 1, "the tracked run was not recorded"


# services pause and resume


def test_pause_unknown_service_rejected(database_url: str, tmp_path: Path) -> None:
    engine = migrated_engine(database_url)
    sync_services(engine, load_config(write_config(tmp_path, THREE_SERVICES)), T0)

    for action in ("pause", "resume"):
        result = run_cli("--database-url", database_url, "services", action, "ghost", cwd=tmp_path)

        assert result.returncode == 2, f"{action} exited {result.returncode}: {result.stderr}"
        assert "service 'ghost' not found" in result.stderr, f"{action} stderr: {result.stderr}"
        assert "Traceback" not in result.stderr, f"{action} traceback:\n{result.stderr}"
        assert "ghost" not in service_rows(engine), f"{action} created the unknown service"


def test_pause_resume_known_service(database_url: str, tmp_path: Path) -> None:
    engine = migrated_engine(database_url)
    sync_services(engine, load_config(write_config(tmp_path, THREE_SERVICES)), T0)

    paused = run_cli("--database-url", database_url, "services", "pause", "heartbeat", cwd=tmp_path)
    assert paused.returncode == 0, f"pause exited {paused.returncode}: {paused.stderr}"
    assert paused.stdout.strip() == "paused heartbeat", f"pause output {paused.stdout!r}"
    assert service_rows(engine)["heartbeat"].paused is True, "pause did not pause"

    resumed = run_cli(
        "--database-url", database_url, "services", "resume", "heartbeat", cwd=tmp_path
    )
    assert resumed.returncode == 0, f"resume exited {resumed.returncode}: {resumed.stderr}"
    assert resumed.stdout.strip() == "resumed heartbeat", f"resume output {resumed.stdout!r}"
    assert service_rows(engine)["heartbeat"].paused is False, "resume did not resume"
