"""Measure cronledger statistics at scale against the origin dashboard queries.

The benchmark fills one dedicated PostgreSQL database with generated runs
(10 million by default, over about 60 days) and then times, side by side:

- cronledger's ``service_stats()`` for all services, all time and last 7
  days, each with p50/p95 and with ``percentiles=False`` (what a list view
  needs: counts, items, average and maximum duration). Each of these runs
  twice: as a long-running reader (the dashboard, the API) calls it, with
  CHANGED_SERVICES services having recorded a run since its previous call
  (an untimed call catches up on the other variants' runs, then the runs
  are written, untimed, before each timed call), and as a process's first
  call, with nothing cached. The 7-day windows start a second after an hour
  boundary when the script starts, so the raw rows at their start are a
  whole hour, the most a window reads;
- the first call after a 7-day window's start passed an hour boundary, in a
  reader that read the next window ahead 30 s before the hour (as the
  dashboard's overview does), with CHANGED_SERVICES services changed in
  between;
- ``service_stats()`` for one service, all time and last 24 hours;
- the two queries that the dashboard of the design cronledger replaces ran on
  ``cron_executions`` on every page view (the 7-day aggregate and the latest
  success per service), alone and together as one page view.

Every round runs each variant once in a shuffled order, after warm-up rounds,
so drift on the machine spreads over all variants alike. The script also
times the bulk load (with the rollup trigger disabled), ``rebuild_rollups()``,
and the per-row cost of the trigger on the insert of a run and on the update
that finishes it. It checks cronledger's 7-day and all-time figures against
the same figures computed from the raw rows, and its p50/p95 estimates against
the exact nearest-rank percentiles.

The database is created on the server of ``--database-url`` (so the user
needs CREATEDB) and dropped at the end unless ``--keep`` is given. A kept
database with the same ``--runs`` and ``--services`` is reused by the next
run, which then skips the load::

    python benchmarks/stats_at_scale.py --runs 10000000 --services 1000 --keep

``--profile`` prints EXPLAIN (ANALYZE, BUFFERS) of the statements that
``service_stats()`` sends for all services, and a cProfile listing. The
script also prints them when a target is missed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import logging
import math
import os
import platform
import pstats
import random
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url

from cronledger.bucket_cache import forget
from cronledger.stats import ServiceStats, read_ahead, service_stats
from cronledger.store.engine import dispose_engines, get_engine
from cronledger.store.migrate import upgrade
from cronledger.store.rollups import rebuild_rollups

log = logging.getLogger("stats_at_scale")

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_DATABASE_NAME = "cronledger_bench_stats"
TRIGGER_NAME = "cronledger_rollups"
# Services of the sample runs that time the trigger. The samples are deleted afterwards.
SAMPLE_SERVICE_PREFIX = "trigger-sample-"

# Targets for the statistics of all services.
TARGET_MAX_MS = 100.0
TARGET_MIN_RATIO = 50.0
# The variants that read the statistics of all services, which the targets apply to.
ALL_SERVICES_KEYS = ("a1", "a2", "b1", "b2", "b1h", "a1c", "a2c", "b1c", "b2c")
# Services that record a run between two timed calls of the a and b variants:
# at 10 million runs in 60 days about two runs start per second, so a
# dashboard that refreshes every 5 s finds some 10 services changed between
# two reads. Twice that, to stay on the safe side.
CHANGED_SERVICES = 20
CHANGED_RUN_KEY_PREFIX = "changed-"

SPAN_DAYS = 60
BATCH_ROWS = 1_000_000
TRIGGER_SAMPLE_ROWS = 20_000
TRIGGER_SAMPLE_REPEATS = 3

# Generates runs number first to last of 1 to runs. Run g starts in the g-th
# of runs equal slots of the span_seconds before anchor, at a random point in
# its slot, so the heap is in start order as in a real table. The service is
# floor(services * u^2) for a uniform u: service 0 gets about 3 % of the runs
# (every 16 s at 10 million runs over 60 days), service 999 of 1000 about
# 0.05 % (every 17 min). Statuses: 0.1 % started (never finished), 1 %
# timed_out, 8 % failed with an error message, the rest completed. Durations
# are log-normal around a base of 50 ms to 25.6 s per service; 70 % of the
# completed runs process no items and the others up to about 3,000.
GENERATE_RUNS = """
INSERT INTO cron_executions (
    service_name, execution_time, status, items_processed, error_message,
    duration_ms, finished_at, host, pid, exit_code, run_key)
SELECT
    'svc-' || lpad(service::text, 4, '0'),
    started_at,
    status,
    CASE WHEN status = 'completed' AND u_items >= 0.7
        THEN floor(exp(8 * (u_items - 0.7) / 0.3))::integer ELSE 0 END,
    CASE status
        WHEN 'failed' THEN (ARRAY[
            'ConnectionError: connection refused by upstream API',
            'TimeoutError: request to payment gateway timed out after 30 s',
            'IntegrityError: duplicate key value violates unique constraint',
            'ValueError: unexpected empty response body'])[1 + floor(u_error * 4)::integer]
        WHEN 'timed_out' THEN 'no finish reported within the maximum runtime'
    END,
    CASE WHEN status IN ('completed', 'failed') THEN duration END,
    CASE WHEN status IN ('completed', 'failed')
        THEN started_at + duration * interval '1 millisecond' END,
    'worker-' || (service %% 16),
    1000 + floor(u_error * 60000)::integer,
    CASE status WHEN 'completed' THEN 0 WHEN 'failed' THEN 1 END,
    md5(%(key_prefix)s || g::text)
FROM (
    SELECT
        g,
        service,
        started_at,
        u_items,
        u_error,
        CASE
            WHEN u_status < 0.001 THEN 'started'
            WHEN u_status < 0.011 THEN 'timed_out'
            WHEN u_status < 0.091 THEN 'failed'
            ELSE 'completed'
        END AS status,
        LEAST(3600000, round(
            50 * power(2, (service * 7919) %% 10)
            * exp(0.8 * sqrt(-2 * ln(1 - u_normal_1)) * cos(2 * pi() * u_normal_2))
        ))::integer AS duration
    FROM (
        SELECT
            g,
            floor(%(services)s * power(random(), 2))::integer AS service,
            %(anchor)s::timestamptz
                - make_interval(secs => %(span_seconds)s::float8
                    * (1 - (g - 1 + random()) / %(runs)s)) AS started_at,
            random() AS u_status,
            random() AS u_items,
            random() AS u_error,
            random() AS u_normal_1,
            random() AS u_normal_2
        FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
    ) AS draws
) AS runs
"""

# The origin dashboard's two queries, verbatim.
ORIGIN_AGGREGATE = """
SELECT service_name, COUNT(*) AS total_executions,
    COUNT(CASE WHEN status = 'completed' THEN 1 END) AS successful_executions,
    COUNT(CASE WHEN status = 'failed' THEN 1 END) AS failed_executions,
    SUM(items_processed) AS total_items_processed,
    AVG(duration_ms) AS avg_duration_ms
