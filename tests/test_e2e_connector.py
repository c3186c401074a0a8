"""The connector example end to end on PostgreSQL, through an outage, a kill and a restart.

All five services run with schedules of seconds, each recorded by its own
producer, as in a deployment. ``cronledger up`` runs the scheduler, which
calls authenticator and kodosumi-starter, and the monitor, which judges all
five. ``python -m connector worker`` runs payment-checker (recorded with
CronExecutionLogger) and kodosumi-status (recorded with @tracked). The test
runs the example's crontab line for flow-sync every few seconds, in place of
cron. A feeder thread submits and pays jobs, so items flow through the
services.

Meanwhile the test switches Kodosumi off and on, kills the worker with
SIGKILL in the middle of a payment-checker run (held on a table lock),
and stops and starts the PostgreSQL server. Then it stops every producer
and checks that each run the producers report is stored once, and that
the database, the JSON API, the dashboard in Chromium and the origin
dashboard's query report the same counts.

The example folder is copied to a temporary folder first, because the
outage switch is a file in that folder.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import namedtuple_row
from sqlalchemy.exc import SQLAlchemyError

from tests.commands import CRONLEDGER
from tests.pgserver import PostgresServer, free_port

REPOSITORY = Path(__file__).resolve().parent.parent
EXAMPLE_SOURCE = REPOSITORY / "examples" / "connector"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPOSITORY / "test-artifacts"

sys.path.insert(0, str(EXAMPLE_SOURCE))
connector_database = importlib.import_module("connector.database")
connector_services = importlib.import_module("connector.services")

SERVICES = ("authenticator", "flow-sync", "payment-checker", "kodosumi-starter", "kodosumi-status")
SCHEDULER_JOBS = ("authenticator", "kodosumi-starter")
WORKER_SERVICES = ("payment-checker", "kodosumi-status")

# The five services of cronledger.fast.toml with shorter intervals. flow-sync
# has no callable: the test runs the crontab line for it. The worker's
# services get a max runtime of 3 s, so the monitor times out the run that
# the test kills within seconds.
CONFIG = """
[scheduler]
stop_timeout = "10s"
kill_delay = "5s"

[services.authenticator]
display_name = "API Key Sync"
interval = "5s"
grace = "10s"
max_runtime = "1m"
callable = "connector.jobs:authenticator"

[services.flow-sync]
display_name = "Flow Sync"
interval = "5s"
grace = "10s"
max_runtime = "1m"

[services.payment-checker]
display_name = "Payment Checker"
interval = "2s"
grace = "10s"
max_runtime = "3s"

[services.kodosumi-starter]
display_name = "Kodosumi Starter"
interval = "2s"
grace = "10s"
max_runtime = "1m"
failure_threshold = 2
callable = "connector.jobs:kodosumi_starter"

[services.kodosumi-status]
display_name = "Kodosumi Status"
interval = "3s"
grace = "10s"
max_runtime = "3s"
failure_threshold = 2
"""

CRON_PERIOD_SECONDS = 5.0
FEED_PERIOD_SECONDS = 3.0
# The minimum length of each phase, so the whole run lasts about a minute
# and every service runs several times in each phase.
PHASE_SECONDS = 10.0
DOWN_SECONDS = 5.0
WAIT_SECONDS = 60.0

OUTAGE_ERROR = "KodosumiUnavailable: connection refused by kodosumi at 127.0.0.1:"

# The dashboard query of the origin deployment, as it was written there.
ORIGIN_QUERY = """
SELECT
    service_name,
    COUNT(*) as total_executions,
    COUNT(CASE WHEN status = 'completed' THEN 1 END) as successful_executions,
    COUNT(CASE WHEN status = 'failed' THEN 1 END) as failed_executions
FROM cron_executions
GROUP BY service_name
"""


def require_browser() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: apt-get install -y chromium"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: browser tests must run)")
    pytest.skip(message)


def fetch(url: str, sql: str, parameters: dict[str, Any] | None = None) -> list[Any]:
    """Run one query on a fresh connection, which survives the server's restart."""
    with psycopg.connect(url, connect_timeout=5, row_factory=namedtuple_row) as connection:
        return list(connection.execute(sql, parameters).fetchall())


