"""``cronledger scheduler`` and ``cronledger up`` as real processes, on real time.

Each test writes a cronledger.toml with per-second or two-second schedules,
starts the installed console script, and reads the runs it recorded from
the database and its log from a file. Tests wait for a row or a log line
with a generous deadline and return as soon as it appears. No test asserts
how fast anything happened.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cronledger.recorder import utc_now
from cronledger.schedule import IntervalSchedule
from cronledger.scheduler.planner import next_fire_after
from cronledger.store.engine import dispose_engines, get_engine
from cronledger.store.migrate import ensure_schema
from cronledger.store.tables import (
    cron_executions,
    cron_fire_claims,
    cron_services,
    cron_skipped_runs,
)
from tests.commands import CRONLEDGER
from tests.pgserver import PostgresServer

pytestmark = pytest.mark.timeout(180)

# Generous deadlines for a loaded machine; the tests poll and return early.
DEADLINE = 60.0
STARTED = "scheduler started"
STOPPED = "scheduler stopped"


class SchedulerProcess:
    """One ``cronledger scheduler`` (or ``up``) process with its output in files."""

    def __init__(
        self,
        directory: Path,
        database_url: str | None,
        command: str = "scheduler",
        config: Path | None = None,
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        self.stdout_path = directory / f"{command}-{tag}.out"
        self.stderr_path = directory / f"{command}-{tag}.log"
        argv = [CRONLEDGER]
        if database_url is not None:
            argv += ["--database-url", database_url]
        if config is not None:
            argv += ["--config", str(config)]
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                # Port 0: the dashboard of `up` takes a free port.
                [*argv, command, *(["--port", "0"] if command == "up" else [])],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=directory,
            )

    @property
    def log(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    @property
    def output(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, text: str, deadline: float = DEADLINE) -> None:
        wait_until(lambda: text in self.log, f"{text!r} in the log", deadline, self)

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = DEADLINE) -> int:
        """Send SIGTERM and return the exit status."""
        self.send(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def wait_until(
    condition: Callable[[], bool],
    what: str,
    deadline: float = DEADLINE,
    process: SchedulerProcess | None = None,
) -> None:
    """Poll ``condition`` until it holds; fail with the process log after ``deadline`` s."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return
        if process is not None and process.process.poll() is not None:
            pytest.fail(f"the process exited before {what}; log:\n{process.log}")
        time.sleep(0.1)
    log = process.log if process is not None else ""
    pytest.fail(f"no {what} within {deadline} s; log:\n{log}")


@pytest.fixture
def start_scheduler(tmp_path: Path) -> Iterator[Callable[..., SchedulerProcess]]:
    """Start scheduler processes in tmp_path; kill those still running at the end."""
    started: list[SchedulerProcess] = []

    def start(
        database_url: str | None, command: str = "scheduler", config: Path | None = None
    ) -> SchedulerProcess:
        if database_url is not None:
            # The test reads the tables at once, before the process creates them.
            ensure_schema(get_engine(database_url))
        process = SchedulerProcess(tmp_path, database_url, command, config)
        started.append(process)
        return process

    yield start
    for item in started:
        if item.process.poll() is None:
            item.process.kill()
            item.process.wait()


def write_config(directory: Path, text: str) -> Path:
    path = directory / "cronledger.toml"
    path.write_text(text, encoding="utf-8")
    return path


def runs(database_url: str, service: str) -> list[Any]:
    """Return the recorded runs of ``service``, oldest first."""
    runs_table = cron_executions.c
    with get_engine(database_url).connect() as connection:
        return list(
            connection.execute(
                select(cron_executions)
                .where(runs_table.service_name == service)
                .order_by(runs_table.execution_time)
            ).all()
        )


def finished_runs(database_url: str, service: str) -> list[Any]:
    return [row for row in runs(database_url, service) if row.status != "started"]


def claims(database_url: str, service: str) -> list[Any]:
    table = cron_fire_claims.c
    with get_engine(database_url).connect() as connection:
        return list(
            connection.execute(
                select(cron_fire_claims)
                .where(table.service_name == service)
                .order_by(table.scheduled_at)
            ).all()
        )


def skipped(database_url: str, service: str) -> list[Any]:
    with get_engine(database_url).connect() as connection:
        return list(
            connection.execute(
                select(cron_skipped_runs).where(cron_skipped_runs.c.service_name == service)
            ).all()
        )


def process_gone(pid: int) -> bool:
    """Return True when ``pid`` has exited; an unreaped zombie counts as exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# Overlap.


def test_overlap_skip_and_allow(
    tmp_path: Path, sqlite_url: str, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    write_config(
        tmp_path,
        """