FROM cron_executions
WHERE execution_time > NOW() - INTERVAL '7 days'
GROUP BY service_name
"""
ORIGIN_LATEST_SUCCESS = """
SELECT service_name, MAX(execution_time) AS last_execution
FROM cron_executions
WHERE status = 'completed'
GROUP BY service_name
"""

# The same aggregate from a fixed start, for the correctness check. It uses
# >= because service_stats() counts the window [since, until).
CHECK_AGGREGATE = ORIGIN_AGGREGATE.replace(
    "execution_time > NOW() - INTERVAL '7 days'", "execution_time >= :since"
)
CHECK_ALL_TIME = """
SELECT service_name, COUNT(*),
    COUNT(CASE WHEN status = 'completed' THEN 1 END),
    COUNT(CASE WHEN status = 'failed' THEN 1 END),
    COUNT(CASE WHEN status = 'timed_out' THEN 1 END),
    COUNT(CASE WHEN status = 'started' THEN 1 END),
    COALESCE(SUM(items_processed), 0),
    MAX(CASE WHEN duration_ms < 0 THEN 0 ELSE duration_ms END)
FROM cron_executions
GROUP BY service_name
"""
# Exact nearest-rank p50 and p95 per service: percentile_disc returns the
# first value whose cumulative share reaches the fraction. {where} narrows
# the rows to a window.
CHECK_PERCENTILES = """
SELECT service_name,
    percentile_disc(0.5) WITHIN GROUP (ORDER BY duration),
    percentile_disc(0.95) WITHIN GROUP (ORDER BY duration)
FROM (
    SELECT service_name, CASE WHEN duration_ms < 0 THEN 0 ELSE duration_ms END AS duration
    FROM cron_executions
    WHERE duration_ms IS NOT NULL {where}
) AS durations
GROUP BY service_name
"""


# Database setup


def server_url(raw: str) -> str:
    """Return ``raw`` as a plain postgresql:// URL that both libpq and cronledger read."""
    url = make_url(raw)
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise SystemExit(f"invalid --database-url {raw!r}: give a postgresql:// URL")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def database_url(admin_url: str, name: str) -> str:
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@dataclass
class LoadFacts:
    """Facts of one load of the benchmark database, stored as its comment for reuse."""

    runs: int
    services: int
    generated_at: str
    load_seconds: float
    rebuild_seconds: float
    reused: bool = False

    def to_comment(self) -> str:
        fields = {key: value for key, value in vars(self).items() if key != "reused"}
        return json.dumps({"cronledger_stats_benchmark": fields})


def stored_load_facts(admin_url: str, name: str) -> LoadFacts | None:
    """Return the facts of a complete earlier load, or None if there is none."""
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        row = admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
    if row is None or not row[0]:
        return None
    try:
        fields = json.loads(row[0])["cronledger_stats_benchmark"]
        return LoadFacts(**fields, reused=True)
    except (ValueError, KeyError, TypeError):
        return None


def drop_database(admin_url: str, name: str) -> None:
    dispose_engines()
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare_database(admin_url: str, name: str, runs: int, services: int, fresh: bool) -> LoadFacts:
    """Reuse a kept database that matches ``runs`` and ``services``, or build a new one."""
    url = database_url(admin_url, name)
    facts = None if fresh else stored_load_facts(admin_url, name)
    if facts is not None and (facts.runs, facts.services) == (runs, services):
        with psycopg.connect(url) as connection:
            # Not the runs that earlier runs of this script added between calls.
            row = connection.execute(
                "SELECT count(*) FROM cron_executions WHERE run_key NOT LIKE %s",
                (CHANGED_RUN_KEY_PREFIX + "%",),
            ).fetchone()
        count = row[0] if row is not None else 0
        if count == runs:
            log.info(
                "reusing database %s: %d runs, generated at %s",
                name,
                count,
                facts.generated_at,
            )
            return facts
        log.info("database %s has %d runs, expected %d: rebuilding it", name, count, runs)

    drop_database(admin_url, name)
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        raise SystemExit(f"failed to create database {name} via {admin_url}: {error}") from None

    engine = get_engine(url)
    upgrade(engine)
    facts = load_runs(url, engine, runs, services)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'COMMENT ON DATABASE "{name}" IS {quote_literal(facts.to_comment())}')
    return facts


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def load_runs(url: str, engine: Engine, runs: int, services: int) -> LoadFacts:
    """Insert ``runs`` generated runs with the trigger disabled, then rebuild the rollups."""
    anchor = datetime.now(UTC)
    load_seconds = 0.0
    with psycopg.connect(url) as connection:
        connection.execute(f"ALTER TABLE cron_executions DISABLE TRIGGER {TRIGGER_NAME}")
        connection.commit()
        # A fixed seed makes the same --runs and --services give the same rows,
        # apart from the anchor time.
        connection.execute("SELECT setseed(0.42)")
        for first in range(1, runs + 1, BATCH_ROWS):
            last = min(first + BATCH_ROWS - 1, runs)
            started = time.perf_counter()
            connection.execute(
                GENERATE_RUNS,
                {
                    "first": first,
                    "last": last,
                    "anchor": anchor,
                    "runs": runs,
                    "span_seconds": SPAN_DAYS * 86400,
                    "services": services,
                    "key_prefix": "run-",
                },
            )
            connection.commit()
            load_seconds += time.perf_counter() - started
            log.info("inserted runs up to %d of %d (%.1f s so far)", last, runs, load_seconds)
        connection.execute(f"ALTER TABLE cron_executions ENABLE TRIGGER {TRIGGER_NAME}")
        connection.commit()

    log.info("rebuilding rollups")
    started = time.perf_counter()
    rebuild_rollups(engine)
    rebuild_seconds = time.perf_counter() - started
    log.info("rebuilt rollups in %.1f s", rebuild_seconds)
    return LoadFacts(
        runs=runs,
        services=services,
        generated_at=anchor.isoformat(timespec="seconds"),
        load_seconds=load_seconds,
        rebuild_seconds=rebuild_seconds,
    )


