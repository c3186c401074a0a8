"""Tests of the connector example in examples/connector, on SQLite and PostgreSQL.

The example is not part of the installed package, so it is imported from its
folder. Each work function runs against real tables with real rows, the
Python producers write real runs, and the crontab line runs through the real
``cronledger run`` subprocess.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, text

from cronledger import CronExecutionLogger, IntervalSchedule
from cronledger.scheduler.runner import resolve_callable
from cronledger.settings import load_config
from cronledger.store.engine import get_engine
from cronledger.store.tables import cron_executions
from tests.commands import CRONLEDGER, run_cli

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "connector"
sys.path.insert(0, str(EXAMPLE_DIR))
database = importlib.import_module("connector.database")
kodosumi = importlib.import_module("connector.kodosumi")
services = importlib.import_module("connector.services")
worker = importlib.import_module("connector.worker")

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

EXPECTED_SERVICES = {
    "authenticator": "API Key Sync",
    "flow-sync": "Flow Sync",
    "payment-checker": "Payment Checker",
    "kodosumi-starter": "Kodosumi Starter",
    "kodosumi-status": "Kodosumi Status",
}


@pytest.fixture(autouse=True)
def no_outage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The switch file lives in the example's folder, where a demo may have
    # left it; point the tests at a file of their own.
    monkeypatch.setattr(kodosumi, "OUTAGE_FILE", tmp_path / "OUTAGE")
    monkeypatch.delenv(kodosumi.ENV_OUTAGE, raising=False)
    monkeypatch.delenv(kodosumi.ENV_RUN_SECONDS, raising=False)


@pytest.fixture
def engine(database_url: str) -> Any:
    connector_engine = database.connect(database_url)
    yield connector_engine
    connector_engine.dispose()


def job_states(engine: Engine) -> dict[int, str]:
    with engine.connect() as connection:
        return dict(connection.execute(select(database.jobs.c.id, database.jobs.c.state)).all())


def paid_jobs(engine: Engine, count: int) -> list[int]:
    """Sync the flows, submit ``count`` jobs and pay all of them."""
    services.sync_flows(engine, NOW)
    job_ids: list[int] = services.submit_jobs(engine, count, NOW)
    services.pay_jobs(engine, None, NOW)
    return job_ids


def recorded_runs(database_url: str, service_name: str) -> list[Any]:
    columns = cron_executions.c
    query = (
        select(columns.status, columns.items_processed, columns.error_message)
        .where(columns.service_name == service_name)
        .order_by(columns.id)
    )
    with get_engine(database_url).connect() as connection:
        return list(connection.execute(query))


def test_tables_created_concurrently(database_url: str) -> None:
    # The scheduler starts several jobs at once, each creating the tables.
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def create() -> None:
        barrier.wait()
        try:
            database.connect(database_url).dispose()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(barrier.parties)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == [], f"concurrent table creation failed: {errors}"


# The work of each service.


def test_api_keys_created_then_idle(engine: Engine) -> None:
    first = services.sync_api_keys(engine, NOW)
    second = services.sync_api_keys(engine, NOW + timedelta(hours=10))

    assert first == len(services.API_KEY_NAMES), f"first run refreshed {first} keys"
    assert second == 0, f"a run 10 h later refreshed {second} keys"


def test_api_keys_refreshed_at_boundary(engine: Engine) -> None:
    services.sync_api_keys(engine, NOW)
    with engine.connect() as connection:
        keys_before = dict(
            connection.execute(select(database.api_keys.c.name, database.api_keys.c.api_key)).all()
        )
    boundary = NOW + services.API_KEY_LIFETIME - services.API_KEY_REFRESH_BEFORE

    before_boundary = services.sync_api_keys(engine, boundary - timedelta(seconds=1))
    at_boundary = services.sync_api_keys(engine, boundary)

    with engine.connect() as connection:
        keys_after = dict(
            connection.execute(select(database.api_keys.c.name, database.api_keys.c.api_key)).all()
        )
        expiries = set(connection.scalars(select(database.api_keys.c.expires_at)))
    assert before_boundary == 0, f"refreshed {before_boundary} keys 1 s before the boundary"
    assert at_boundary == len(services.API_KEY_NAMES), f"refreshed {at_boundary} at the boundary"
    for name, key in keys_after.items():
        assert key != keys_before[name], f"key {name} was counted but not replaced"
    assert expiries == {boundary + services.API_KEY_LIFETIME}, f"expiries: {expiries}"


def test_flow_sync_counts_changes(engine: Engine, tmp_path: Path) -> None:
    flows_file = tmp_path / "flows.json"
    flows_file.write_text((EXAMPLE_DIR / "flows.json").read_text())
    catalogue = services.load_flows(flows_file)

    first = services.sync_flows(engine, NOW, flows_file)
    unchanged = services.sync_flows(engine, NOW, flows_file)
    flows_file.write_text(
        '[{"id": "summarize", "name": "Summarize a document", "price_cents": 175},'
        ' {"id": "translate", "name": "Translate text",'
        ' "description": "Translates text between English, German and Spanish.",'
        ' "price_cents": 80},'
        ' {"id": "classify", "name": "Classify tickets", "price_cents": 20}]'
    )
    edited = services.sync_flows(engine, NOW, flows_file)

    with engine.connect() as connection:
        stored = dict(
            connection.execute(select(database.flows.c.id, database.flows.c.price_cents)).all()
        )
    assert first == len(catalogue) == 3, f"the first sync counted {first} flows"
    assert unchanged == 0, f"a sync of an unchanged catalogue counted {unchanged}"
    # summarize changed, market-scan removed, classify added; translate unchanged.
    assert edited == 3, f"the edited catalogue counted {edited} changes"
    assert stored == {"summarize": 175, "translate": 80, "classify": 20}, f"flows: {stored}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"id": "summarize"}', "expected a JSON list of flows"),
        ('[{"name": "No id", "price_cents": 1}]', 'flow 1: "id" must be a non-empty string'),
        ('[{"id": "a", "name": "A", "price_cents": -5}]', '"price_cents" must be a whole number'),
        (
            '[{"id": "a", "name": "A", "price_cents": 1}, {"id": "a", "name": "B", '
            '"price_cents": 2}]',
            "flow 2: duplicate id 'a'",
        ),
    ],
    ids=["syntax", "not-a-list", "missing-id", "negative-price", "duplicate-id"],
)
def test_flow_sync_rejects_invalid_catalogue(
    engine: Engine, tmp_path: Path, content: str, message: str
) -> None:
    flows_file = tmp_path / "flows.json"
    flows_file.write_text((EXAMPLE_DIR / "flows.json").read_text())
    services.sync_flows(engine, NOW, flows_file)
    flows_file.write_text(content)

    with pytest.raises(ValueError, match=r"flows\.json") as raised:
        services.sync_flows(engine, NOW, flows_file)

    assert message in str(raised.value), f"unexpected message: {raised.value}"
    with engine.connect() as connection:
        count = len(connection.execute(select(database.flows.c.id)).all())
    assert count == 3, f"an invalid catalogue changed the flows table: {count} rows"


def test_payment_checker_moves_paid_jobs(engine: Engine) -> None:
    services.sync_flows(engine, NOW)
    job_ids = services.submit_jobs(engine, 3, NOW)

    before_payment = services.check_payments(engine, NOW)
    paid = services.pay_jobs(engine, job_ids[:2], NOW)
    after_payment = services.check_payments(engine, NOW)
    idle = services.check_payments(engine, NOW)

    assert before_payment == 0, f"moved {before_payment} unpaid jobs"
    assert paid == 2, f"paid {paid} jobs"
    assert after_payment == 2, f"moved {after_payment} paid jobs"
    assert idle == 0, f"a run with nothing new moved {idle} jobs"
    states = job_states(engine)
    assert states == {
        job_ids[0]: database.RUNNING,
        job_ids[1]: database.RUNNING,
        job_ids[2]: database.AWAITING_PAYMENT,
    }, f"states: {states}"


def test_starter_and_status_complete_jobs(engine: Engine) -> None:
    job_ids = paid_jobs(engine, 2)
    services.check_payments(engine, NOW)

    started = services.start_jobs(engine, NOW)
    started_again = services.start_jobs(engine, NOW)
    completed = services.complete_jobs(engine, NOW)
    completed_again = services.complete_jobs(engine, NOW)

    assert started == 2, f"started {started} jobs"
    assert started_again == 0, f"started {started_again} jobs a second time"
    assert completed == 2, f"completed {completed} jobs"
    assert completed_again == 0, f"completed {completed_again} jobs a second time"
    assert job_states(engine) == dict.fromkeys(job_ids, database.COMPLETED)
    with engine.connect() as connection:
        run_ids = connection.scalars(select(database.jobs.c.kodosumi_run_id)).all()
    assert all(run_id and run_id.startswith("kd-") for run_id in run_ids), f"run ids: {run_ids}"


def test_status_waits_for_run_time(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kodosumi.ENV_RUN_SECONDS, "60")
    paid_jobs(engine, 1)
    services.check_payments(engine, NOW)
    services.start_jobs(engine, NOW)

    too_early = services.complete_jobs(engine, NOW + timedelta(seconds=59))
    on_time = services.complete_jobs(engine, NOW + timedelta(seconds=60))

    assert too_early == 0, "a job completed before its Kodosumi run time passed"
    assert on_time == 1, f"completed {on_time} jobs once the run time passed"


def test_starter_outage_raises_refused(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    job_ids = paid_jobs(engine, 1)
    services.check_payments(engine, NOW)
    monkeypatch.setenv(kodosumi.ENV_OUTAGE, "1")

    with pytest.raises(kodosumi.KodosumiUnavailable) as raised:
        services.start_jobs(engine, NOW)

    assert str(raised.value).startswith("connection refused by kodosumi at 127.0.0.1:"), (
        f"unexpected message: {raised.value}"
    )
    assert isinstance(raised.value.__cause__, ConnectionRefusedError), (
        f"not caused by a refused connection: {raised.value.__cause__!r}"
    )
    assert job_states(engine) == {job_ids[0]: database.RUNNING}, "a job moved during the outage"
    monkeypatch.delenv(kodosumi.ENV_OUTAGE)
    assert services.start_jobs(engine, NOW) == 1, "the job did not start after the outage"


def test_outage_file_switch(tmp_path: Path) -> None:
    switch = tmp_path / "OUTAGE"

    assert not kodosumi.outage_active(switch), "outage on without the file"
    switch.touch()
    assert kodosumi.outage_active(switch), "outage off although the file exists"


def test_submit_without_flows_rejected(engine: Engine) -> None:
    with pytest.raises(ValueError, match="no flows yet"):
        services.submit_jobs(engine, 1, NOW)


def test_pay_unknown_job_rejected(engine: Engine) -> None:
    job_ids = paid_jobs(engine, 1)
    services.sync_flows(engine, NOW)
    pending = services.submit_jobs(engine, 1, NOW)

    with pytest.raises(ValueError, match=r"job 999 not found"):
        services.pay_jobs(engine, [pending[0], 999], NOW)

    with engine.connect() as connection:
        statuses = dict(
            connection.execute(select(database.payments.c.job_id, database.payments.c.status)).all()
        )
    assert statuses == {job_ids[0]: "paid", pending[0]: "pending"}, f"payments: {statuses}"


# The Python producers of the worker.


async def test_payment_checker_logger_records(database_url: str, engine: Engine) -> None:
    paid_jobs(engine, 2)
    cron_logger = CronExecutionLogger("payment-checker", database_url)

    moved = await worker.check_payments_once(cron_logger, engine)
    idle = await worker.check_payments_once(cron_logger, engine)

    assert moved == 2, f"the first run moved {moved} jobs"
    assert idle == 0, f"the second run moved {idle} jobs"
    runs = recorded_runs(database_url, "payment-checker")
    assert [tuple(run) for run in runs] == [
        ("completed", 2, None),
        ("completed", 0, None),
    ], f"recorded runs: {runs}"


async def test_status_tracked_records_outage(
    database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    paid_jobs(engine, 1)
    services.check_payments(engine, NOW)
    services.start_jobs(engine, NOW)
    check_job_status = worker.status_check(engine, database_url)

    monkeypatch.setenv(kodosumi.ENV_OUTAGE, "1")
    with pytest.raises(kodosumi.KodosumiUnavailable):
        await check_job_status()
    monkeypatch.delenv(kodosumi.ENV_OUTAGE)
    completed = await check_job_status()
    idle = await check_job_status()

    assert (completed, idle) == (1, 0), f"items returned: {completed}, {idle}"
    runs = recorded_runs(database_url, "kodosumi-status")
    assert [run.status for run in runs] == ["failed", "completed", "completed"], f"runs: {runs}"
    assert [run.items_processed for run in runs] == [0, 1, 0], f"runs: {runs}"
    assert runs[0].error_message.startswith(
        "KodosumiUnavailable: connection refused by kodosumi at 127.0.0.1:"
    ), f"error message: {runs[0].error_message!r}"


def test_worker_once_subprocess(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "CRONLEDGER_DATABASE_URL": database_url}

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "connector",
            "worker",
            "--once",
            "--config",
            str(EXAMPLE_DIR / "cronledger.fast.toml"),
        ],
        cwd=EXAMPLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, f"worker exited {result.returncode}: {result.stderr}"
    for service_name in worker.WORKER_SERVICES:
        runs = recorded_runs(database_url, service_name)
        assert [tuple(run) for run in runs] == [("completed", 0, None)], (
            f"{service_name}: recorded runs {runs}"
        )


def test_worker_stops_on_sigterm(database_url: str) -> None:
    upgraded = run_cli("--database-url", database_url, "db", "upgrade")
    assert upgraded.returncode == 0, f"db upgrade failed: {upgraded.stderr}"
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "worker", "--config", "cronledger.fast.toml"],
        cwd=EXAMPLE_DIR,
        env={**os.environ, "CRONLEDGER_DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        runs = wait_for_runs(
            process,
            database_url,
            {"payment-checker": ("completed", 2), "kodosumi-status": ("completed", 1)},
        )
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)

    assert process.returncode == 0, f"worker exited {process.returncode}:\n{output}"
    assert len(runs["payment-checker"]) >= 2, f"the loop did not repeat: {runs}"
    for service_name in worker.WORKER_SERVICES:
        statuses = {run.status for run in recorded_runs(database_url, service_name)}
        assert statuses == {"completed"}, f"{service_name} after SIGTERM: {statuses}"


def test_worker_interval_missing_rejected(tmp_path: Path) -> None:
    config = tmp_path / "cronledger.toml"
    config.write_text('[services.payment-checker]\ninterval = "30s"\n')

    with pytest.raises(ValueError, match=r"\[services.kodosumi-status\] has no interval"):
        worker.load_intervals(config)


# The command path: the crontab line, and the starter run as a program.


def crontab_command() -> str:
    """Return the command of the example's crontab entry, with the paths of this checkout."""
    entries = [
        line
        for line in (EXAMPLE_DIR / "crontab").read_text().splitlines()
        if line.strip() and not line.startswith("#") and "=" not in line.split()[0]
    ]
    assert len(entries) == 1, f"expected one crontab entry: {entries}"
    fields = entries[0].split(None, 5)
    assert fields[:5] == ["*/5", "*", "*", "*", "*"], f"flow-sync schedule changed: {fields[:5]}"
    venv_bin = Path(sys.executable).parent
    return (
        fields[5]
        .replace("/opt/cronledger/.venv/bin", str(venv_bin))
        .replace("/opt/cronledger/examples/connector", str(EXAMPLE_DIR))
    )


