"""Tests of ``cronledger monitor`` as real processes: leadership, signals and --once.

Monitors run as subprocesses of the installed console script with -v, so
their INFO logs reach stderr, which each test reads from a file. PostgreSQL
cases exercise the advisory lock and SQLite cases the file lock. Tests wait
for a log line or a database row with a deadline; none asserts how fast.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, Row, select
from sqlalchemy.engine import make_url

from cronledger.recorder import get_recorder, utc_now
from cronledger.store.engine import get_engine
from cronledger.store.executions import FinishEvent, StartEvent
from cronledger.store.migrate import ensure_schema
from cronledger.store.tables import cron_executions, cron_health_events, cron_services
from tests.commands import CRONLEDGER

pytestmark = pytest.mark.timeout(120)

ACTIVE = "this monitor is now active"
STANDING_BY = "another monitor is active; standing by"
STOPPED = "monitor stopped"

# Generous deadlines for a loaded machine. The tests poll and return early.
STARTUP_DEADLINE = 60.0
TAKEOVER_DEADLINE = 30.0


class MonitorProcess:
    """One ``cronledger -v monitor --interval 1s`` process with its stderr in a file."""

    def __init__(self, database_url: str, directory: Path, *options: str) -> None:
        self.stderr_path = directory / f"monitor-{uuid.uuid4().hex[:8]}.log"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    CRONLEDGER,
                    "-v",
                    "--database-url",
                    database_url,
                    *options,
                    "monitor",
                    "--interval",
                    "1s",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=directory,
            )

    @property
    def log(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = TAKEOVER_DEADLINE) -> int:
        return self.process.wait(timeout=timeout)


@pytest.fixture
def start_monitor(tmp_path: Path) -> Iterator[Callable[..., MonitorProcess]]:
    """Start monitor processes; kill those still running when the test ends."""
    started: list[MonitorProcess] = []

    def start(database_url: str, *options: str) -> MonitorProcess:
        monitor = MonitorProcess(database_url, tmp_path, *options)
        started.append(monitor)
        return monitor

    yield start
    for monitor in started:
        if monitor.process.poll() is None:
            monitor.process.kill()
            monitor.process.wait(timeout=30)


def wait_until(condition: Callable[[], bool], deadline: float) -> bool:
    """Poll ``condition`` every 0.1 s until it is true or ``deadline`` seconds pass."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def wait_active(monitor: MonitorProcess) -> bool:
    return wait_until(lambda: ACTIVE in monitor.log, STARTUP_DEADLINE)


def migrated_engine(database_url: str) -> Engine:
    engine = get_engine(database_url)
    ensure_schema(engine)
    return engine


def start_run(database_url: str, service: str, started_at: datetime) -> StartEvent:
    event = StartEvent(uuid.uuid4().hex, service, started_at, host=None, pid=None)
    get_recorder(database_url).start(event)
    return event


def completed_run(database_url: str, service: str, started_at: datetime) -> None:
    start = start_run(database_url, service, started_at)
    finished_at = started_at + timedelta(seconds=5)
    get_recorder(database_url).finish(FinishEvent(start, "completed", finished_at, 5000, 0))


def event_states(engine: Engine, service: str) -> list[str]:
    events = cron_health_events.c
    with engine.connect() as connection:
        query = select(events.state).where(events.service_name == service).order_by(events.id)
        return list(connection.execute(query).scalars())