def vacuum_analyze(url: str) -> float:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")
    elapsed = time.perf_counter() - started
    log.info("VACUUM ANALYZE took %.1f s", elapsed)
    return elapsed


# Per-row cost of the rollup trigger


@dataclass
class TriggerCost:
    """Seconds for the same number of rows with the trigger enabled and disabled."""

    method: str
    rows: int
    enabled_seconds: list[float] = field(default_factory=list)
    disabled_seconds: list[float] = field(default_factory=list)

    @property
    def enabled_us_per_row(self) -> float:
        return statistics.median(self.enabled_seconds) / self.rows * 1e6

    @property
    def disabled_us_per_row(self) -> float:
        return statistics.median(self.disabled_seconds) / self.rows * 1e6

    @property
    def trigger_us_per_row(self) -> float:
        return self.enabled_us_per_row - self.disabled_us_per_row


@contextmanager
def trigger_disabled(connection: psycopg.Connection[Any], disabled: bool) -> Iterator[None]:
    """Disable the rollup trigger for the block if ``disabled``, and enable it afterwards."""
    if not disabled:
        yield
        return
    connection.execute(f"ALTER TABLE cron_executions DISABLE TRIGGER {TRIGGER_NAME}")
    try:
        yield
    finally:
        connection.execute(f"ALTER TABLE cron_executions ENABLE TRIGGER {TRIGGER_NAME}")


@dataclass(frozen=True)
class SampleRun:
    """One generated run of the last hour, for timing the trigger."""

    service_name: str
    started_at: datetime
    status: str
    error_message: str | None
    duration_ms: int
    finished_at: datetime
    run_key: str


def sample_runs(rows: int, services: int, seed: int) -> list[SampleRun]:
    """Return ``rows`` finished runs of the last hour, in start order, of sample services."""
    generator = random.Random(seed)
    now = datetime.now(UTC)
    runs = []
    for index in range(rows):
        started_at = now - timedelta(seconds=3600 * (1 - (index + generator.random()) / rows))
        failed = generator.random() < 0.08
        duration_ms = round(generator.lognormvariate(math.log(1000), 0.8))
        runs.append(
            SampleRun(
                service_name=f"{SAMPLE_SERVICE_PREFIX}{generator.randrange(services):04d}",
                started_at=started_at,
                status="failed" if failed else "completed",
                error_message=(
                    "ConnectionError: connection refused by upstream API" if failed else None
                ),
                duration_ms=duration_ms,
                finished_at=started_at + timedelta(milliseconds=duration_ms),
                run_key=uuid.uuid4().hex,
            )
        )
    return runs


INSERT_FINISHED_RUN = (
    "INSERT INTO cron_executions (service_name, execution_time, status, items_processed,"
    " error_message, duration_ms, finished_at, run_key) VALUES (%s, %s, %s, 0, %s, %s, %s, %s)"
)
# The start and the finish as cronledger.store.executions writes them:
# record_start() inserts the row as started, record_finish() updates it by
# run key.
INSERT_STARTED_RUN = (
    "INSERT INTO cron_executions (service_name, execution_time, status, items_processed,"
    " heartbeat_at, run_key) VALUES (%s, %s, 'started', 0, %s, %s)"
)
FINISH_RUN = (
    "UPDATE cron_executions SET status = %s, finished_at = %s, heartbeat_at = %s,"
    " duration_ms = %s, items_processed = 0, error_message = %s, exit_code = %s"
    " WHERE run_key = %s AND status IN ('started', 'timed_out')"
)


def insert_one_by_one(url: str, runs: list[SampleRun], trigger_enabled: bool) -> float:
    """Insert each finished run in its own transaction, as a producer does, and return the seconds.

    The INSERTs are pipelined, so the time is the server's work and not the
    network round trips. Commits still wait for the WAL flush.
    """
    parameters = [
        (
            run.service_name,
            run.started_at,
            run.status,
            run.error_message,
            run.duration_ms,
            run.finished_at,
            run.run_key,
        )
        for run in runs
    ]
    with psycopg.connect(url, autocommit=True) as connection:
        with trigger_disabled(connection, disabled=not trigger_enabled):
            started = time.perf_counter()
            with connection.cursor() as cursor:
                cursor.executemany(INSERT_FINISHED_RUN, parameters)
            elapsed = time.perf_counter() - started
        remove_sample_services(connection)
    return elapsed


def finish_one_by_one(url: str, runs: list[SampleRun], trigger_enabled: bool) -> float:
    """Insert the runs as started, then time the UPDATEs that finish them, one transaction each.

    The starts are inserted with the trigger enabled, as in production, and
    are not timed. The UPDATEs are pipelined like the INSERTs of
    ``insert_one_by_one()``.
    """
    starts = [(run.service_name, run.started_at, run.started_at, run.run_key) for run in runs]
    finishes = [
        (
            run.status,
            run.finished_at,
            run.finished_at,
            run.duration_ms,
            run.error_message,
            1 if run.status == "failed" else 0,
            run.run_key,
        )
        for run in runs
    ]
    with psycopg.connect(url, autocommit=True) as connection:
        with connection.cursor() as cursor:
            cursor.executemany(INSERT_STARTED_RUN, starts)
        with trigger_disabled(connection, disabled=not trigger_enabled):
            started = time.perf_counter()
            with connection.cursor() as cursor:
                cursor.executemany(FINISH_RUN, finishes)
            elapsed = time.perf_counter() - started
        remove_sample_services(connection)
    return elapsed


def remove_sample_services(connection: psycopg.Connection[Any]) -> None:
    """Delete the sample services' runs, rollups and service rows."""
    pattern = SAMPLE_SERVICE_PREFIX + "%"
    for table in ("cron_executions", "cron_rollups", "cron_duration_bins"):
        connection.execute(f"DELETE FROM {table} WHERE service_name LIKE %s", (pattern,))
    connection.execute("DELETE FROM cron_services WHERE name LIKE %s", (pattern,))