[services.skipper]
interval = "1s"
command = ["sleep", "2.5"]

[services.allower]
interval = "1s"
command = ["sleep", "2.5"]
overlap = "allow"
""",
    )
    scheduler = start_scheduler(sqlite_url)

    wait_until(lambda: len(finished_runs(sqlite_url, "skipper")) >= 2, "2 skipper runs")
    wait_until(lambda: len(finished_runs(sqlite_url, "allower")) >= 4, "4 allower runs")
    assert scheduler.stop() == 0

    skipper_runs = finished_runs(sqlite_url, "skipper")
    for earlier, later in itertools.pairwise(skipper_runs):
        assert later.execution_time >= earlier.finished_at, "two skipper runs overlapped"
    skipper_skips = skipped(sqlite_url, "skipper")
    assert len(skipper_skips) >= 2, "no skipped fire time recorded"
    skipped_at = {row.scheduled_at for row in skipper_skips}
    run_fires = {row.scheduled_at for row in claims(sqlite_url, "skipper") if row.outcome == "run"}
    assert not skipped_at & run_fires, "a fire time was both run and skipped"
    assert "skipper: skipped the fire time" in scheduler.log

    allower_runs = finished_runs(sqlite_url, "allower")
    overlapping = [
        (earlier, later)
        for earlier, later in itertools.pairwise(allower_runs)
        if later.execution_time < earlier.finished_at
    ]
    assert overlapping, "overlap = allow never ran two runs at once"
    assert skipped(sqlite_url, "allower") == []
    assert all(row.status == "completed" for row in skipper_runs + allower_runs)


# Catch-up after downtime.


def test_catch_up_after_downtime(
    tmp_path: Path, sqlite_url: str, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    write_config(
        tmp_path,
        """
[services.tick]
interval = "2s"
grace = "1m"
command = ["true"]
""",
    )
    every = IntervalSchedule(timedelta(seconds=2))
    first = start_scheduler(sqlite_url)
    wait_until(lambda: len(finished_runs(sqlite_url, "tick")) >= 1, "a first run", process=first)
    assert first.stop() == 0
    last_before = claims(sqlite_url, "tick")[-1].scheduled_at

    # Down for at least three fire times.
    time.sleep(6.5)
    second = start_scheduler(sqlite_url)
    second.wait_log("catch-up run")

    def catch_up_finished() -> bool:
        after = [row for row in claims(sqlite_url, "tick") if row.scheduled_at > last_before]
        statuses = {row.run_key: row.status for row in runs(sqlite_url, "tick")}
        return bool(after) and statuses.get(after[0].run_key, "started") != "started"

    wait_until(catch_up_finished, "the catch-up run to finish", process=second)
    assert second.stop() == 0

    after = [row for row in claims(sqlite_url, "tick") if row.scheduled_at > last_before]
    catch_up = after[0]
    missed = []
    fire = next_fire_after(every, last_before)
    while fire < catch_up.scheduled_at:
        missed.append(fire)
        fire = next_fire_after(every, fire)
    assert len(missed) >= 2, f"expected missed fire times before {catch_up.scheduled_at}"
    assert second.log.count("catch-up run") == 1
    assert f"missed fire time {catch_up.scheduled_at.isoformat(timespec='seconds')}" in second.log
    started_at = {row.run_key: row.execution_time for row in runs(sqlite_url, "tick")}
    assert started_at[catch_up.run_key] > catch_up.scheduled_at


def test_no_catch_up_past_grace(
    tmp_path: Path, sqlite_url: str, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    write_config(
        tmp_path,
        """
[services.tick]
interval = "2s"
grace = "0s"
command = ["true"]
""",
    )
    first = start_scheduler(sqlite_url)
    wait_until(lambda: len(finished_runs(sqlite_url, "tick")) >= 1, "a first run", process=first)
    assert first.stop() == 0
    claims_before = len(claims(sqlite_url, "tick"))

    time.sleep(4.5)
    spawned = utc_now()
    second = start_scheduler(sqlite_url)
    second.wait_log(STARTED)
    second.wait_log("no catch-up run")
    assert second.stop() == 0

    assert "catch-up run for" not in second.log
    # Regular fire times may have come before the stop, all after the start.
    after = claims(sqlite_url, "tick")[claims_before:]
    assert all(row.scheduled_at > spawned for row in after), [row.scheduled_at for row in after]


# Timeouts.


def test_timeout_kills_process_group(
    tmp_path: Path, sqlite_url: str, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    write_config(
        tmp_path,
        """
[scheduler]
kill_delay = "1s"