def wait_until(
    condition: Callable[[], bool], description: str, timeout: float = WAIT_SECONDS
) -> None:
    """Poll ``condition`` until it holds; fail with ``description`` after ``timeout`` seconds.

    A refused connection counts as "not yet", because the server may still
    be starting.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g} s waiting until {description}")
        time.sleep(0.3)


def runs_since(url: str, service: str, since: datetime, status: str) -> list[Any]:
    return fetch(
        url,
        "SELECT run_key, items_processed, error_message FROM cron_executions"
        " WHERE service_name = %(service)s AND status = %(status)s"
        " AND execution_time >= %(since)s",
        {"service": service, "status": status, "since": since},
    )


def last_at_least(seconds: float, since: float) -> None:
    """Sleep until ``seconds`` have passed since the monotonic time ``since``."""
    time.sleep(max(0.0, seconds - (time.monotonic() - since)))


def pending_spool_files(spool: Path) -> list[Path]:
    return sorted(spool.glob("*/*.json"))


@dataclass
class Background:
    """A loop in a thread of the test: the stand-in for cron, or the feeder."""

    name: str
    period: float
    step: Callable[[], None]
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.step()
            except BaseException as error:
                self.errors.append(error)
                return
            self.stop.wait(self.period)

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), f"{self.name} did not stop"
        assert self.errors == [], f"{self.name} failed: {self.errors!r}"


@dataclass
class CronInvocation:
    returncode: int
    items: int


class Deployment:
    """The producers of the example, started as a deployment starts them."""

    def __init__(self, example: Path, database_url: str, spool: Path, logs: Path) -> None:
        self.example = example
        self.database_url = database_url
        self.spool = spool
        self.logs = logs
        self.config = example / "cronledger.e2e.toml"
        self.config.write_text(CONFIG)
        self.environment = {
            **os.environ,
            "CRONLEDGER_DATABASE_URL": database_url,
            "CRONLEDGER_SPOOL_DIR": str(spool),
            "PYTHONUNBUFFERED": "1",
        }
        self.environment.pop("CONNECTOR_KODOSUMI_OUTAGE", None)
        self.up: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.cron_invocations: list[CronInvocation] = []
        self.cron = Background("cron", CRON_PERIOD_SECONDS, self._run_crontab_line)
        self.feeder = Background("feeder", FEED_PERIOD_SECONDS, self._feed)
        self._feeder_engine: Any = None

    # Starting.

    def start_up(self) -> str:
        """Start `cronledger up` and return its dashboard's address once it responds."""
        self.up = self._spawn(
            "up",
            [
                CRONLEDGER,
                "--config",
                str(self.config),
                "up",
                "--port",
                "0",
                "--monitor-interval",
                "1s",
            ],
        )
        dashboard = ""

        def answers() -> bool:
            nonlocal dashboard
            assert self.up is not None and self.up.poll() is None, self.output("up")
            found = re.search(r"dashboard\s+(http://\S+)/", (self.logs / "up.out").read_text())
            if found is None:
                return False
            dashboard = found.group(1)
            try:
                return httpx.get(dashboard + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, "cronledger up serves its dashboard")
        return dashboard

    def start_worker(self) -> subprocess.Popen[bytes]:
        number = len(self.workers) + 1
        worker = self._spawn(
            f"worker-{number}",
            [sys.executable, "-m", "connector", "worker", "--config", str(self.config)],
        )
        self.workers.append(worker)
        return worker

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        with (
            (self.logs / f"{name}.out").open("wb") as stdout,
            (self.logs / f"{name}.err").open("wb") as stderr,
        ):
            return subprocess.Popen(
                command, cwd=self.example, env=self.environment, stdout=stdout, stderr=stderr
            )

    def output(self, name: str) -> str:
        return "".join(
            (self.logs / f"{name}.{stream}").read_text(errors="replace")
            for stream in ("out", "err")
            if (self.logs / f"{name}.{stream}").exists()
        )

    # The stand-in for cron, and the feeder.

    def crontab_command(self) -> str:
        """Return the example's crontab entry with the paths of the copy and of this venv."""
        entries = [
            line
            for line in (self.example / "crontab").read_text().splitlines()
            if line.strip() and not line.startswith("#") and "=" not in line.split()[0]
        ]
        assert len(entries) == 1, f"expected one crontab entry: {entries}"
        command = entries[0].split(None, 5)[5]
        return command.replace(
            "/opt/cronledger/.venv/bin", str(Path(sys.executable).parent)
        ).replace("/opt/cronledger/examples/connector", str(self.example))

    def _run_crontab_line(self) -> None:
        # The environment cron gives a job, plus the database and spool.
        environment = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.logs),
            "SHELL": "/bin/sh",
            "CRONLEDGER_DATABASE_URL": self.database_url,
            "CRONLEDGER_SPOOL_DIR": str(self.spool),
        }
        result = subprocess.run(
            ["/bin/sh", "-c", self.crontab_command()],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        found = re.search(r"flow-sync: handled (\d+) items", result.stdout)
        assert result.returncode == 0 or found is None, f"failed run printed items: {result}"
        assert result.returncode in (0, 1), f"crontab line exited {result.returncode}: {result}"
        assert result.returncode == 1 or found is not None, f"no item count: {result}"
        self.cron_invocations.append(
            CronInvocation(result.returncode, int(found.group(1)) if found else 0)
        )

    def _feed(self) -> None:
        try:
            if self._feeder_engine is None:
                self._feeder_engine = connector_database.connect(self.database_url)
            now = datetime.now(UTC)
            job_ids = connector_services.submit_jobs(self._feeder_engine, 2, now)
            connector_services.pay_jobs(self._feeder_engine, job_ids, now)
        except ValueError as error:
            # No flows before the first flow-sync run.
            assert "no flows yet" in str(error), error
        except SQLAlchemyError:
            pass  # the database is down; the next round submits again

    # Stopping.

    def stop_all(self) -> None:
        """Stop the feeder, cron, the worker and `cronledger up`, in that order."""
        self.feeder.finish()
        self.cron.finish()
        if self._feeder_engine is not None:
            self._feeder_engine.dispose()
        for process, name in [
            (self.workers[-1], f"worker-{len(self.workers)}"),
            (self.up, "up"),
        ]:
            assert process is not None
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=90)
            assert process.returncode == 0, (
                f"{name} exited {process.returncode}:\n{self.output(name)}"
            )

    def kill_everything(self) -> None:
        for process in [self.up, *self.workers]:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        self.feeder.stop.set()
        self.cron.stop.set()