def service_rows(engine: Engine) -> dict[str, Row[Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(cron_services)).all()
    return {row.name: row for row in rows}


def write_config(path: Path, services: dict[str, str]) -> None:
    """Write a cronledger.toml with one table per service, given as its TOML lines."""
    tables = [f"[services.{name}]\n{lines}\n" for name, lines in services.items()]
    path.write_text("\n".join(tables), encoding="utf-8")


# Leadership


def test_standby_takes_over_after_kill(
    database_url: str, start_monitor: Callable[..., MonitorProcess]
) -> None:
    engine = migrated_engine(database_url)
    completed_run(database_url, "export", utc_now() - timedelta(minutes=1))
    monitors = [start_monitor(database_url), start_monitor(database_url)]

    def roles_settled() -> bool:
        logs = [monitor.log for monitor in monitors]
        return sum(ACTIVE in log for log in logs) == 1 and any(STANDING_BY in log for log in logs)

    settled = wait_until(roles_settled, STARTUP_DEADLINE)
    logs = [monitor.log for monitor in monitors]
    assert settled, f"no single active monitor and standby:\n{logs[0]}\n---\n{logs[1]}"
    active, standby = monitors if ACTIVE in logs[0] else reversed(monitors)
    assert STANDING_BY not in active.log, f"the active monitor stood by:\n{active.log}"
    assert ACTIVE not in standby.log, f"both monitors became active:\n{standby.log}"
    assert wait_until(lambda: "healthy" in event_states(engine, "export"), STARTUP_DEADLINE), (
        f"the active monitor recorded no health:\n{active.log}"
    )

    active.process.kill()
    active.wait_exit()

    took_over = wait_until(lambda: ACTIVE in standby.log, TAKEOVER_DEADLINE)
    assert took_over, f"the standby did not take over:\n{standby.log}"
    start_run(database_url, "export", utc_now())
    recorded = wait_until(lambda: "running" in event_states(engine, "export"), TAKEOVER_DEADLINE)
    assert recorded, f"the new active monitor recorded nothing:\n{standby.log}"
    assert standby.process.poll() is None, f"the standby exited:\n{standby.log}"


def test_advisory_lock_survives_idle_timeout(
    postgres_url: str, start_monitor: Callable[..., MonitorProcess]
) -> None:
    # A server that closes connections idle in a transaction must not take
    # the lock away from the active monitor between its passes.
    database = make_url(postgres_url).database
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            f"ALTER DATABASE \"{database}\" SET idle_in_transaction_session_timeout = '200ms'"
        )
    engine = migrated_engine(postgres_url)
    completed_run(postgres_url, "export", utc_now() - timedelta(minutes=1))
    monitor = start_monitor(postgres_url)
    assert wait_active(monitor), f"the monitor never became active:\n{monitor.log}"

    checked: set[datetime] = set()

    def three_passes() -> bool:
        checked.add(service_rows(engine)["export"].health_checked_at)
        return len(checked - {None}) >= 3

    assert wait_until(three_passes, STARTUP_DEADLINE), f"fewer than 3 passes:\n{monitor.log}"
    assert "lost the monitor lock" not in monitor.log, f"the lock was lost:\n{monitor.log}"
    assert monitor.log.count(ACTIVE) == 1, f"the monitor became active again:\n{monitor.log}"


# Signals


def test_sigterm_sigint_stop_monitor(
    database_url: str, start_monitor: Callable[..., MonitorProcess]
) -> None:
    migrated_engine(database_url)
    for signum in (signal.SIGTERM, signal.SIGINT):
        name = signal.Signals(signum).name
        # The second monitor can only become active if the first released the lock.
        monitor = start_monitor(database_url)
        assert wait_active(monitor), f"the monitor for {name} never became active:\n{monitor.log}"

        monitor.send(signum)
        exit_code = monitor.wait_exit()

        log = monitor.log
        assert exit_code == 0, f"{name}: exit code {exit_code}:\n{log}"
        assert f"received {name}; stopping" in log, f"{name} not logged:\n{log}"
        assert log.rstrip().endswith(STOPPED), f"{name}: last line is not {STOPPED!r}:\n{log}"
        assert "Traceback" not in log, f"{name}: traceback:\n{log}"


def test_sighup_resyncs_config(
    database_url: str, tmp_path: Path, start_monitor: Callable[..., MonitorProcess]
) -> None:
    engine = migrated_engine(database_url)
    config = tmp_path / "cronledger.toml"
    write_config(config, {"flow-sync": 'schedule = "*/5 * * * *"\ngrace = "2m"'})
    monitor = start_monitor(database_url, "--config", str(config))
    assert wait_active(monitor), f"the monitor never became active:\n{monitor.log}"
    assert "flow-sync" in service_rows(engine), "the monitor did not sync at start"

    write_config(
        config,
        {
            "flow-sync": 'schedule = "*/5 * * * *"\ngrace = "3m"',
            "heartbeat": 'interval = "30s"',
        },
    )
    monitor.send(signal.SIGHUP)

    def synced() -> bool:
        rows = service_rows(engine)
        return "heartbeat" in rows and rows["flow-sync"].grace_seconds == 180

    assert wait_until(synced, TAKEOVER_DEADLINE), f"SIGHUP did not re-sync:\n{monitor.log}"
    heartbeat = service_rows(engine)["heartbeat"]
    assert heartbeat.settings_source == "config", f"settings_source {heartbeat.settings_source!r}"
    assert heartbeat.interval_seconds == 30, f"interval_seconds {heartbeat.interval_seconds}"
    assert "received SIGHUP; reloading the config file" in monitor.log, monitor.log

    # An invalid edit is logged and changes nothing, and the monitor keeps running.
    config.write_text('[services.flow-sync]\ngrace = "-1m"\n', encoding="utf-8")
    monitor.send(signal.SIGHUP)
    rejected = wait_until(lambda: "config not reloaded" in monitor.log, TAKEOVER_DEADLINE)
    assert rejected, f"the invalid config was not reported:\n{monitor.log}"
    assert 'services.flow-sync.grace = "-1m" is invalid' in monitor.log, monitor.log
    assert service_rows(engine)["flow-sync"].grace_seconds == 180, "an invalid file was synced"
    assert monitor.process.poll() is None, f"an invalid config stopped the monitor:\n{monitor.log}"

    monitor.send(signal.SIGTERM)
    assert monitor.wait_exit() == 0, f"exit after SIGHUP:\n{monitor.log}"


