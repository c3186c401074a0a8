"""Measure the time a job spends on tracking per run: origin pattern vs cronledger.

One run is what a job pays around an empty body: the logger is built, the
start is logged, and the completion is logged. Three variants write to the
same ``cron_executions`` table of one fresh PostgreSQL database:

- ``origin``: the design cronledger replaces, written out below. Each log
  call opens a new async connection, runs one statement and closes it.
- ``CronExecutionLogger``: cronledger's async API, which reuses a pooled
  connection and runs the blocking write in a worker thread.
- ``track()``: cronledger's sync context manager, the same core without
  the thread hop.

The two cronledger faces also run against a SQLite file in a temporary
directory, for information. After warm-up runs, every round runs a short
block of each variant in a new shuffled order, so drift on the machine
(other load, table growth) spreads over all variants alike.

The benchmark creates its own database on the server (CREATE DATABASE,
so the user needs CREATEDB) and drops it at the end::

    python benchmarks/tracking_overhead.py --runs 2000

``--cold-runs`` also times the first run in new processes, where no pooled
connection exists yet. ``--profile`` times the parts of one cronledger run
and prints a cProfile listing of the sync write path.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import platform
import pstats
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cronledger import CronExecutionLogger, track
from cronledger.recorder import get_recorder, new_start, utc_now
from cronledger.store import executions
from cronledger.store.engine import dispose_engines, get_engine
from cronledger.store.migrate import ensure_schema, upgrade
from cronledger.store.tables import OVERWRITABLE_STATUSES, STARTED, cron_executions
from cronledger.tracking import Tracker

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
SERVICE_NAME = "tracking-benchmark"
TARGET_RATIO = 10.0
SETTLE_RUNS = 2

RunOnce = Callable[[], Awaitable[None]]


# The origin pattern, written with psycopg 3. autocommit=True commits each
# statement on its own, as the origin's statements were. Without it psycopg
# would roll the statement back when the connection closes.
class OriginLogger:
    """Log one run with a new database connection for each log call."""

    def __init__(self, service_name: str, database_url: str) -> None:
        self.service_name = service_name
        self.database_url = database_url
        self.execution_id: int | None = None
        self._started = 0.0

    async def log_start(self) -> int | None:
        self._started = time.monotonic()
        connection = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        try:
            cursor = await connection.execute(
                "INSERT INTO cron_executions (service_name, status)"
                " VALUES (%s, 'started') RETURNING id",
                (self.service_name,),
            )
            row = await cursor.fetchone()
        finally:
            await connection.close()

        self.execution_id = row[0] if row is not None else None
        return self.execution_id

    async def log_completion(self, items_processed: int = 0, error: str | None = None) -> None:
        duration_ms = round((time.monotonic() - self._started) * 1000)
        status = "failed" if error else "completed"
        connection = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        try:
            await connection.execute(
                "UPDATE cron_executions SET status=%s, items_processed=%s,"
                " error_message=%s, duration_ms=%s WHERE id=%s",
                (status, items_processed, error, duration_ms, self.execution_id),
            )
        finally:
            await connection.close()


@dataclass(frozen=True)
class Variant:
    """One way of tracking a run, timed as a whole by the benchmark loop."""

    name: str
    backend: str
    run_once: RunOnce


def origin_variant(url: str) -> Variant:
    async def run_once() -> None:
        logger = OriginLogger(SERVICE_NAME, url)
        await logger.log_start()
        await logger.log_completion(0)

    return Variant("origin (new connection per call)", "PostgreSQL", run_once)


def logger_variant(url: str, backend: str, spool_dir: Path) -> Variant:
    async def run_once() -> None:
        logger = CronExecutionLogger(SERVICE_NAME, url, spool_dir=spool_dir)
        await logger.log_start()
        await logger.log_completion(0)

    return Variant("cronledger CronExecutionLogger (async)", backend, run_once)


def track_variant(url: str, backend: str, spool_dir: Path) -> Variant:
    # Sync on purpose: the event loop has nothing else to do meanwhile.
    async def run_once() -> None:
        with track(SERVICE_NAME, database_url=url, spool_dir=spool_dir):
            pass

    return Variant("cronledger track() (sync)", backend, run_once)


@dataclass
class Result:
    """The per-run times of one variant, in nanoseconds."""

    variant: Variant
    samples_ns: list[int]

    def milliseconds(self) -> list[float]:
        return [sample / 1e6 for sample in self.samples_ns]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.milliseconds())

    @property
    def p95_ms(self) -> float:
        return percentile(self.milliseconds(), 95)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.milliseconds())


def percentile(values: list[float], percent: int) -> float:
    """Return the ``percent`` percentile, interpolated between the samples."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