@pytest.fixture
def example(tmp_path: Path) -> Path:
    copy = tmp_path / "connector"
    shutil.copytree(
        EXAMPLE_SOURCE,
        copy,
        ignore=shutil.ignore_patterns("__pycache__", "cronledger.db*", "OUTAGE"),
    )
    return copy


@pytest.fixture
def deployment(
    example: Path, private_postgres: PostgresServer, isolated_state: Path, tmp_path: Path
) -> Iterator[Deployment]:
    logs = tmp_path / "logs"
    logs.mkdir()
    running = Deployment(example, private_postgres.url, isolated_state, logs)
    try:
        yield running
    finally:
        running.kill_everything()


def logged_scheduler_runs(output: str) -> dict[str, dict[str, str]]:
    """Return the run keys and statuses of the runs that `cronledger up` logged as ended."""
    runs: dict[str, dict[str, str]] = {name: {} for name in SCHEDULER_JOBS}
    for service, run_key, status in re.findall(
        r"^cronledger: service (\S+): run (\S+) for .* ended: (\S+)$", output, re.MULTILINE
    ):
        assert run_key not in runs[service], f"run {run_key} logged twice"
        runs[service][run_key] = status
    return runs


def logged_worker_runs(output: str) -> dict[str, Counter[str]]:
    """Count the worker's runs by outcome, and their items, from its log lines."""
    patterns = {
        "payment-checker": r"payment-checker: moved (\d+) paid jobs to running",
        "kodosumi-status": r"kodosumi-status: completed (\d+) jobs",
    }
    counts: dict[str, Counter[str]] = {}
    for service, pattern in patterns.items():
        succeeded = [
            int(items)
            for items in re.findall(rf"^connector\.worker: {pattern}$", output, re.MULTILINE)
        ]
        failed = re.findall(rf"^connector\.worker: {service} failed: ", output, re.MULTILINE)
        counts[service] = Counter(
            completed=len(succeeded), failed=len(failed), items=sum(succeeded)
        )
    return counts