[services.stubborn]
interval = "2s"
timeout = "1s"
command = "trap '' TERM; echo $$ > shell.pid; sleep 60 & echo $! > child.pid; wait"
shell = true
""",
    )
    scheduler = start_scheduler(sqlite_url)

    wait_until(lambda: len(finished_runs(sqlite_url, "stubborn")) >= 1, "a timed out run")
    assert scheduler.stop() == 0

    run = finished_runs(sqlite_url, "stubborn")[0]
    assert run.status == "timed_out"
    assert run.exit_code == 128 + signal.SIGKILL
    assert "timed out after 1 s" in run.error_message
    assert "SIGTERM, then SIGKILL" in run.error_message
    shell_pid = int((tmp_path / "shell.pid").read_text())
    child_pid = int((tmp_path / "child.pid").read_text())
    wait_until(lambda: process_gone(shell_pid), f"exit of the shell {shell_pid}")
    wait_until(lambda: process_gone(child_pid), f"exit of its child {child_pid}")


def test_timeout_of_async_callable(
    tmp_path: Path, sqlite_url: str, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    (tmp_path / "hanging.py").write_text(
        "import asyncio\n\nasync def wait_forever():\n    await asyncio.sleep(3600)\n"
    )
    write_config(
        tmp_path,
        """
[services.hang]
interval = "2s"
timeout = "1s"
callable = "hanging:wait_forever"
""",
    )
    scheduler = start_scheduler(sqlite_url)

    wait_until(lambda: len(finished_runs(sqlite_url, "hang")) >= 1, "a timed out run")
    assert scheduler.stop() == 0

    run = finished_runs(sqlite_url, "hang")[0]
    assert run.status == "timed_out"
    assert run.error_message == "timed out after 1 s"


# Stopping.


def test_sigterm_waits_for_running_job(
    tmp_path: Path, sqlite_url: str, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    write_config(
        tmp_path,
        """
[scheduler]
stop_timeout = "1m"

[services.slow]
interval = "2s"
command = ["sh", "-c", "sleep 3; echo finished"]
""",
    )
    scheduler = start_scheduler(sqlite_url)
    wait_until(
        lambda: any(row.status == "started" for row in runs(sqlite_url, "slow")),
        "a started run",
        process=scheduler,
    )

    assert scheduler.stop() == 0

    recorded = runs(sqlite_url, "slow")
    assert recorded, "no run recorded"
    assert all(row.status == "completed" for row in recorded), [row.status for row in recorded]
    assert all("finished" in row.output_tail for row in recorded)
    assert "stopping: no new runs; waiting up to 60 s" in scheduler.log
    assert STOPPED in scheduler.log
    ran = [row for row in claims(sqlite_url, "slow") if row.outcome == "run"]
    assert len(ran) == len(recorded), "a claimed fire time has no run"
    assert all(row.finished_at is not None for row in ran)


def test_stop_timeout_ends_job_failed(
    tmp_path: Path, sqlite_url: str, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    write_config(
        tmp_path,
        """
[scheduler]
stop_timeout = "1s"
kill_delay = "2s"