async def time_once(run_once: RunOnce) -> int:
    started = time.perf_counter_ns()
    await run_once()
    return time.perf_counter_ns() - started


async def measure(
    variants: list[Variant], runs: int, warmup: int, block: int, seed: int
) -> dict[str, Result]:
    """Time ``runs`` runs of each variant, in rounds of one block per variant.

    Each round runs the variants in a new shuffled order, so slow drift on
    the machine reaches every variant alike. Each block starts with
    ``SETTLE_RUNS`` untimed runs, because the server keeps ending the
    backends of closed origin connections for a few milliseconds. On a
    2-core VM the first runs after a switch of variant took up to twice
    their usual time.
    """
    shuffler = random.Random(seed)
    results = {key(variant): Result(variant, []) for variant in variants}

    for _ in range(warmup):
        order = list(variants)
        shuffler.shuffle(order)
        for variant in order:
            await variant.run_once()

    while any(len(result.samples_ns) < runs for result in results.values()):
        order = list(variants)
        shuffler.shuffle(order)
        for variant in order:
            samples = results[key(variant)].samples_ns
            count = min(block, runs - len(samples))
            if count == 0:
                continue
            for _ in range(SETTLE_RUNS):
                await variant.run_once()
            for _ in range(count):
                samples.append(await time_once(variant.run_once))

    return results


def key(variant: Variant) -> str:
    return f"{variant.name} / {variant.backend}"


# Database setup


def server_url(raw: str) -> str:
    """Return ``raw`` as a plain postgresql:// URL that both libpq and cronledger read."""
    try:
        url = make_url(raw)
    except ArgumentError:
        url = None
    if url is None or url.get_backend_name() not in ("postgresql", "postgres"):
        raise SystemExit(
            f"invalid --database-url {raw!r}: give a URL such as {DEFAULT_DATABASE_URL}"
        )
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Create an empty database on the server of ``admin_url``, yield its URL, drop it."""
    name = f"cronledger_bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        masked_url = make_url(admin_url).render_as_string(hide_password=True)
        raise SystemExit(
            f"failed to create database {name} on {masked_url}: {error}. "
            "The user needs the CREATEDB privilege."
        ) from None

    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_schema(url: str) -> None:
    """Apply cronledger's migrations, so the origin variant finds the table too."""
    upgrade(get_engine(url))


# Machine facts


def machine_facts(postgres_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(postgres_url, connect_timeout=5) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    server_version = str(row[0]) if row is not None else "unknown"

    libpq = psycopg.pq.version()
    libpq_version = f"{libpq // 10000}.{libpq % 10000}"
    return [
        ("CPU", cpu_model()),
        ("cores", f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable by this process)"),
        ("memory", memory_total()),
        ("OS", platform.platform()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("PostgreSQL server", f"{server_version}, over TCP {make_url(postgres_url).host}"),
        ("SQLAlchemy", metadata.version("sqlalchemy")),
        ("psycopg", f"{psycopg.__version__} ({psycopg.pq.__impl__}, libpq {libpq_version})"),
        ("SQLite library", sqlite3.sqlite_version),
        ("cronledger", metadata.version("cronledger")),
    ]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_total() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    kibibytes = int(line.split()[1])
                    return f"{kibibytes / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


# Output


def format_table(results: dict[str, Result]) -> str:
    origin = next(result for result in results.values() if result.variant.name.startswith("origin"))
    lines = [
        "| variant | database | runs | median ms | p95 ms | mean ms "
        "| origin/variant (median) | origin/variant (mean) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results.values():
        lines.append(
            f"| {result.variant.name} | {result.variant.backend} | {len(result.samples_ns)} "
            f"| {result.median_ms:.3f} | {result.p95_ms:.3f} | {result.mean_ms:.3f} "
            f"| {origin.median_ms / result.median_ms:.1f} "
            f"| {origin.mean_ms / result.mean_ms:.1f} |"
        )
    return "\n".join(lines)


def format_verdict(results: dict[str, Result]) -> str:
    origin = next(result for result in results.values() if result.variant.name.startswith("origin"))
    lines = []
    for result in results.values():
        if result.variant.backend != "PostgreSQL" or result is origin:
            continue
        ratio = origin.median_ms / result.median_ms
        verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
        lines.append(
            f"- {result.variant.name}: origin/cronledger = {ratio:.1f}x by median, "
            f"{origin.mean_ms / result.mean_ms:.1f}x by mean; "
            f"target {TARGET_RATIO:.0f}x {verdict}"
        )
    return "\n".join(lines)


# First run in a new process


async def cold_child(variant_name: str, url: str, spool_dir: Path) -> None:
    """Time the first run of one variant in this fresh process and print it as JSON."""
    variants = {
        "origin": origin_variant(url),
        "logger": logger_variant(url, "PostgreSQL", spool_dir),
        "track": track_variant(url, "PostgreSQL", spool_dir),
    }
    elapsed = await time_once(variants[variant_name].run_once)
    print(json.dumps({"variant": variant_name, "ns": elapsed}))


def measure_cold(url: str, spool_dir: Path, runs: int, seed: int) -> dict[str, list[float]]:
    """Start ``runs`` processes per variant, interleaved, and collect their first-run times."""
    names = ["origin", "logger", "track"]
    shuffler = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in names}

    for _ in range(runs):
        order = list(names)
        shuffler.shuffle(order)
        for name in order:
            completed = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--cold-child",
                    name,
                    "--database-url",
                    url,
                    "--spool-dir",
                    str(spool_dir),
                ],
                capture_output=True,
                text=True,
            )
            if completed.returncode != 0:
                raise SystemExit(
                    f"first-run process for {name} failed with exit status "
                    f"{completed.returncode}:\n{completed.stderr}"
                )
            samples[name].append(json.loads(completed.stdout)["ns"] / 1e6)
    return samples