def database_counts(url: str) -> dict[str, dict[str, Any]]:
    """Count runs per service and status, and sum their items, with plain SQL."""
    counts: dict[str, dict[str, Any]] = {
        name: {"total": 0, "completed": 0, "failed": 0, "timed_out": 0, "started": 0, "items": 0}
        for name in SERVICES
    }
    rows = fetch(
        url,
        "SELECT service_name, status, COUNT(*), COALESCE(SUM(items_processed), 0)"
        " FROM cron_executions GROUP BY service_name, status",
    )
    for service, status, runs, items in rows:
        counts[service][status] += runs
        counts[service]["total"] += runs
        counts[service]["items"] += items
    for service, average in fetch(
        url, "SELECT service_name, AVG(duration_ms) FROM cron_executions GROUP BY service_name"
    ):
        counts[service]["avg_duration_ms"] = None if average is None else float(average)
    return counts


def overview_counts_in_chromium(dashboard: str) -> dict[str, dict[str, int]]:
    """Read each service's counts from the overview page in Chromium; save a screenshot."""
    from playwright.sync_api import sync_playwright

    fields = ("total", "completed", "failed", "timed_out", "items_processed")
    counts: dict[str, dict[str, int]] = {}
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(base_url=dashboard)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto("/?window=all")
            for service in SERVICES:
                row = page.locator(f'tr[data-service="{service}"]')
                counts[service] = {
                    name: int(row.locator(f'td[data-field="{name}"]').inner_text())
                    for name in fields
                }
            page.screenshot(path=ARTIFACTS / "e2e-connector-overview.png", full_page=True)
            assert errors == [], f"the page reported errors: {errors}"
        finally:
            browser.close()
    return counts


