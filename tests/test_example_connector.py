"""Tests of the connector example in examples/connector, on SQLite and PostgreSQL.

The example is not part of the installed package, so it is imported from its
folder. Each work function runs against real tables with real rows, the
Python producers write real runs, and the crontab line runs through the real
``cronledger run`` subprocess.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

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