def cron_environment(database_url: str, spool: Path) -> dict[str, str]:
    """Return an environment like the one cron gives a job, plus the test database."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(spool.parent),
        "SHELL": "/bin/sh",
        "LOGNAME": "root",
        "CRONLEDGER_DATABASE_URL": database_url,
        "CRONLEDGER_SPOOL_DIR": str(spool),
    }


def test_crontab_line_records_flow_sync(database_url: str, isolated_state: Path) -> None:
    command = crontab_command()
    env = cron_environment(database_url, isolated_state)

    outputs = [
        subprocess.run(
            ["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=120
        )
        for _ in range(2)
    ]

    for result in outputs:
        assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert "flow-sync: handled 3 items" in outputs[0].stdout, f"stdout: {outputs[0].stdout!r}"
    runs = recorded_runs(database_url, "flow-sync")
    assert [tuple(run) for run in runs] == [
        ("completed", 3, None),
        ("completed", 0, None),
    ], f"recorded runs: {runs}"


def test_starter_program_records_outage(database_url: str, isolated_state: Path) -> None:
    # The program form of the starter, as the comment in cronledger.toml shows it.
    argv = [sys.executable, "-m", "connector", "run", "kodosumi-starter"]
    env = {**cron_environment(database_url, isolated_state), kodosumi.ENV_OUTAGE: "1"}

    result = subprocess.run(
        [CRONLEDGER, "run", "kodosumi-starter", "--", *argv],
        cwd=EXAMPLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr}"
    runs = recorded_runs(database_url, "kodosumi-starter")
    assert len(runs) == 1, f"recorded runs: {runs}"
    assert runs[0].status == "failed", f"run: {runs[0]}"
    assert "connection refused by kodosumi at 127.0.0.1:" in runs[0].error_message, (
        f"error message: {runs[0].error_message!r}"
    )


# The scheduler path: cronledger up with the fast config.


def wait_for_runs(
    process: subprocess.Popen[str], database_url: str, wanted: dict[str, tuple[str, int]]
) -> dict[str, list[Any]]:
    """Poll until each service in ``wanted`` has (status, count) runs, or 120 s pass."""
    deadline = time.monotonic() + 120
    while True:
        runs = {name: recorded_runs(database_url, name) for name in wanted}
        done = all(
            sum(run.status == status for run in runs[name]) >= count
            for name, (status, count) in wanted.items()
        )
        if done or time.monotonic() > deadline or process.poll() is not None:
            return runs
        time.sleep(1)


def test_up_runs_scheduler_jobs(database_url: str, isolated_state: Path) -> None:
    env = {
        **os.environ,
        "CRONLEDGER_DATABASE_URL": database_url,
        kodosumi.ENV_OUTAGE: "1",
    }
    # The schema exists before the first poll below reads it.
    upgraded = run_cli("--database-url", database_url, "db", "upgrade")
    assert upgraded.returncode == 0, f"db upgrade failed: {upgraded.stderr}"
    process = subprocess.Popen(
        [CRONLEDGER, "--config", "cronledger.fast.toml", "up", "--port", "0"],
        cwd=EXAMPLE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        runs = wait_for_runs(
            process,
            database_url,
            {
                "authenticator": ("completed", 1),
                "flow-sync": ("completed", 1),
                "kodosumi-starter": ("failed", 2),
            },
        )
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)

    assert process.returncode == 0, f"cronledger up exited {process.returncode}:\n{output}"
    assert tuple(runs["authenticator"][0]) == ("completed", 2, None), f"runs: {runs}"
    assert tuple(runs["flow-sync"][0]) == ("completed", 3, None), f"runs: {runs}"
    failed = [run for run in runs["kodosumi-starter"] if run.status == "failed"]
    assert len(failed) >= 2, f"starter runs during the outage: {runs['kodosumi-starter']}"
    for run in failed:
        assert run.error_message.startswith(
            "KodosumiUnavailable: connection refused by kodosumi at 127.0.0.1:"
        ), f"error message: {run.error_message!r}"
    status = run_cli(
        "--database-url",
        database_url,
        "--config",
        str(EXAMPLE_DIR / "cronledger.fast.toml"),
        "status",
        "--json",
    )
    health = {row["service_name"]: row["health"] for row in json.loads(status.stdout)}
    assert health["kodosumi-starter"] == "failing", f"health: {health}\n{status.stderr}"
    assert health["authenticator"] == "healthy", f"health: {health}\n{status.stderr}"


# The config files.


@pytest.mark.parametrize("file_name", ["cronledger.toml", "cronledger.fast.toml"])
def test_config_declares_five_services(file_name: str) -> None:
    config = load_config(EXAMPLE_DIR / file_name)

    names = {name: settings.display_name for name, settings in config.services.items()}
    assert names == EXPECTED_SERVICES, f"{file_name} declares {names}"
    for name, settings in config.services.items():
        assert settings.schedule is not None, f"{file_name}: {name} has no schedule"
    for name, job in config.jobs.items():
        assert job.callable is not None, f"{file_name}: {name} has no callable"
        function = resolve_callable(job.callable)
        assert function.__module__ == "connector.jobs", f"{name}: {job.callable}"


def test_job_callables_count_items(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONLEDGER_DATABASE_URL", database_url)
    jobs = importlib.import_module("connector.jobs")

    try:
        first = (jobs.authenticator(), jobs.flow_sync(), jobs.kodosumi_starter())
        second = (jobs.authenticator(), jobs.flow_sync(), jobs.kodosumi_starter())
    finally:
        jobs.dispose_engines()

    assert first == (2, 3, 0), f"first calls returned {first}"
    assert second == (0, 0, 0), f"second calls returned {second}"


def test_config_producers_split() -> None:
    config = load_config(EXAMPLE_DIR / "cronledger.toml")
    fast = load_config(EXAMPLE_DIR / "cronledger.fast.toml")

    # The scheduler runs only the services that no other producer runs.
    assert set(config.jobs) == {"authenticator", "kodosumi-starter"}, f"jobs: {set(config.jobs)}"
    assert set(fast.jobs) == {"authenticator", "flow-sync", "kodosumi-starter"}, (
        f"fast jobs: {set(fast.jobs)}"
    )
    for name, settings in fast.services.items():
        assert isinstance(settings.schedule, IntervalSchedule), f"fast {name}: {settings.schedule}"
        assert settings.schedule.every <= timedelta(seconds=20), f"fast {name} is slow"


@pytest.mark.parametrize("file_name", ["cronledger.toml", "cronledger.fast.toml"])
def test_worker_reads_declared_intervals(file_name: str) -> None:
    config = load_config(EXAMPLE_DIR / file_name)

    intervals = worker.load_intervals(EXAMPLE_DIR / file_name)

    for name in worker.WORKER_SERVICES:
        schedule = config.services[name].schedule
        assert isinstance(schedule, IntervalSchedule), f"{name}: {schedule}"
        assert intervals[name] == schedule.every, f"{name}: worker {intervals[name]}"


# The demo: python -m connector demo, the README's first command.

demo = importlib.import_module("connector.demo")
connector_main = importlib.import_module("connector.__main__")


def test_demo_port_taken_falls_back() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy_port = listener.getsockname()[1]

        chosen = demo.choose_port(busy_port)

    assert chosen != busy_port, f"chose port {busy_port}, on which a server listens"
    assert 0 < chosen < 65536, f"chose port {chosen}"


def test_demo_free_port_kept() -> None:
    port = demo.free_port()

    assert demo.choose_port(port) == port, f"port {port} is free but was not chosen"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--jobs", "0"], "invalid --jobs 0"),
        (["--every", "0"], "invalid --every 0"),
        (["--port", "70000"], "invalid --port 70000"),
        (["--config", "missing.toml"], "config file missing.toml not found"),
    ],
    ids=["jobs", "every", "port", "config"],
)
def test_demo_rejects_invalid_option(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # main() configures logging for the command line; keep the root logger as it was.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        status = connector_main.main(["demo", *arguments])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)

    assert status == 1, f"demo {arguments} exited {status}"
    assert message in capsys.readouterr().err


DemoCounts = dict[str, dict[str, int]]


def demo_counts(dashboard: str) -> DemoCounts:
    """Return each service's counts from the dashboard's /api/v1/services, or {} if it is down."""
    try:
        response = httpx.get(dashboard + "api/v1/services", params={"window": "all"}, timeout=5)
    except httpx.TransportError:
        return {}
    if response.status_code != 200:
        return {}
    return {
        service["name"]: {"total": service["total"], "items": service["items_processed"]}
        for service in response.json()["services"]
    }


def run_demo_session(
    env: dict[str, str],
    log_path: Path,
    done: Callable[[DemoCounts], bool],
    interrupts_seconds: float = 0.0,
) -> tuple[DemoCounts, str]:
    """Start the demo, wait until ``done(counts)`` and stop it with Ctrl-C.

    The demo runs in a session of its own, and SIGINT goes to its process
    group, as a terminal sends it. With ``interrupts_seconds``, SIGINT is
    sent again and again for that long, as by a user who keeps pressing
    Ctrl-C. Returns the last counts the dashboard showed and the output.
    """
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "connector", "demo", "--port", "0", "--every", "2"],
            cwd=EXAMPLE_DIR,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    counts: DemoCounts = {}
    try:
        # The demo prints the address once cronledger up serves there.
        deadline = time.monotonic() + 120
        dashboard = None
        while dashboard is None and time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"connector demo: dashboard (http://\S+/)", log_path.read_text())
            dashboard = found.group(1) if found else None
            time.sleep(0.2)
        assert dashboard is not None, f"the demo printed no dashboard:\n{log_path.read_text()}"

        while time.monotonic() < deadline and process.poll() is None:
            counts = demo_counts(dashboard)
            if done(counts):
                break
            time.sleep(1)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        interrupts_end = time.monotonic() + interrupts_seconds
        while time.monotonic() < interrupts_end and process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            time.sleep(0.0001)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert process.returncode == 0, f"the demo exited {process.returncode}:\n{output}"
    assert done(counts), f"the dashboard never showed the expected runs: {counts}\n{output}"
    return counts, output


def stored_runs(database_url: str) -> dict[str, Any]:
    """Return every recorded run by run key."""
    columns = cron_executions.c
    query = select(
        columns.run_key,
        columns.service_name,
        columns.status,
        columns.items_processed,
        columns.execution_time,
    )
    with get_engine(database_url).connect() as connection:
        return {row.run_key: row for row in connection.execute(query)}


@pytest.mark.slow
def test_demo_restart_keeps_every_run(sqlite_url: str) -> None:
    env = {**os.environ, "CRONLEDGER_DATABASE_URL": sqlite_url}
    env.pop(kodosumi.ENV_OUTAGE, None)
    example_database = EXAMPLE_DIR / "cronledger.db"
    database_existed = example_database.exists()
    log_dir = Path(sqlite_url.removeprefix("sqlite:///")).parent

    # First session: every service runs, and the fed jobs go all the way
    # through to kodosumi-status.
    def all_services_with_items(counts: dict[str, dict[str, int]]) -> bool:
        return (
            set(counts) == set(EXPECTED_SERVICES)
            and all(entry["total"] >= 1 for entry in counts.values())
            and counts["kodosumi-status"]["items"] >= 1
        )

    first_counts, first_output = run_demo_session(
        env, log_dir / "demo-1.log", all_services_with_items
    )
    first = stored_runs(sqlite_url)

    assert "submitted and paid jobs" in first_output, first_output
    started = [row for row in first.values() if row.status == "started"]
    assert started == [], f"runs left started by the first stop: {started}"
    for name in EXPECTED_SERVICES:
        assert (
            sum(row.service_name == name for row in first.values()) >= first_counts[name]["total"]
        )

    # Second session on the same database, until every service has run again,
    # stopped by a user who keeps pressing Ctrl-C: each child still gets one
    # stop signal and stops cleanly.
    restarted_at = datetime.now(UTC)

    def every_service_ran_again(counts: dict[str, dict[str, int]]) -> bool:
        return set(counts) == set(EXPECTED_SERVICES) and all(
            counts[name]["total"] > sum(row.service_name == name for row in first.values())
            for name in EXPECTED_SERVICES
        )

    run_demo_session(env, log_dir / "demo-2.log", every_service_ran_again, interrupts_seconds=0.5)
    final = stored_runs(sqlite_url)

    for run_key, row in first.items():
        assert run_key in final, f"run {run_key} of {row.service_name} was lost by the restart"
        assert tuple(final[run_key]) == tuple(row), (
            f"run {run_key} changed: {row} -> {final[run_key]}"
        )
    new_runs = [row for key, row in final.items() if key not in first]
    for row in new_runs:
        assert row.execution_time >= restarted_at, (
            f"a run of the first session was added again: {row}"
        )
    for name in EXPECTED_SERVICES:
        before = sum(row.service_name == name for row in first.values())
        added = sum(row.service_name == name for row in new_runs)
        after = sum(row.service_name == name for row in final.values())
        assert added >= 1, f"{name} did not run after the restart"
        assert after == before + added, f"{name}: {before} + {added} runs, {after} stored"
    started = [row for row in final.values() if row.status == "started"]
    assert started == [], f"runs left started by the second stop: {started}"

    # Each job that a service moved is counted once, across the restart.
    jobs = database.jobs
    with get_engine(sqlite_url).connect() as connection:
        states = dict(
            connection.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
        )
    items = {
        name: sum(row.items_processed for row in final.values() if row.service_name == name)
        for name in EXPECTED_SERVICES
    }
    completed = states.get(database.COMPLETED, 0)
    started_jobs = states.get(database.STARTED, 0) + completed
    moved = states.get(database.RUNNING, 0) + started_jobs
    assert completed >= 1, f"no job completed: {states}"
    assert items["payment-checker"] == moved, f"items {items}, jobs by state {states}"
    assert items["kodosumi-starter"] == started_jobs, f"items {items}, jobs by state {states}"
    assert items["kodosumi-status"] == completed, f"items {items}, jobs by state {states}"

    # Each fire time of a scheduler job ran once across both sessions.
    with get_engine(sqlite_url).connect() as connection:
        unclaimed = connection.execute(
            text(
                "SELECT e.service_name, e.run_key FROM cron_executions e"
                " WHERE e.service_name IN ('authenticator', 'flow-sync', 'kodosumi-starter')"
                " AND NOT EXISTS (SELECT 1 FROM cron_fire_claims c WHERE c.run_key = e.run_key)"
            )
        ).all()
        repeated = connection.execute(
            text(
                "SELECT c.service_name, c.scheduled_at, COUNT(*) FROM cron_fire_claims c"
                " JOIN cron_executions e ON e.run_key = c.run_key"
                " GROUP BY c.service_name, c.scheduled_at HAVING COUNT(*) > 1"
            )
        ).all()
    assert unclaimed == [], f"scheduler runs without a fire claim: {unclaimed}"
    assert repeated == [], f"fire times that ran more than once: {repeated}"
    if not database_existed:
        assert not example_database.exists(), f"the demo wrote {example_database}"