@pytest.fixture
def serve(deployment: Deployment, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Start `cronledger serve` on the final database, on demand, and stop it after the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        port = free_port()
        with (tmp_path / "serve.log").open("wb") as log_file:
            process = subprocess.Popen(
                [CRONLEDGER, "serve", "--port", str(port), "--overview-cache", "0"],
                env=deployment.environment,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        dashboard = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(dashboard + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, "cronledger serve answers")
        return dashboard

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_connector_outage_kill_restart(
    deployment: Deployment,
    private_postgres: PostgresServer,
    isolated_state: Path,
    serve: Callable[[], str],
) -> None:
    require_browser()
    url = private_postgres.url
    spool = isolated_state

    # 1. Everything runs: every service completes a run.
    dashboard = deployment.start_up()
    deployment.start_worker()
    deployment.cron.start()
    deployment.feeder.start()
    began = datetime.now(UTC)
    phase = time.monotonic()
    for service in SERVICES:
        wait_until(
            lambda service=service: bool(runs_since(url, service, began, "completed")),
            f"{service} completes a run",
        )
    last_at_least(PHASE_SECONDS, phase)

    # 2. Kodosumi goes down: both Kodosumi services fail with the refused
    # connection, and the monitor reports the starter as failing.
    outage_file = deployment.example / "OUTAGE"
    outage_file.touch()
    outage_began = datetime.now(UTC)
    phase = time.monotonic()
    wait_until(
        lambda: (
            len(runs_since(url, "kodosumi-starter", outage_began, "failed")) >= 2
            and bool(runs_since(url, "kodosumi-status", outage_began, "failed"))
        ),
        "both Kodosumi services fail during the outage",
    )

    def starter_health() -> str | None:
        services = httpx.get(dashboard + "/api/v1/services", timeout=5).json()["services"]
        states = {entry["name"]: (entry["health"] or {}).get("state") for entry in services}
        return states["kodosumi-starter"]

    wait_until(lambda: starter_health() == "failing", "the monitor reports the starter failing")
    last_at_least(PHASE_SECONDS, phase)
    for service in ("kodosumi-starter", "kodosumi-status"):
        for run in runs_since(url, service, outage_began, "failed"):
            assert run.error_message.startswith(OUTAGE_ERROR), f"{service}: {run.error_message!r}"

    # 3. Kodosumi is back: the jobs that waited start and complete.
    outage_file.unlink()
    outage_ended = datetime.now(UTC)
    phase = time.monotonic()
    wait_until(
        lambda: (
            any(
                run.items_processed > 0
                for run in runs_since(url, "kodosumi-starter", outage_ended, "completed")
            )
            and any(
                run.items_processed > 0
                for run in runs_since(url, "kodosumi-status", outage_ended, "completed")
            )
        ),
        "the Kodosumi services start and complete the waiting jobs",
    )
    last_at_least(PHASE_SECONDS, phase)

    # 4. SIGKILL the worker in the middle of a payment-checker run. The run
    # is held inside its UPDATE by a lock on the payments table, so it is
    # certainly in progress when the signal arrives.
    worker = deployment.workers[-1]
    with psycopg.connect(url) as lock_connection:
        lock_connection.execute("LOCK TABLE payments IN ACCESS EXCLUSIVE MODE")
        wait_until(
            lambda: bool(
                fetch(
                    url,
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'UPDATE jobs SET state%' AND query LIKE '%payments%'",
                )
            ),
            "a payment-checker run waits for the payments lock",
        )
        blocked_runs = fetch(
            url,
            "SELECT run_key FROM cron_executions WHERE service_name = 'payment-checker'"
            " AND status = 'started' AND pid = %(pid)s",
            {"pid": worker.pid},
        )
        worker.kill()
        worker.wait()
        lock_connection.rollback()
    assert len(blocked_runs) == 1, f"payment-checker runs in progress at the kill: {blocked_runs}"
    killed_run = blocked_runs[0][0]
    deployment.start_worker()

    def killed_run_status() -> str:
        return str(
            fetch(
                url,
                "SELECT status FROM cron_executions WHERE run_key = %(key)s",
                {"key": killed_run},
            )[0][0]
        )

    wait_until(lambda: killed_run_status() == "timed_out", "the monitor times out the killed run")
    # A kodosumi-status run that the kill cut off, if any, times out as well.
    wait_until(
        lambda: (
            not fetch(
                url,
                "SELECT run_key FROM cron_executions WHERE status = 'started' AND pid = %(pid)s",
                {"pid": worker.pid},
            )
        ),
        "no run of the killed worker is left started",
    )
    killed_message = fetch(
        url,
        "SELECT error_message FROM cron_executions WHERE run_key = %(key)s",
        {"key": killed_run},
    )[0][0]
    assert killed_message.startswith("timed out: no finish reported"), killed_message

    # 5. Restart the PostgreSQL server. The producers spool what they record
    # while it is down, and replay it once it is back.
    private_postgres.stop()
    stopped_at = time.monotonic()
    wait_until(lambda: bool(pending_spool_files(spool)), "a producer spools a run event")
    last_at_least(DOWN_SECONDS, stopped_at)
    spooled_while_down = len(pending_spool_files(spool))
    private_postgres.start()
    restarted = datetime.now(UTC)
    phase = time.monotonic()
    for service in SERVICES:
        wait_until(
            lambda service=service: bool(runs_since(url, service, restarted, "completed")),
            f"{service} completes a run after the restart",
        )
    wait_until(lambda: not pending_spool_files(spool), "the producers replay the spool")
    last_at_least(PHASE_SECONDS, phase)
    assert spooled_while_down >= 1, "nothing was spooled while the server was down"

    # 6. Stop every producer; the monitor has nothing left to time out.
    deployment.stop_all()
    scheduler_log = deployment.output("up")
    worker_log = "".join(deployment.output(f"worker-{number}") for number in (1, 2))

    in_progress = fetch(
        url, "SELECT service_name, run_key FROM cron_executions WHERE status = 'started'"
    )
    assert in_progress == [], f"runs left started: {in_progress}"
    assert pending_spool_files(spool) == [], "events left in the spool"
    assert list(spool.glob("*/rejected/*")) == [], "spooled events were rejected"

    database = database_counts(url)

    # Each run that a producer reports is stored, once. The scheduler logs
    # every run key with its outcome.
    scheduler_runs = logged_scheduler_runs(scheduler_log)
    for service in SCHEDULER_JOBS:
        stored = dict(
            fetch(
                url,
                "SELECT run_key, status FROM cron_executions WHERE service_name = %(service)s",
                {"service": service},
            )
        )
        assert stored == scheduler_runs[service], f"{service}: stored runs differ from the log"
    # The crontab line ran as often as the test started it, each outcome once.
    invocations = deployment.cron_invocations
    flow_sync = database["flow-sync"]
    assert flow_sync["total"] == len(invocations), f"flow-sync: {len(invocations)} invocations"
    assert flow_sync["completed"] == sum(run.returncode == 0 for run in invocations)
    assert flow_sync["failed"] == sum(run.returncode == 1 for run in invocations)
    assert flow_sync["items"] == sum(run.items for run in invocations)
    # The worker logs one line per run that it finished; the killed run
    # has no line and is the one timed out.
    worker_runs = logged_worker_runs(worker_log)
    for service in WORKER_SERVICES:
        logged = worker_runs[service]
        counts = database[service]
        assert counts["completed"] == logged["completed"], f"{service}: {counts} vs log {logged}"
        assert counts["failed"] == logged["failed"], f"{service}: {counts} vs log {logged}"
        assert counts["items"] == logged["items"], f"{service}: {counts} vs log {logged}"
    assert database["payment-checker"]["timed_out"] == 1, database["payment-checker"]
    assert database["kodosumi-status"]["timed_out"] <= 1, database["kodosumi-status"]
    for service in (*SCHEDULER_JOBS, "flow-sync"):
        assert database[service]["timed_out"] == 0, f"{service}: {database[service]}"
    assert database["kodosumi-starter"]["failed"] >= 2, database["kodosumi-starter"]

    # Every job that payment-checker counted has moved on. The two Kodosumi
    # services commit each job on its own. A run that fails part-way, because
    # the outage begins or the server stops between two jobs, has moved jobs
    # that it does not count, so their items can be fewer than the jobs moved.
    states = dict(fetch(url, "SELECT state, COUNT(*) FROM jobs GROUP BY state"))
    moved = sum(states.get(state, 0) for state in ("running", "started", "completed"))
    assert database["payment-checker"]["items"] == moved, f"jobs by state: {states}"
    assert database["kodosumi-starter"]["items"] <= states.get("started", 0) + states.get(
        "completed", 0
    )
    assert database["kodosumi-status"]["items"] <= states.get("completed", 0)
    assert states.get("completed", 0) >= 1, f"no job completed: {states}"

    # 7. The same counts everywhere.
    final_dashboard = serve()
    api = {
        entry["name"]: entry
        for entry in httpx.get(
            final_dashboard + "/api/v1/services", params={"window": "all"}, timeout=30
        ).json()["services"]
    }
    cron_status = {
        entry["service"]: entry
        for entry in httpx.get(final_dashboard + "/api/cron-status", timeout=30).json()
    }
    page = overview_counts_in_chromium(final_dashboard)
    origin = {row[0]: row[1:] for row in fetch(url, ORIGIN_QUERY)}

    assert set(api) == set(SERVICES), f"API services: {sorted(api)}"
    for service in SERVICES:
        expected = database[service]
        listed = api[service]
        for field_name in ("total", "completed", "failed", "timed_out"):
            assert listed[field_name] == expected[field_name], f"API {service} {field_name}"
            assert page[service][field_name] == expected[field_name], f"page {service} {field_name}"
        assert listed["in_progress"] == 0, f"API {service} in_progress"
        assert listed["items_processed"] == expected["items"], f"API {service} items"
        assert page[service]["items_processed"] == expected["items"], f"page {service} items"
        assert listed["avg_duration_ms"] == pytest.approx(expected["avg_duration_ms"]), (
            f"API {service} avg_duration_ms"
        )

        status = cron_status[service]
        assert status["total_executions"] == expected["total"], f"cron-status {service} total"
        assert status["successful_executions"] == expected["completed"], f"cron-status {service}"
        # /api/cron-status counts timed-out runs as failed, so that
        # successful + failed + in progress = total.
        assert status["failed_executions"] == expected["failed"] + expected["timed_out"], (
            f"cron-status {service} failed"
        )
        assert status["total_items_processed"] == expected["items"], f"cron-status {service} items"

        total, successful, failed = origin[service]
        assert total == expected["total"], f"origin query {service} total"
        assert successful == expected["completed"], f"origin query {service} successful"
        # The origin query counts only status 'failed': a timed-out run is in
        # its total but in neither of its other two counts.
        assert failed == expected["failed"], f"origin query {service} failed"
        assert failed + expected["timed_out"] == status["failed_executions"], f"{service}"