def format_cold_table(samples: dict[str, list[float]]) -> str:
    labels = {
        "origin": "origin (new connection per call)",
        "logger": "cronledger CronExecutionLogger (async)",
        "track": "cronledger track() (sync)",
    }
    lines = [
        "| variant | processes | median ms | p95 ms | mean ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, values in samples.items():
        lines.append(
            f"| {labels[name]} | {len(values)} | {statistics.median(values):.3f} "
            f"| {percentile(values, 95):.3f} | {statistics.fmean(values):.3f} |"
        )
    return "\n".join(lines)


# Profiling of cronledger's per-run cost

# cronledger's two statements as store/executions.py builds them for
# PostgreSQL, written out for the driver alone. Keep them in step.
CRONLEDGER_INSERT = (
    "INSERT INTO cron_executions (run_key, service_name, execution_time, status,"
    " items_processed, heartbeat_at, host, pid)"
    " VALUES (%s, %s, %s, 'started', 0, %s, %s, %s)"
    " ON CONFLICT (run_key) DO NOTHING RETURNING id"
)
CRONLEDGER_UPDATE = (
    "UPDATE cron_executions SET status = %s, finished_at = %s, heartbeat_at = %s,"
    " duration_ms = %s, items_processed = %s, error_message = %s, exit_code = %s,"
    " output_tail = %s WHERE run_key = %s AND status IN ('started', 'timed_out')"
)


def median_microseconds(call: Callable[[], object], repeats: int) -> float:
    for _ in range(SETTLE_RUNS):
        call()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


async def async_median_microseconds(call: RunOnce, repeats: int) -> float:
    for _ in range(SETTLE_RUNS):
        await call()
    samples = [await time_once(call) for _ in range(repeats)]
    return statistics.median(samples) / 1000


def time_parts(url: str, spool_dir: Path, repeats: int) -> list[tuple[str, float]]:
    """Return the median time in microseconds of each part of one cronledger run.

    Each part runs ``repeats`` times in a row with warm caches, and the parts
    run at different moments. So they do not add up to a run of the
    interleaved table.
    """
    recorder = get_recorder(url, spool_dir)
    engine = recorder.engine
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    def driver_statements(driver: psycopg.Connection[Any]) -> None:
        start = new_start(SERVICE_NAME)
        finished_at = utc_now()
        driver.execute(
            CRONLEDGER_INSERT,
            (
                start.run_key,
                SERVICE_NAME,
                start.started_at,
                start.started_at,
                start.host,
                start.pid,
            ),
        ).fetchone()
        driver.execute(
            CRONLEDGER_UPDATE,
            ("completed", finished_at, finished_at, 1, 0, None, None, None, start.run_key),
        )

    def driver_round_trips() -> None:
        driver.execute("SELECT 1").fetchone()
        driver.execute("SELECT 1").fetchone()

    def core_statements() -> None:
        start = new_start(SERVICE_NAME)
        executions.record_start(connection, start)
        finish = executions.FinishEvent(
            start=start,
            status="completed",
            finished_at=utc_now(),
            duration_ms=1,
            items_processed=0,
        )
        executions.record_finish(connection, finish)

    def build_insert() -> object:
        start = new_start(SERVICE_NAME)
        statement = (
            postgresql.insert(cron_executions)
            .values(
                run_key=start.run_key,
                service_name=SERVICE_NAME,
                execution_time=start.started_at,
                status=STARTED,
                items_processed=0,
                heartbeat_at=start.started_at,
                host=start.host,
                pid=start.pid,
            )
            .on_conflict_do_nothing(index_elements=["run_key"])
            .returning(cron_executions.c.id)
        )
        return statement._generate_cache_key()

    def build_update() -> object:
        finished_at = utc_now()
        statement = (
            cron_executions.update()
            .where(
                cron_executions.c.run_key == "0" * 32,
                cron_executions.c.status.in_(OVERWRITABLE_STATUSES),
            )
            .values(
                status="completed",
                finished_at=finished_at,
                heartbeat_at=finished_at,
                duration_ms=1,
                items_processed=0,
                error_message=None,
                exit_code=None,
                output_tail=None,
            )
        )
        return statement._generate_cache_key()

    def checkout() -> None:
        with autocommit.connect():
            pass

    def tracker_cycle() -> None:
        tracker = Tracker(SERVICE_NAME, url, spool_dir)
        tracker.begin()
        tracker.end(items_processed=0)

    def logger_constructor() -> object:
        return CronExecutionLogger(SERVICE_NAME, url, spool_dir=spool_dir)

    parts: list[tuple[str, Callable[[], object]]] = [
        (
            "psycopg on one open connection: cronledger's INSERT + UPDATE",
            lambda: driver_statements(driver),
        ),
        (
            "the same with synchronous_commit=off",
            lambda: driver_statements(unsynced_driver),
        ),
        ("psycopg on one open connection: SELECT 1 twice (no commit)", driver_round_trips),
        ("SQLAlchemy record_start + record_finish on one open connection", core_statements),
        ("build the INSERT construct and its cache key", build_insert),
        ("build the UPDATE construct and its cache key", build_update),
        (
            "engine.execution_options(isolation_level=AUTOCOMMIT)",
            lambda: engine.execution_options(isolation_level="AUTOCOMMIT"),
        ),
        ("pool checkout + checkin of the AUTOCOMMIT connection", checkout),
        ("ensure_schema() once the schema was checked", lambda: ensure_schema(engine)),
        ("spool.pending(): scandir of the spool directory", recorder.spool.pending),
        ("new_start(): uuid4, gethostname, now", lambda: new_start(SERVICE_NAME)),
        ("CronExecutionLogger(...) constructor", logger_constructor),
        ("Tracker begin + end, sync, in this thread", tracker_cycle),
    ]

    driver = psycopg.connect(url, autocommit=True)
    unsynced_driver = psycopg.connect(url, autocommit=True, options="-c synchronous_commit=off")
    connection = autocommit.connect()
    try:
        timings = [(label, median_microseconds(call, repeats)) for label, call in parts]
    finally:
        connection.close()
        unsynced_driver.close()
        driver.close()

    async def async_parts() -> list[tuple[str, float]]:
        async def new_connection() -> None:
            opened = await psycopg.AsyncConnection.connect(url, autocommit=True)
            await opened.close()

        async def thread_hop() -> None:
            await asyncio.to_thread(int)

        return [
            (
                "psycopg AsyncConnection.connect + close (origin: twice per run)",
                await async_median_microseconds(new_connection, max(repeats // 10, 10)),
            ),
            (
                "asyncio.to_thread(int) (CronExecutionLogger: twice per run)",
                await async_median_microseconds(thread_hop, repeats),
            ),
        ]

    return timings + asyncio.run(async_parts())


def profile_tracker(url: str, spool_dir: Path, repeats: int) -> str:
    """Profile ``repeats`` sync begin/end cycles and return the top of the listing.

    cProfile records only the thread that enabled it, so this profiles the
    sync core that CronExecutionLogger runs in its worker thread.
    """

    def cycles() -> None:
        for _ in range(repeats):
            tracker = Tracker(SERVICE_NAME, url, spool_dir)
            tracker.begin()
            tracker.end(items_processed=0)

    cycles()
    profiler = cProfile.Profile()
    profiler.enable()
    cycles()
    profiler.disable()

    output = io.StringIO()
    stats = pstats.Stats(profiler, stream=output)
    stats.strip_dirs().sort_stats("cumulative").print_stats(30)
    return output.getvalue()


# Main


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the tracking time per run of the origin pattern and of cronledger."
    )
    parser.add_argument(
        "--runs", type=int, default=1000, help="timed runs per variant (default: 1000)"
    )
    parser.add_argument(
        "--warmup", type=int, default=50, help="untimed runs per variant first (default: 50)"
    )
    parser.add_argument(
        "--block",
        type=int,
        default=10,
        help="timed runs of one variant in a row within a round (default: 10)",
    )
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="URL of an existing PostgreSQL database. The benchmark creates and drops its "
        f"own database on that server (default: {DEFAULT_DATABASE_URL})",
    )
    parser.add_argument(
        "--cold-runs",
        type=int,
        default=0,
        help="new processes per variant that each time their first run (default: 0, none)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also time the parts of one cronledger run and print a cProfile listing",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the shuffled round order (default: 1)"
    )
    parser.add_argument(
        "--cold-child", choices=["origin", "logger", "track"], help=argparse.SUPPRESS
    )
    parser.add_argument("--spool-dir", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)

    if arguments.runs < 2:
        parser.error(f"--runs must be at least 2, got {arguments.runs}")
    if arguments.warmup < 0:
        parser.error(f"--warmup must not be negative, got {arguments.warmup}")
    if arguments.block < 1:
        parser.error(f"--block must be at least 1, got {arguments.block}")
    if arguments.cold_runs < 0:
        parser.error(f"--cold-runs must not be negative, got {arguments.cold_runs}")
    return arguments


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    if arguments.cold_child is not None:
        asyncio.run(cold_child(arguments.cold_child, arguments.database_url, arguments.spool_dir))
        return

    admin_url = server_url(arguments.database_url)
    with tempfile.TemporaryDirectory(prefix="cronledger-bench-") as temporary:
        directory = Path(temporary)
        spool_dir = directory / "spool"
        sqlite_url = f"sqlite:///{directory / 'cronledger.db'}"

        with fresh_database(admin_url) as postgres_url:
            create_schema(postgres_url)
            create_schema(sqlite_url)
            variants = [
                origin_variant(postgres_url),
                logger_variant(postgres_url, "PostgreSQL", spool_dir),
                track_variant(postgres_url, "PostgreSQL", spool_dir),
                logger_variant(sqlite_url, "SQLite file", spool_dir),
                track_variant(sqlite_url, "SQLite file", spool_dir),
            ]

            load_before = load_average()
            started = time.monotonic()
            results = asyncio.run(
                measure(variants, arguments.runs, arguments.warmup, arguments.block, arguments.seed)
            )
            elapsed = time.monotonic() - started
            load_after = load_average()

            print("## Tracking overhead per run\n")
            print(format_table(results))
            print()
            print(format_verdict(results))
            print(
                f"\n{arguments.runs} timed runs per variant after {arguments.warmup} warm-up runs, "
                f"in blocks of {arguments.block} (each after {SETTLE_RUNS} untimed runs) "
                f"in shuffled rounds (seed {arguments.seed}); {elapsed:.1f} s. "
                f"Load average (1, 5, 15 min): {load_before} before, {load_after} after."
            )

            if arguments.cold_runs:
                cold = measure_cold(postgres_url, spool_dir, arguments.cold_runs, arguments.seed)
                print("\n## First run in a new process (PostgreSQL)\n")
                print(format_cold_table(cold))

            if arguments.profile:
                parts = time_parts(postgres_url, spool_dir, arguments.runs)
                print("\n## Parts of one cronledger run (PostgreSQL, median of each part)\n")
                print("| part | median us |\n| --- | ---: |")
                for label, microseconds in parts:
                    print(f"| {label} | {microseconds:.1f} |")
                print("\n## cProfile of Tracker begin + end (sync)\n")
                print(profile_tracker(postgres_url, spool_dir, min(arguments.runs, 500)))

            print("\n## Machine\n")
            for label, value in machine_facts(postgres_url):
                print(f"- {label}: {value}")
            print(f"- command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