def test_sighup_during_passes_no_deadlock(
    postgres_url: str, tmp_path: Path, start_monitor: Callable[..., MonitorProcess]
) -> None:
    # Each pass holds a row lock of cron_services while it updates a
    # service's health. A sync started inside the signal handler, on the
    # thread that holds that lock, would wait for it forever.
    engine = migrated_engine(postgres_url)
    config = tmp_path / "cronledger.toml"
    names = [f"job-{index:02d}" for index in range(60)]

    def write_grace(grace: str) -> None:
        write_config(config, {name: f'interval = "1h"\ngrace = "{grace}"' for name in names})

    write_grace("1m")
    monitor = start_monitor(postgres_url, "--config", str(config))
    assert wait_active(monitor), f"the monitor never became active:\n{monitor.log}"

    for round_number in range(12):
        write_grace("2m" if round_number % 2 == 0 else "3m")
        monitor.send(signal.SIGHUP)
        time.sleep(0.3)
    hups_sent_at = utc_now()

    def settled() -> bool:
        rows = service_rows(engine)
        graces = {rows[name].grace_seconds for name in names}
        newest_check = max(row.health_checked_at or hups_sent_at for row in rows.values())
        return graces == {180} and newest_check > hups_sent_at

    assert wait_until(settled, TAKEOVER_DEADLINE), f"the monitor hung after SIGHUP:\n{monitor.log}"
    monitor.send(signal.SIGTERM)
    assert monitor.wait_exit() == 0, f"exit after the SIGHUPs:\n{monitor.log[-2000:]}"


# --once


def test_monitor_once_prints_states(database_url: str, tmp_path: Path) -> None:
    engine = migrated_engine(database_url)
    config = tmp_path / "cronledger.toml"
    write_config(
        config,
        {
            "flow-sync": 'interval = "1h"',
            "export": 'max_runtime = "1h"',
            "new-job": 'interval = "1h"',
        },
    )
    now = utc_now()
    completed_run(database_url, "flow-sync", now - timedelta(minutes=1))
    stuck = start_run(database_url, "export", now - timedelta(hours=2))
    with engine.connect() as connection:
        query = select(cron_executions.c.id).where(cron_executions.c.run_key == stuck.run_key)
        stuck_id = connection.execute(query).scalar_one()

    result = subprocess.run(
        [CRONLEDGER, "--database-url", database_url, "--config", str(config), "monitor", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )

    assert result.returncode == 0, f"exit code {result.returncode}: {result.stderr}"
    lines = result.stdout.splitlines()
    expected_starts = [
        "export  [stuck]  ",
        "flow-sync  [healthy]  last run completed at ",
        "new-job  [never_run]  no run recorded yet",
        f"timed out run {stuck_id}",
    ]
    assert len(lines) == len(expected_starts), f"expected 4 lines:\n{result.stdout}"
    for line, start in zip(lines, expected_starts, strict=True):
        assert line.startswith(start), f"line {line!r} does not start with {start!r}"
    assert f"run {stuck_id} has been running for 2 h" in lines[0], lines[0]
    assert "over its max runtime of 1 h" in lines[0], lines[0]
    with engine.connect() as connection:
        query = select(cron_executions.c.status).where(cron_executions.c.id == stuck_id)
        status = connection.execute(query).scalar_one()
    assert status == "timed_out", f"--once left the stuck run {status!r}"