[services.endless]
interval = "2s"
command = ["sleep", "600"]
""",
    )
    scheduler = start_scheduler(sqlite_url)
    wait_until(
        lambda: any(row.status == "started" for row in runs(sqlite_url, "endless")),
        "a started run",
        process=scheduler,
    )

    assert scheduler.stop() == 0

    recorded = runs(sqlite_url, "endless")
    assert [row.status for row in recorded] == ["failed"]
    assert recorded[0].error_message.startswith("stopped by the scheduler's shutdown")
    assert recorded[0].exit_code == 128 + signal.SIGTERM
    assert "stop timeout passed; ending 1 running jobs (endless)" in scheduler.log


# Reload.


def test_sighup_reloads_config(
    tmp_path: Path, sqlite_url: str, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    config = write_config(tmp_path, '[services.old-job]\ninterval = "1s"\ncommand = ["true"]\n')
    scheduler = start_scheduler(sqlite_url)
    wait_until(lambda: len(finished_runs(sqlite_url, "old-job")) >= 1, "an old-job run")

    config.write_text(
        '[services.new-job]\ninterval = "1s"\ncommand = ["true"]\n'
        '[services.watched]\nschedule = "@daily"\n',
        encoding="utf-8",
    )
    scheduler.send(signal.SIGHUP)
    scheduler.wait_log("reload: service old-job removed")
    old_claims = len(claims(sqlite_url, "old-job"))
    wait_until(lambda: len(finished_runs(sqlite_url, "new-job")) >= 3, "3 new-job runs")

    assert len(claims(sqlite_url, "old-job")) == old_claims, "old-job ran after the reload"
    assert "reload: job new-job added" in scheduler.log
    assert "reload: service watched added" in scheduler.log
    with get_engine(sqlite_url).connect() as connection:
        names = set(connection.execute(select(cron_services.c.name)).scalars())
    assert {"new-job", "watched"} <= names, "the reload did not sync the services"

    config.write_text(
        '[services.new-job]\ninterval = "1s"\ncommand = "echo"\n[services.x]\ngrace = "soon"\n',
        encoding="utf-8",
    )
    scheduler.send(signal.SIGHUP)
    scheduler.wait_log("services.x.grace")
    new_runs = len(finished_runs(sqlite_url, "new-job"))
    wait_until(
        lambda: len(finished_runs(sqlite_url, "new-job")) >= new_runs + 2,
        "new-job runs after a rejected reload",
        process=scheduler,
    )
    assert scheduler.stop() == 0

    rejected = [line for line in scheduler.log.splitlines() if "config not reloaded" in line]
    assert len(rejected) == 2, rejected
    assert any("services.new-job.command" in line for line in rejected)
    assert any('services.x.grace = "soon"' in line for line in rejected)


# Python callables.


def test_python_callables(
    tmp_path: Path, sqlite_url: str, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    (tmp_path / "jobs.py").write_text(
        "import asyncio\n"
        "\n"
        "def count_sync():\n"
        "    return 5\n"
        "\n"
        "async def count_async():\n"
        "    await asyncio.sleep(0.1)\n"
        "    return 7\n"
        "\n"
        "def broken():\n"
        "    raise ValueError('the feed is empty')\n"
    )
    write_config(
        tmp_path,
        """
[services.sync-fn]
interval = "1s"
callable = "jobs:count_sync"

[services.async-fn]
interval = "1s"
callable = "jobs:count_async"

[services.broken-fn]
interval = "1s"
callable = "jobs:broken"

[services.missing-fn]
interval = "1s"
callable = "jobs:not_there"
""",
    )
    scheduler = start_scheduler(sqlite_url)

    for service in ("sync-fn", "async-fn", "broken-fn", "missing-fn"):
        wait_until(lambda service=service: len(finished_runs(sqlite_url, service)) >= 2, service)
    assert scheduler.stop() == 0

    assert {(row.status, row.items_processed) for row in finished_runs(sqlite_url, "sync-fn")} == {
        ("completed", 5)
    }
    assert {(row.status, row.items_processed) for row in finished_runs(sqlite_url, "async-fn")} == {
        ("completed", 7)
    }
    broken = finished_runs(sqlite_url, "broken-fn")[0]
    assert broken.status == "failed"
    assert broken.error_message.startswith("ValueError: the feed is empty")
    assert "Traceback" in broken.error_message
    missing = finished_runs(sqlite_url, "missing-fn")[0]
    assert missing.status == "failed"
    assert "cannot load jobs:not_there" in missing.error_message


# Commands.


def test_failing_and_missing_commands(
    tmp_path: Path, sqlite_url: str, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    (tmp_path / "work").mkdir()
    write_config(
        tmp_path,
        """
[services.failing]
interval = "1s"
command = ["sh", "-c", "echo 'disk full' >&2; exit 3"]

[services.missing]
interval = "1s"
command = ["/nonexistent/bin/job"]

[services.located]
interval = "1s"
command = "pwd; echo $GREETING; echo 4 > $CRONLEDGER_ITEMS_FILE"
shell = true
working_dir = "work"
environment = { GREETING = "hello from the config" }
""",
    )
    scheduler = start_scheduler(sqlite_url)

    for service in ("failing", "missing", "located"):
        wait_until(lambda service=service: len(finished_runs(sqlite_url, service)) >= 1, service)
    assert scheduler.stop() == 0

    failing = finished_runs(sqlite_url, "failing")[0]
    assert failing.status == "failed"
    assert failing.exit_code == 3
    assert failing.error_message == "exited with status 3\ndisk full"
    missing = finished_runs(sqlite_url, "missing")[0]
    assert missing.status == "failed"
    assert missing.exit_code == 127
    assert missing.error_message == "command not found: /nonexistent/bin/job"
    located = finished_runs(sqlite_url, "located")[0]
    assert located.status == "completed"
    assert located.items_processed == 4
    assert str((tmp_path / "work").resolve()) in located.output_tail
    assert "hello from the config" in located.output_tail


def test_run_on_postgresql(
    tmp_path: Path, postgres_url: str, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    write_config(
        tmp_path,
        """
