"""Measure how close to its fire time the scheduler starts 200 jobs that fire together.

The benchmark writes a cronledger.toml with ``--jobs`` services (default 200)
on one schedule, so every fire time starts all of them in the same second.
It runs ``cronledger scheduler`` as a subprocess for ``--rounds`` fire times,
stops it with SIGTERM, and reads two delays from the database:

- recorded delay: ``cron_executions.execution_time`` minus the claim's
  ``scheduled_at``, that is the start that the run record shows;
- process delay: the first thing each job does is print ``date +%s.%N``, so
  its stored output minus ``scheduled_at`` is when the command itself ran.

The default schedule is ``interval = "10s"``, which puts 200 fire times in
one second every 10 seconds; ``--schedule "* * * * *"`` uses a cron
schedule instead (one round per minute). The database is a fresh SQLite
file unless ``--database-url`` names an empty PostgreSQL database::

    python benchmarks/scheduler_accuracy.py --jobs 200 --rounds 5

The target is every start within 1 second of its fire time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cronledger.store.engine import get_engine
from cronledger.store.migrate import ensure_schema
from cronledger.store.tables import cron_executions, cron_fire_claims

TARGET_SECONDS = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="services that fire together")
    parser.add_argument("--rounds", type=int, default=5, help="fire times to measure")
    parser.add_argument("--interval", default="10s", help='interval of every job, such as "10s"')
    parser.add_argument("--schedule", help='a cron expression instead, such as "* * * * *"')
    parser.add_argument("--database-url", help="an empty PostgreSQL database; default: SQLite")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cronledger-bench-") as directory:
        folder = Path(directory)
        database_url = arguments.database_url or f"sqlite:///{folder / 'bench.db'}"
        ensure_schema(get_engine(database_url))
        write_config(folder, arguments.jobs, arguments.interval, arguments.schedule)
        run_scheduler(folder, database_url, arguments.jobs * arguments.rounds)
        result = measure(database_url)

    result["machine"] = machine(database_url)
    result["settings"] = {
        "jobs": arguments.jobs,
        "rounds": arguments.rounds,
        "schedule": arguments.schedule or f"interval {arguments.interval}",
    }
    if arguments.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)


def write_config(folder: Path, jobs: int, interval: str, schedule: str | None) -> None:
    timing = (
        f"schedule = {json.dumps(schedule)}" if schedule else f"interval = {json.dumps(interval)}"
    )
    tables = [
        f'[services.job-{index:03d}]\n{timing}\ncommand = ["date", "+%s.%N"]\n'
        for index in range(jobs)
    ]
    (folder / "cronledger.toml").write_text("\n".join(tables), encoding="utf-8")


def run_scheduler(folder: Path, database_url: str, expected_runs: int) -> None:
    """Run the scheduler until ``expected_runs`` runs finished, then stop it."""
    cronledger = Path(sys.executable).with_name("cronledger")
    log_path = folder / "scheduler.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(cronledger), "--database-url", database_url, "scheduler"],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        engine = get_engine(database_url)
        while process.poll() is None:
            with engine.connect() as connection:
                done = connection.execute(
                    select(cron_executions.c.id).where(cron_executions.c.status != "started")
                ).all()
            if len(done) >= expected_runs:
                break
            time.sleep(1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    if process.returncode != 0:
        sys.exit(f"the scheduler failed:\n{log_path.read_text()[-3000:]}")


def measure(database_url: str) -> dict[str, Any]:
    claims = cron_fire_claims.c
    runs = cron_executions.c
    with get_engine(database_url).connect() as connection:
        rows = connection.execute(
            select(claims.scheduled_at, runs.execution_time, runs.output_tail, runs.status).join(
                cron_executions, runs.run_key == claims.run_key
            )
        ).all()

    recorded = [(row.execution_time - row.scheduled_at).total_seconds() for row in rows]
    process = [
        float(row.output_tail) - row.scheduled_at.timestamp()
        for row in rows
        if row.output_tail and row.status == "completed"
    ]
    fire_times = sorted({row.scheduled_at for row in rows})
    per_fire_time = {
        fire.isoformat(): summary(
            [
                (row.execution_time - row.scheduled_at).total_seconds()
                for row in rows
                if row.scheduled_at == fire
            ]
        )["max"]
        for fire in fire_times
    }
    return {
        "runs": len(rows),
        "fire_times": len(fire_times),
        "max_recorded_delay_per_fire_time_s": per_fire_time,
        "recorded_delay_s": summary(recorded),
        "process_delay_s": summary(process),
        "over_target": sum(1 for delay in process if delay > TARGET_SECONDS),
    }


def summary(delays: list[float]) -> dict[str, float]:
    if not delays:
        return {}
    ordered = sorted(delays)
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
        "min": ordered[0],
    }


def machine(database_url: str) -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    database = "SQLite " + __import__("sqlite3").sqlite_version
    if database_url.startswith("postgresql"):
        with get_engine(database_url).connect() as connection:
            database = str(connection.exec_driver_sql("SHOW server_version").scalar())
            database = f"PostgreSQL {database}"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "cronledger": metadata.version("cronledger"),
        "database": database,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        # Other work on the machine competes for the same cores.
        "load_average_1m": f"{os.getloadavg()[0]:.2f}",
    }


def print_report(result: dict[str, Any]) -> None:
    settings = result["settings"]
    print(f"{settings['jobs']} jobs, {settings['schedule']}, {result['fire_times']} fire times")
    print(f"runs measured: {result['runs']}")
    for label, key in (
        ("recorded start", "recorded_delay_s"),
        ("process start", "process_delay_s"),
    ):
        values = result[key]
        print(
            f"{label:15} delay: p50 {values['p50'] * 1000:.0f} ms, "
            f"p95 {values['p95'] * 1000:.0f} ms, max {values['max'] * 1000:.0f} ms"
        )
    print(f"starts later than {TARGET_SECONDS:g} s: {result['over_target']}")
    for fire, delay in result["max_recorded_delay_per_fire_time_s"].items():
        print(f"  fire time {fire}: max recorded delay {delay * 1000:.0f} ms")
    print("machine: " + ", ".join(f"{key} {value}" for key, value in result["machine"].items()))


if __name__ == "__main__":
    main()