def insert_in_one_statement(url: str, rows: int, services: int, trigger_enabled: bool) -> float:
    """Insert ``rows`` runs of the last hour in one INSERT ... SELECT, time it, and roll back.

    The rollback leaves the row count, the rollups and the trigger as they were.
    """
    with psycopg.connect(url) as connection:
        if not trigger_enabled:
            connection.execute(f"ALTER TABLE cron_executions DISABLE TRIGGER {TRIGGER_NAME}")
        started = time.perf_counter()
        connection.execute(
            GENERATE_RUNS,
            {
                "first": 1,
                "last": rows,
                "runs": rows,
                "anchor": datetime.now(UTC),
                "span_seconds": 3600,
                "services": services,
                "key_prefix": "trigger-sample-",
            },
        )
        elapsed = time.perf_counter() - started
        connection.rollback()
    return elapsed


def measure_trigger_cost(url: str, rows: int, services: int, repeats: int) -> list[TriggerCost]:
    """Time writes with the trigger enabled and disabled, alternating, after a warm-up pair."""
    with psycopg.connect(url, autocommit=True) as connection:
        remove_sample_services(connection)

    inserts = TriggerCost(f"one INSERT of a finished run per transaction ({rows} runs)", rows)
    finishes = TriggerCost(
        f"one UPDATE from started to completed or failed per transaction ({rows} runs)", rows
    )
    warmup = sample_runs(rows // 10, services, seed=0)
    for write in (insert_one_by_one, finish_one_by_one):
        write(url, warmup, True)
        write(url, warmup, False)
    for repeat in range(repeats):
        runs = sample_runs(rows, services, seed=repeat + 1)
        inserts.enabled_seconds.append(insert_one_by_one(url, runs, trigger_enabled=True))
        inserts.disabled_seconds.append(insert_one_by_one(url, runs, trigger_enabled=False))
        finishes.enabled_seconds.append(finish_one_by_one(url, runs, trigger_enabled=True))
        finishes.disabled_seconds.append(finish_one_by_one(url, runs, trigger_enabled=False))

    bulk = TriggerCost(f"one INSERT ... SELECT of {rows} runs in one transaction", rows)
    for _ in range(repeats):
        bulk.enabled_seconds.append(insert_in_one_statement(url, rows, services, True))
        bulk.disabled_seconds.append(insert_in_one_statement(url, rows, services, False))

    costs = [inserts, finishes, bulk]
    for cost in costs:
        log.info(
            "trigger cost, %s: %.1f us per row enabled, %.1f us disabled",
            cost.method,
            cost.enabled_us_per_row,
            cost.disabled_us_per_row,
        )
    return costs


# Timed variants


@dataclass(frozen=True)
class Variant:
    """One way of getting statistics, timed as a whole. ``run`` returns the rows it got."""

    key: str
    label: str
    run: Callable[[], int]
    # Called before each timed call, untimed: the writes of other clients, or
    # forgetting the cached figures.
    prepare: Callable[[], object] | None = None
    # The engine ``run`` reads through, when not the shared one, for the profile.
    engine: Engine | None = None


def record_changes(engine: Engine, services: int, rng: random.Random) -> Callable[[], None]:
    """Return a step that records one finished run for each of CHANGED_SERVICES services.

    The rows go through the rollup trigger like any client's and stay in
    the database, so the figures checked at the end include them.
    """

    def change() -> None:
        now = datetime.now(UTC)
        rows = [
            {
                "service": f"svc-{index:04d}",
                "start": now - timedelta(seconds=rng.uniform(5, 600)),
                "duration": rng.randint(20, 30_000),
                "key": f"{CHANGED_RUN_KEY_PREFIX}{uuid.uuid4().hex}",
            }
            for index in rng.sample(range(services), min(CHANGED_SERVICES, services))
        ]
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO cron_executions (service_name, execution_time, status,"
                    " items_processed, duration_ms, finished_at, run_key) VALUES (:service,"
                    " :start, 'completed', 0, :duration,"
                    " :start + :duration * interval '1 millisecond', :key)"
                ),
                rows,
            )

    return change