[services.pg-job]
interval = "1s"
command = ["sh", "-c", "echo 2 > $CRONLEDGER_ITEMS_FILE"]
""",
    )
    scheduler = start_scheduler(postgres_url)

    wait_until(lambda: len(finished_runs(postgres_url, "pg-job")) >= 2, "2 runs")
    assert scheduler.stop() == 0

    recorded = finished_runs(postgres_url, "pg-job")
    by_key = {row.run_key: row for row in claims(postgres_url, "pg-job")}
    for row in recorded:
        assert row.status == "completed"
        assert row.items_processed == 2
        assert row.execution_time >= by_key[row.run_key].scheduled_at


def test_postgresql_outage_runs_nothing(
    tmp_path: Path,
    private_postgres: PostgresServer,
    start_scheduler: Callable[..., SchedulerProcess],
) -> None:
    database_url = private_postgres.url
    write_config(tmp_path, '[services.tick]\ninterval = "1s"\ncommand = ["true"]\n')
    scheduler = start_scheduler(database_url)
    wait_until(lambda: len(finished_runs(database_url, "tick")) >= 2, "2 runs", process=scheduler)

    private_postgres.stop("immediate")
    scheduler.wait_log("due fire times not run since the last report")
    dispose_engines()
    private_postgres.start()
    runs_after_outage = len(finished_runs(database_url, "tick"))
    wait_until(
        lambda: len(finished_runs(database_url, "tick")) >= runs_after_outage + 2,
        "runs after the outage",
        process=scheduler,
    )
    assert scheduler.stop() == 0

    claimed = {row.run_key for row in claims(database_url, "tick")}
    unclaimed = [row.run_key for row in runs(database_url, "tick") if row.run_key not in claimed]
    assert unclaimed == [], "a run started without a claim during the outage"
    assert scheduler.log.count("due fire times not run") == 1, "the outage error was not limited"


# One scheduler per SQLite file.


def test_second_sqlite_scheduler_rejected(
    tmp_path: Path, sqlite_url: str, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    write_config(tmp_path, '[services.tick]\ninterval = "1s"\ncommand = ["true"]\n')
    first = start_scheduler(sqlite_url)
    first.wait_log(STARTED)

    second = start_scheduler(sqlite_url)
    status = second.process.wait(timeout=DEADLINE)

    assert status == 1
    assert f"another scheduler (process {first.process.pid}) is already running" in second.log
    assert "use PostgreSQL to run schedulers on several hosts" in second.log
    assert first.process.poll() is None, "the first scheduler stopped"
    assert first.stop() == 0


def test_scheduler_needs_config(tmp_path: Path, sqlite_url: str) -> None:
    result = subprocess.run(
        [CRONLEDGER, "--database-url", sqlite_url, "scheduler"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=DEADLINE,
        check=False,
        env={**os.environ, "CRONLEDGER_CONFIG": ""},
    )

    assert result.returncode == 2
    assert "no config file: create cronledger.toml" in result.stderr


# cronledger up.


def test_up_runs_scheduler_and_monitor(
    tmp_path: Path, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    write_config(
        tmp_path,
        """
[services.heartbeat]
interval = "1s"
command = ["true"]

[services.nightly-cron]
schedule = "30 2 * * *"
""",
    )
    up = start_scheduler(None, command="up")
    database_url = f"sqlite:///{tmp_path / 'cronledger.db'}"

    up.wait_log("this monitor is now active")
    wait_until(lambda: len(finished_runs(database_url, "heartbeat")) >= 2, "2 heartbeat runs")
    assert up.stop() == 0

    assert f"database   sqlite:///{tmp_path / 'cronledger.db'}" in up.output
    assert f"config     {tmp_path / 'cronledger.toml'}" in up.output
    assert "heartbeat  every second: true" in up.output
    assert "dashboard  http://127.0.0.1:" in up.output
    assert "watched    1 service run elsewhere: nightly-cron" in up.output
    assert STOPPED in up.log
    assert "monitor stopped" in up.log


def test_up_survives_a_burst_of_signals(
    tmp_path: Path, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    write_config(tmp_path, '[services.heartbeat]\ninterval = "1s"\ncommand = ["true"]\n')
    up = start_scheduler(None, command="up")
    up.wait_log("this monitor is now active")

    # A second signal inside the handling of the first once hung the process
    # for good: a handler waited for a lock its own thread held.
    end = time.monotonic() + 1.0
    while time.monotonic() < end and up.process.poll() is None:
        up.send(signal.SIGINT)
        time.sleep(0.0001)

    assert up.process.wait(timeout=DEADLINE) == 0, up.log
    assert "received SIGINT; stopping" in up.log