def make_variants(
    engine: Engine,
    cold_engine: Engine,
    ahead_engine: Engine,
    one_service: str,
    services: int,
    seed: int,
) -> list[Variant]:
    """Return the variants.

    The cold ones use an engine of their own, whose cache they empty. The
    hour-boundary one uses another, whose window keys would otherwise push
    the shared engine's out of its cache.
    """
    rng = random.Random(seed)
    changes = record_changes(engine, services, rng)

    def changed_since(call: Callable[[], int]) -> Callable[[], None]:
        # The other variants' changes land in the same tables, so catch up
        # on them first (untimed). The timed call then finds exactly
        # CHANGED_SERVICES services changed, matching its label.
        def prepare() -> None:
            call()
            changes()

        return prepare

    def forget_cache() -> None:
        forget(cold_engine)

    def all_time(percentiles: bool, on: Engine = engine) -> Callable[[], int]:
        return lambda: len(service_stats(on, percentiles=percentiles))

    # A window's raw edge runs from its start to the next hour boundary, so
    # a window that starts just after an hour has the largest edge. Lengthen
    # the 7-day windows by the time past the hour when the run begins. They
    # then start a second after an hour boundary and slide with the clock,
    # whatever minute the benchmark runs at.
    past_hour = timedelta(seconds=max(time.time() % 3600 - 1, 0))

    def last_7_days(percentiles: bool, on: Engine = engine) -> Callable[[], int]:
        def run() -> int:
            since = datetime.now(UTC) - timedelta(days=7) - past_hour
            return len(service_stats(on, since=since, percentiles=percentiles))

        return run

    # The first call after a sliding window's start passed an hour, in a
    # reader that read the next window ahead 30 s before, as the dashboard's
    # overview does (see read_ahead). Each round takes the hour before the
    # previous round's, so each meets a window key it has not read yet.
    first_boundary = datetime.fromtimestamp((time.time() - 7 * 86400) // 3600 * 3600, UTC)
    hours_back = itertools.count(1)
    after_hour: list[datetime] = []

    def read_ahead_of_the_hour() -> None:
        boundary = first_boundary - timedelta(hours=next(hours_back))
        before = boundary - timedelta(seconds=30)
        service_stats(ahead_engine, since=before)
        read_ahead(ahead_engine, before, within=timedelta(minutes=1))
        changes()
        # The overview's next refresh, up to 5 s after the hour.
        after_hour[:] = [boundary + timedelta(seconds=5)]

    def first_after_the_hour() -> int:
        return len(service_stats(ahead_engine, since=after_hour[0]))

    def one_all_time() -> int:
        return len(service_stats(engine, service_name=one_service))

    def one_last_24_hours() -> int:
        since = datetime.now(UTC) - timedelta(hours=24)
        return len(service_stats(engine, since=since, service_name=one_service))

    def origin_aggregate() -> int:
        with engine.connect() as connection:
            return len(connection.execute(text(ORIGIN_AGGREGATE)).all())

    def origin_latest_success() -> int:
        with engine.connect() as connection:
            return len(connection.execute(text(ORIGIN_LATEST_SUCCESS)).all())

    def origin_page_view() -> int:
        return origin_aggregate() + origin_latest_success()

    changed = f"{CHANGED_SERVICES} services changed since the last call"
    cold = "nothing cached"
    cached = [
        ("a1", "all time, p50/p95", all_time(True)),
        ("a2", "all time, no percentiles", all_time(False)),
        ("b1", "7 days, p50/p95", last_7_days(True)),
        ("b2", "7 days, no percentiles", last_7_days(False)),
    ]
    return [
        *(
            Variant(key, f"all services, {label}, {changed}", call, changed_since(call))
            for key, label, call in cached
        ),
        Variant(
            "b1h",
            f"all services, 7 days, p50/p95, first call after the start passed an hour,"
            f" read ahead 30 s before, {changed}",
            first_after_the_hour,
            read_ahead_of_the_hour,
            ahead_engine,
        ),
        Variant(
            "a1c",
            f"all services, all time, p50/p95, {cold}",
            all_time(True, cold_engine),
            forget_cache,
            cold_engine,
        ),
        Variant(
            "a2c",
            f"all services, all time, no percentiles, {cold}",
            all_time(False, cold_engine),
            forget_cache,
            cold_engine,
        ),
        Variant(
            "b1c",
            f"all services, 7 days, p50/p95, {cold}",
            last_7_days(True, cold_engine),
            forget_cache,
            cold_engine,
        ),
        Variant(
            "b2c",
            f"all services, 7 days, no percentiles, {cold}",
            last_7_days(False, cold_engine),
            forget_cache,
            cold_engine,
        ),
        Variant("c1", f"cronledger, one service ({one_service}), all time", one_all_time),
        Variant("c2", f"cronledger, one service ({one_service}), last 24 h", one_last_24_hours),
        Variant("d", "origin 7-day aggregate", origin_aggregate),
        Variant("e", "origin latest success per service", origin_latest_success),
        Variant("f", "origin page view (d + e)", origin_page_view),
    ]


@dataclass
class Result:
    """The times of one variant in milliseconds, and the rows of its last call."""

    variant: Variant
    samples_ms: list[float] = field(default_factory=list)
    rows: int = 0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p95_ms(self) -> float:
        return percentile(self.samples_ms, 95)


def percentile(values: list[float], percent: int) -> float:
    """Return the ``percent`` percentile, interpolated between the samples."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def measure(variants: list[Variant], rounds: int, warmup: int, seed: int) -> dict[str, Result]:
    """Run ``warmup`` and then ``rounds`` rounds. Each round runs every variant once."""
    shuffler = random.Random(seed)
    results = {variant.key: Result(variant) for variant in variants}
    for round_number in range(warmup + rounds):
        order = list(variants)
        shuffler.shuffle(order)
        for variant in order:
            if variant.prepare is not None:
                variant.prepare()
            started = time.perf_counter_ns()
            rows = variant.run()
            elapsed_ms = (time.perf_counter_ns() - started) / 1e6
            if round_number >= warmup:
                results[variant.key].samples_ms.append(elapsed_ms)
                results[variant.key].rows = rows
        if round_number >= warmup:
            log.info("round %d of %d done", round_number - warmup + 1, rounds)
    return results


# Correctness check


def check_figures(engine: Engine) -> list[str]:
    """Compare cronledger's figures with the same figures computed from the raw rows.

    Returns one line per check, starting with "OK" or "MISMATCH".
    """
    since = datetime.now(UTC) - timedelta(days=7)
    window = {row.service_name: row for row in service_stats(engine, since=since)}
    all_time = {row.service_name: row for row in service_stats(engine)}
    window_lists = service_stats(engine, since=since, percentiles=False)
    all_time_lists = service_stats(engine, percentiles=False)
    with engine.connect() as connection:
        origin = {
            row[0]: row for row in connection.execute(text(CHECK_AGGREGATE), {"since": since})
        }
        latest: dict[str, datetime] = {
            name: last for name, last in connection.execute(text(ORIGIN_LATEST_SUCCESS))
        }
        raw_all_time = {row[0]: row for row in connection.execute(text(CHECK_ALL_TIME))}
        # The exact percentiles sort every duration, and more memory keeps the sorts off disk.
        connection.execute(text("SET LOCAL work_mem = '256MB'"))
        exact_window = {
            row[0]: row[1:]
            for row in connection.execute(
                text(CHECK_PERCENTILES.format(where="AND execution_time >= :since")),
                {"since": since},
            )
        }
        exact_all_time = {
            row[0]: row[1:] for row in connection.execute(text(CHECK_PERCENTILES.format(where="")))
        }

    return [
        check_window(window, origin),
        check_latest(all_time, latest),
        check_all_time(all_time, raw_all_time),
        check_percentiles("last 7 days", window, exact_window),
        check_percentiles("all time", all_time, exact_all_time),
        check_without_percentiles("last 7 days", window, window_lists),
        check_without_percentiles("all time", all_time, all_time_lists),
    ]


def check_percentiles(
    label: str, found: dict[str, ServiceStats], exact: dict[str, tuple[int, int]]
) -> str:
    """Check that every p50 and p95 estimate lies within 9.1 % plus 1 ms of the exact value.

    That is the bound cronledger.stats states for estimates from four bins
    per doubling.
    """
    mismatches = []
    worst = 0.0
    worst_value = 0
    for name, (p50, p95) in exact.items():
        stats = found.get(name)
        estimates = (
            (None, None) if stats is None else (stats.p50_duration_ms, stats.p95_duration_ms)
        )
        for percent, estimate, value in ((50, estimates[0], p50), (95, estimates[1], p95)):
            if estimate is None or abs(estimate - value) > 0.091 * value + 1:
                mismatches.append(f"{name}: exact p{percent} {value} ms, cronledger {estimate}")
            elif value > 0 and abs(estimate - value) / value > worst:
                worst = abs(estimate - value) / value
                worst_value = value
    verdict = "OK" if not mismatches else "MISMATCH"
    line = (
        f"{verdict}: {label}, p50 and p95 of {len(exact)} services are within 9.1 % plus 1 ms "
        f"of the exact nearest-rank percentiles of the raw rows (largest relative error "
        f"{worst * 100:.1f} %, at an exact value of {worst_value} ms)"
    )
    return line if not mismatches else line + "\n  " + "\n  ".join(mismatches[:20])


def check_without_percentiles(
    label: str, with_percentiles: dict[str, ServiceStats], without: list[ServiceStats]
) -> str:
    """Check that percentiles=False returns the same figures with p50 and p95 left None."""
    expected = [
        replace(stats, p50_duration_ms=None, p95_duration_ms=None)
        for _, stats in sorted(with_percentiles.items())
    ]
    mismatches = [
        f"{found.service_name}: {found} instead of {wanted}"
        for wanted, found in zip(expected, without, strict=False)
        if wanted != found
    ]
    if len(expected) != len(without):
        mismatches.append(f"{len(without)} services instead of {len(expected)}")
    verdict = "OK" if not mismatches else "MISMATCH"
    line = (
        f"{verdict}: {label}, percentiles=False returns the same figures for "
        f"{len(without)} services, with p50 and p95 None"
    )
    return line if not mismatches else line + "\n  " + "\n  ".join(mismatches[:5])


def check_window(window: dict[str, ServiceStats], origin: dict[str, Any]) -> str:
    mismatches = []
    for name, (_, total, successful, failed, items, average) in origin.items():
        stats = window.get(name)
        if stats is None:
            mismatches.append(f"{name}: missing from service_stats()")
            continue
        expected = (total, successful, failed, int(items or 0))
        found = (stats.total, stats.completed, stats.failed, stats.items_processed)
        if expected != found:
            mismatches.append(f"{name}: origin {expected}, cronledger {found}")
        if not same_average(average, stats.avg_duration_ms):
            mismatches.append(f"{name}: origin avg {average}, cronledger {stats.avg_duration_ms}")
    silent = [name for name, stats in window.items() if name not in origin and stats.total]
    mismatches += [f"{name}: runs in cronledger only" for name in silent]

    runs = sum(row[1] for row in origin.values())
    timed_out = sum(stats.timed_out for stats in window.values())
    verdict = "OK" if not mismatches else "MISMATCH"
    line = (
        f"{verdict}: last 7 days, {len(origin)} services, {runs} runs: total, completed, "
        f"failed, items and average duration per service equal the origin aggregate "
        f"(timed_out, {timed_out} runs, is counted in total but has no origin column)"
    )
    return line if not mismatches else line + "\n  " + "\n  ".join(mismatches[:20])


def check_latest(all_time: dict[str, ServiceStats], latest: dict[str, datetime]) -> str:
    mismatches = [
        f"{name}: origin {value}, cronledger {getattr(all_time.get(name), 'last_success_at', None)}"
        for name, value in latest.items()
        if all_time.get(name) is None or all_time[name].last_success_at != value
    ]
    verdict = "OK" if not mismatches else "MISMATCH"
    line = (
        f"{verdict}: last success of {len(latest)} services equals the origin latest-success query"
    )
    return line if not mismatches else line + "\n  " + "\n  ".join(mismatches[:20])


def check_all_time(all_time: dict[str, ServiceStats], raw: dict[str, Any]) -> str:
    mismatches = []
    for name, (_, total, completed, failed, timed_out, started, items, maximum) in raw.items():
        stats = all_time.get(name)
        expected = (total, completed, failed, timed_out, started, int(items), maximum)
        found = (
            None
            if stats is None
            else (
                stats.total,
                stats.completed,
                stats.failed,
                stats.timed_out,
                stats.in_progress,
                stats.items_processed,
                stats.max_duration_ms,
            )
        )
        if expected != found:
            mismatches.append(f"{name}: raw rows {expected}, cronledger {found}")
    verdict = "OK" if not mismatches else "MISMATCH"
    runs = sum(row[1] for row in raw.values())
    line = (
        f"{verdict}: all time, {len(raw)} services, {runs} runs: total, completed, failed, "
        "timed_out, started, items and max duration per service equal COUNT, SUM and MAX "
        "over the raw rows"
    )
    return line if not mismatches else line + "\n  " + "\n  ".join(mismatches[:20])


def same_average(origin: Any, cronledger: float | None) -> bool:
    if origin is None or cronledger is None:
        return origin is None and cronledger is None
    return abs(float(origin) - cronledger) <= 1e-6 * max(1.0, abs(cronledger))


# Profiling of service_stats()


@dataclass
class Statement:
    """One statement that a call sent, with the client-side time until its result arrived."""

    sql: str
    parameters: Any
    seconds: float
    rows: int


def capture_statements(engine: Engine, call: Callable[[], object]) -> tuple[float, list[Statement]]:
    """Run ``call`` once and return its wall time in seconds and the statements it sent."""
    statements: list[Statement] = []

    def before(connection: Any, cursor: Any, sql: str, parameters: Any, *_: Any) -> None:
        connection.info["benchmark_started"] = time.perf_counter()

    def after(connection: Any, cursor: Any, sql: str, parameters: Any, *_: Any) -> None:
        elapsed = time.perf_counter() - connection.info.pop("benchmark_started")
        statements.append(Statement(sql, parameters, elapsed, cursor.rowcount))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        started = time.perf_counter()
        call()
        total = time.perf_counter() - started
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)
    return total, statements


def profile_stats(engine: Engine, variants: list[Variant]) -> str:
    """Profile the calls of service_stats() for all services, each after its prepare step."""
    reports = [
        profile_call(
            variant.engine or engine,
            f"{variant.key}: {variant.label}",
            variant.run,
            variant.prepare,
        )
        for variant in variants
        if variant.key in ALL_SERVICES_KEYS
    ]
    return "\n\n".join(reports)


def statement_label(sql: str) -> str:
    tables = (
        "cron_duration_bins",
        "cron_rollups",
        "cron_services",
        "cron_missed_runs",
        "cron_executions",
    )
    for table in tables:
        if table in sql:
            return table
    return sql.split()[0]


def is_setting(statement: Statement) -> bool:
    sql = statement.sql.lstrip().upper()
    return sql.startswith("SET ") or sql.startswith("SELECT SET_CONFIG(")


def explain(engine: Engine, statement: Statement, settings: list[Statement]) -> list[str]:
    """Return the lines of EXPLAIN (ANALYZE, BUFFERS) of ``statement``.

    The ``settings`` (such as SET LOCAL jit = off) run first in the same
    transaction, as service_stats() sends them.
    """
    with engine.connect() as connection:
        for setting in settings:
            connection.exec_driver_sql(setting.sql, setting.parameters)
        rows = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS) " + statement.sql, statement.parameters
        ).all()
    return [row[0] for row in rows]


def plan_time(plan: list[str], name: str) -> str:
    """Return the value of the ``name`` line ("Planning Time" or "Execution Time") of a plan."""
    return next(
        (line.split(":", 1)[1].strip() for line in plan if line.startswith(name)),
        "?",
    )


def profile_call(
    engine: Engine,
    label: str,
    call: Callable[[], object],
    prepare: Callable[[], object] | None,
) -> str:
    """Return a report of where one call spends its time: per statement, Python, plans."""
    call()
    if prepare is not None:
        prepare()
    total, statements = capture_statements(engine, call)
    sql_seconds = sum(statement.seconds for statement in statements)
    lines = [
        f"### {label}\n",
        f"Wall time {total * 1000:.1f} ms: {sql_seconds * 1000:.1f} ms from sending each "
        f"statement to having its result in the client, {(total - sql_seconds) * 1000:.1f} ms "
        "in Python (SQLAlchemy row processing, folding, percentiles, pool).\n",
        "| statement on | rows returned | client ms | server planning | server execution |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    settings = [statement for statement in statements if is_setting(statement)]
    plans = []
    for statement in statements:
        if is_setting(statement):
            lines.append(f"| {statement.sql.strip()} | | {statement.seconds * 1000:.1f} | | |")
            continue
        plan = explain(engine, statement, settings)
        lines.append(
            f"| {statement_label(statement.sql)} | {statement.rows} "
            f"| {statement.seconds * 1000:.1f} | {plan_time(plan, 'Planning Time')} "
            f"| {plan_time(plan, 'Execution Time')} |"
        )
        plans.append(
            f"EXPLAIN (ANALYZE, BUFFERS) of the statement on {statement_label(statement.sql)}"
            f", parameters {statement.parameters}:\n\n"
            + "\n".join("    " + line for line in [*statement.sql.strip().splitlines(), "", *plan])
        )

    if prepare is not None:
        prepare()
    profiler = cProfile.Profile()
    profiler.enable()
    call()
    profiler.disable()
    output = io.StringIO()
    pstats.Stats(profiler, stream=output).sort_stats("tottime").print_stats(12)
    listing = "\n".join("    " + line for line in output.getvalue().strip().splitlines())
    return (
        "\n".join(lines) + "\n\n" + "\n\n".join(plans) + "\n\ncProfile, by own time:\n\n" + listing
    )


# Facts about the data, the database and the machine


def data_facts(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as connection:
        first, last = connection.execute(
            text("SELECT MIN(execution_time), MAX(execution_time) FROM cron_executions")
        ).one()
        recent = connection.execute(
            text(
                "SELECT COUNT(*) FROM cron_executions"
                " WHERE execution_time > NOW() - INTERVAL '7 days'"
            )
        ).scalar_one()
        rollups = connection.execute(
            text("SELECT granularity, COUNT(*) FROM cron_rollups GROUP BY 1 ORDER BY 1")
        ).all()
        bins = connection.execute(
            text("SELECT granularity, COUNT(*) FROM cron_duration_bins GROUP BY 1 ORDER BY 1")
        ).all()
        sizes = connection.execute(
            text(
                "SELECT relname, pg_total_relation_size(oid) FROM pg_class"
                " WHERE relname IN ('cron_executions', 'cron_rollups', 'cron_duration_bins')"
                " ORDER BY relname"
            )
        ).all()
        database_size = connection.execute(
            text("SELECT pg_database_size(current_database())")
        ).scalar_one()

    def by_granularity(rows: Sequence[Any]) -> str:
        return ", ".join(f"{count} {granularity}" for granularity, count in rows)

    return [
        ("start times", f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC"),
        ("runs started in the last 7 days", str(recent)),
        ("cron_rollups rows", by_granularity(rollups)),
        ("cron_duration_bins rows", by_granularity(bins)),
        (
            "table sizes with indexes",
            ", ".join(f"{name} {gibibytes(size)}" for name, size in sizes),
        ),
        ("database size", gibibytes(database_size)),
    ]


def gibibytes(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def machine_facts(url: str) -> list[tuple[str, str]]:
    settings = {}
    with psycopg.connect(url, connect_timeout=5) as connection:
        for name in (
            "server_version",
            "shared_buffers",
            "work_mem",
            "effective_cache_size",
            "max_parallel_workers_per_gather",
            "jit",
        ):
            row = connection.execute(f"SHOW {name}").fetchone()
            settings[name] = str(row[0]) if row is not None else "unknown"

    return [
        ("CPU", cpu_model()),
        ("cores", f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable by this process)"),
        ("memory", memory_total()),
        ("OS", platform.platform()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("PostgreSQL", f"{settings['server_version']}, over TCP {make_url(url).host}"),
        (
            "PostgreSQL settings",
            ", ".join(f"{name} {settings[name]}" for name in list(settings)[1:]),
        ),
        ("SQLAlchemy", metadata.version("sqlalchemy")),
        ("psycopg", f"{psycopg.__version__} ({psycopg.pq.__impl__})"),
        ("cronledger", f"{metadata.version('cronledger')}, {source_revision()}"),
    ]


def source_revision() -> str:
    """Return the git commit of the checkout and whether src/ has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "git commit unknown"
    return f"git commit {commit}" + (" with uncommitted changes in src/" if changes else "")


def format_load_average(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{value:.2f}" for value in load)


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
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


# Output


def format_table(results: dict[str, Result]) -> str:
    lines = [
        "| | query | median ms | p95 ms | rows returned |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for key, result in results.items():
        lines.append(
            f"| {key} | {result.variant.label} | {result.median_ms:.1f} "
            f"| {result.p95_ms:.1f} | {result.rows} |"
        )
    return "\n".join(lines)


def format_targets(results: dict[str, Result]) -> tuple[list[str], bool]:
    """Return the ratio and target lines, and whether every target was met."""
    page_view = results["f"].median_ms
    lines = []
    met = True
    for key in ALL_SERVICES_KEYS:
        result = results[key]
        ratio = page_view / result.median_ms
        fast = result.median_ms < TARGET_MAX_MS
        ahead = ratio >= TARGET_MIN_RATIO
        met = met and fast and ahead
        lines.append(
            f"- origin page view (f) / {result.variant.label} ({key}) = {ratio:.1f}x by median; "
            f"target {TARGET_MIN_RATIO:.0f}x {'met' if ahead else 'MISSED'}, "
            f"median {result.median_ms:.1f} ms against {TARGET_MAX_MS:.0f} ms "
            f"{'met' if fast else 'MISSED'}"
        )
    for key in ("b1", "b2"):
        lines.append(
            f"- origin 7-day aggregate (d) / {results[key].variant.label} ({key}) = "
            f"{results['d'].median_ms / results[key].median_ms:.1f}x by median"
        )
    return lines, met


def format_load(facts: LoadFacts, triggers: list[TriggerCost], vacuum_seconds: float) -> list[str]:
    earlier = (
        f" (measured when the database was built, {facts.generated_at})" if facts.reused else ""
    )
    lines = [
        f"- bulk load of {facts.runs} runs, trigger disabled: {facts.load_seconds:.1f} s "
        f"({facts.runs / facts.load_seconds:,.0f} rows/s){earlier}",
        f"- rebuild_rollups(): {facts.rebuild_seconds:.1f} s{earlier}",
        f"- VACUUM ANALYZE in this run: {vacuum_seconds:.1f} s",
    ]
    for cost in triggers:
        lines.append(
            f"- rollup trigger, {cost.method}: {cost.enabled_us_per_row:.1f} us per row "
            f"with the trigger enabled, {cost.disabled_us_per_row:.1f} us disabled, so the "
            f"trigger costs {cost.trigger_us_per_row:.1f} us per row "
            f"(median of {len(cost.enabled_seconds)} alternating pairs)"
        )
    return lines


# Main


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--runs", type=int, default=10_000_000, help="runs to generate (default: 10000000)"
    )
    parser.add_argument(
        "--services", type=int, default=1000, help="services the runs belong to (default: 1000)"
    )
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="PostgreSQL server to create the benchmark database on, as a URL to an existing "
        f"database (default: {DEFAULT_DATABASE_URL})",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the benchmark database afterwards, for re-runs and manual checks",
    )
    parser.add_argument(
        "--database-name",
        default=DEFAULT_DATABASE_NAME,
        help="name of the benchmark database, which the script drops and creates "
        f"(default: {DEFAULT_DATABASE_NAME})",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="generate the runs again even if a kept database fits"
    )
    parser.add_argument(
        "--rounds", type=int, default=20, help="measured rounds of every query (default: 20)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="unmeasured rounds first (default: 2)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print EXPLAIN (ANALYZE, BUFFERS) and a cProfile listing of service_stats() for "
        "all services even when every target is met",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the round order (default: 1)")
    arguments = parser.parse_args(argv)

    if not re.fullmatch(r"cronledger_bench[a-z0-9_]*", arguments.database_name):
        # The script drops this database, so it must not name one that contains other data.
        parser.error(
            f"invalid --database-name {arguments.database_name!r}: use lower-case letters, "
            "digits and _ after the prefix cronledger_bench"
        )
    if arguments.runs < 1:
        parser.error(f"--runs must be at least 1, got {arguments.runs}")
    if not 1 <= arguments.services <= 10_000:
        parser.error(f"--services must be between 1 and 10000, got {arguments.services}")
    if arguments.rounds < 2:
        parser.error(f"--rounds must be at least 2, got {arguments.rounds}")
    if arguments.warmup < 0:
        parser.error(f"--warmup must not be negative, got {arguments.warmup}")
    return arguments


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    logging.basicConfig(format="%(asctime)s %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    admin_url = server_url(arguments.database_url)
    url = database_url(admin_url, arguments.database_name)

    facts = prepare_database(
        admin_url, arguments.database_name, arguments.runs, arguments.services, arguments.fresh
    )
    engine = get_engine(url)
    try:
        triggers = measure_trigger_cost(
            url, TRIGGER_SAMPLE_ROWS, arguments.services, TRIGGER_SAMPLE_REPEATS
        )
        vacuum_seconds = vacuum_analyze(url)

        # The busiest service, because the generator gives service 0 the most runs.
        one_service = "svc-0000"
        # Another Engine object (the URL differs only in application_name), so
        # emptying its cache before each cold call leaves the others' alone.
        cold_engine = get_engine(f"{url}?application_name=cronledger-bench-cold")
        ahead_engine = get_engine(f"{url}?application_name=cronledger-bench-ahead")
        variants = make_variants(
            engine, cold_engine, ahead_engine, one_service, arguments.services, arguments.seed
        )
        load_before = os.getloadavg()
        results = measure(variants, arguments.rounds, arguments.warmup, arguments.seed)
        load_after = os.getloadavg()
        checks = check_figures(engine)
        target_lines, met = format_targets(results)

        print(f"## Statistics at {arguments.runs:,} runs of {arguments.services} services\n")
        print(format_table(results))
        print(
            f"\n{arguments.rounds} measured rounds after {arguments.warmup} warm-up rounds; "
            f"each round runs every query once, in shuffled order (seed {arguments.seed}).\n"
        )
        print("\n".join(target_lines))
        print("\n## Load\n")
        print("\n".join(format_load(facts, triggers, vacuum_seconds)))
        print("\n## Check\n")
        print("\n".join(f"- {line}" for line in checks))
        print("\n## Data\n")
        for label, value in data_facts(engine):
            print(f"- {label}: {value}")
        print("\n## Machine\n")
        for label, value in machine_facts(url):
            print(f"- {label}: {value}")
        print(
            "- load average (1, 5, 15 min) before and after the timed rounds: "
            f"{format_load_average(load_before)}; {format_load_average(load_after)}"
        )
        print(f"- command: {' '.join([Path(sys.executable).name, *sys.argv])}")

        if arguments.profile or not met:
            print("\n## Profile of service_stats()\n")
            print(profile_stats(engine, variants))

    finally:
        dispose_engines()
        if not arguments.keep:
            drop_database(admin_url, arguments.database_name)
            log.info("dropped database %s (pass --keep to keep it)", arguments.database_name)


if __name__ == "__main__":
    main()
