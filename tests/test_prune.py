"""Tests of ``prune_runs`` and ``cronledger prune`` on SQLite and PostgreSQL.

Pruning deletes raw rows only: the figures folded into the rollups when each
run was written must come out of ``service_stats`` unchanged.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, func, select, text

from cronledger.alerts.config import Channel
from cronledger.alerts.messages import Message
from cronledger.alerts.outbox import claim, enqueue, record_outcome
from cronledger.bucket_cache import read_versions
from cronledger.recorder import Recorder, get_recorder, utc_now
from cronledger.scheduler.claims import Fire, claim_fires
from cronledger.settings import JobSettings
from cronledger.stats import ServiceStats, service_stats
from cronledger.store import prune
from cronledger.store.executions import FinishEvent, StartEvent
from cronledger.store.migrate import ensure_schema
from cronledger.store.prune import PruneResult, prune_runs
from cronledger.store.tables import (
    cron_executions,
    cron_fire_claims,
    cron_notifications,
    cron_skipped_runs,
)

pytestmark = pytest.mark.timeout(120)

BASE = datetime(2026, 3, 1, tzinfo=UTC)

# The figures that must survive a prune.
PRESERVED_FIGURES = (
    "total",
    "completed",
    "failed",
    "timed_out",
    "in_progress",
    "items_processed",
    "avg_duration_ms",
    "max_duration_ms",
    "p50_duration_ms",
    "p95_duration_ms",
)


def at(hours: float = 0, **offset: float) -> datetime:
    return BASE + timedelta(hours=hours, **offset)


def sql_time(engine: Engine, moment: datetime) -> datetime | str:
    """Return ``moment`` as plain SQL writes it: aware on PostgreSQL, naive UTC text on SQLite."""
    if engine.dialect.name == "postgresql":
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


@pytest.fixture
def recorder(database_url: str) -> Recorder:
    recorder = get_recorder(database_url)
    ensure_schema(recorder.engine)
    return recorder


def record_run(
    recorder: Recorder,
    service: str,
    started_at: datetime,
    status: str = "completed",
    duration_ms: int = 100,
    items: int = 1,
) -> StartEvent:
    """Record a run. "started" leaves it running, and "timed_out" is set as the monitor sets it."""
    start = StartEvent(uuid.uuid4().hex, service, started_at, "test-host", 1)
    recorder.start(start)
    if status == "timed_out":
        with recorder.engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE cron_executions SET status = 'timed_out', error_message = 'timed out'"
                    " WHERE run_key = :key AND status = 'started'"
                ),
                {"key": start.run_key},
            )
    elif status != "started":
        recorder.finish(
            FinishEvent(
                start=start,
                status=status,
                finished_at=started_at + timedelta(milliseconds=duration_ms),
                duration_ms=duration_ms,
                items_processed=items,
                error_message="exit 1" if status == "failed" else None,
            )
        )
    assert recorder.spool.pending() == [], f"a {status} run of {service} was spooled"
    return start


def statuses(engine: Engine) -> dict[str, int]:
    """Return the number of rows per status in cron_executions."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(cron_executions.c.status, func.count()).group_by(cron_executions.c.status)
        ).all()
    return {status: count for status, count in rows}


def figures(engine: Engine, **window: datetime) -> dict[str, dict[str, Any]]:
    rows: list[ServiceStats] = service_stats(engine, **window)
    return {
        row.service_name: {name: getattr(row, name) for name in PRESERVED_FIGURES} for row in rows
    }


def write_history(recorder: Recorder) -> None:
    """Write runs of every status for three services, one per hour over 30 hours."""
    cycle = ("completed", "failed", "completed", "timed_out", "started")
    for hour in range(30):
        for index, service in enumerate(("alpha", "beta", "gamma")):
            status = cycle[(hour + index) % len(cycle)]
            duration = (0, 7, 1000, 2**31 - 1, 42)[hour % 5]
            record_run(recorder, service, at(hour, minutes=index), status, duration, hour)


# -- prune_runs ---------------------------------------------------------------


def test_prune_keeps_all_time_figures(recorder: Recorder) -> None:
    engine = recorder.engine
    write_history(recorder)
    rows_before = statuses(engine)
    all_time = figures(engine)
    whole_days = figures(engine, since=at(0), until=at(48))
    whole_hours = figures(engine, since=at(2), until=at(5))

    result = prune_runs(engine, completed_before=at(20), failed_before=at(10), keep_latest=0)

    rows_after = statuses(engine)
    assert result.completed > 0, f"nothing completed was pruned: {result}"
    assert result.failed > 0, f"nothing failed was pruned: {result}"
    assert rows_after.get("started") == rows_before["started"], f"rows after: {rows_after}"
    deleted = sum(rows_before.values()) - sum(rows_after.values())
    assert deleted == result.completed + result.failed, f"{deleted} rows gone, result {result}"
    assert figures(engine) == all_time, "all-time figures changed"
    assert figures(engine, since=at(0), until=at(48)) == whole_days, "whole-day figures changed"
    assert figures(engine, since=at(2), until=at(5)) == whole_hours, "whole-hour figures changed"


def test_prune_gives_pruned_services_new_versions(postgres_url: str) -> None:
    # A long-running reader keeps each service's edge runs and recent runs
    # under its version. So a prune must change the version of every service
    # it deleted runs of, or the reader keeps the deleted rows. PostgreSQL
    # only: versions are its row ids, and SQLite reads are never cached.
    recorder = get_recorder(postgres_url)
    ensure_schema(recorder.engine)
    engine = recorder.engine
    write_history(recorder)
    record_run(recorder, "recent", at(29))
    # Edges from 03:01 and to 29:30: hour 3 contains runs of beta and gamma.
    window = {"since": at(3, minutes=1), "until": at(29, minutes=30)}
    with engine.connect() as connection:
        before = read_versions(connection, None)
    cached_before = service_stats(engine, **window)

    prune_runs(engine, completed_before=at(4), failed_before=at(4), keep_latest=0)

    with engine.connect() as connection:
        after = read_versions(connection, None)
    changed = sorted(name for name in after if after[name] != before[name])
    assert changed == ["alpha", "beta", "gamma"], f"services with a new version: {changed}"
    fresh = create_engine(engine.url)
    try:
        expected = service_stats(fresh, **window)
    finally:
        fresh.dispose()
    cached = service_stats(engine, **window)
    assert cached == expected, f"cached {cached} != fresh {expected}"
    assert cached != cached_before, "the prune removed no edge run, so the test proves nothing"


def test_prune_never_deletes_started(recorder: Recorder) -> None:
    engine = recorder.engine
    record_run(recorder, "stuck", at(-24 * 400), "started")
    record_run(recorder, "stuck", at(-24 * 400), "completed")

    result = prune_runs(engine, completed_before=utc_now(), failed_before=utc_now(), keep_latest=0)

    assert result == PruneResult(completed=1, failed=0), f"result {result}"
    assert statuses(engine) == {"started": 1}, f"rows left: {statuses(engine)}"
    stats = service_stats(engine)[0]
    assert stats.in_progress == 1, f"in_progress {stats.in_progress}"
    assert stats.completed == 1, f"the pruned run left the all-time count: {stats.completed}"


def test_prune_keeps_failed_longer(recorder: Recorder) -> None:
    engine = recorder.engine
    for hour in range(1, 11):
        record_run(recorder, "svc", at(hour), "completed")
        record_run(recorder, "svc", at(hour, minutes=1), "failed")
        record_run(recorder, "svc", at(hour, minutes=2), "timed_out")

    result = prune_runs(engine, completed_before=at(9), failed_before=at(3), keep_latest=0)

    assert result == PruneResult(completed=8, failed=4), f"result {result}"
    left = statuses(engine)
    assert left.get("completed") == 2, f"completed rows left: {left}"
    assert left.get("failed") == 8, f"failed rows kept longer: {left}"
    assert left.get("timed_out") == 8, f"timed-out rows kept longer: {left}"


def test_prune_unknown_status_as_failed(recorder: Recorder) -> None:
    engine = recorder.engine
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO cron_executions (service_name, execution_time, status)"
                " VALUES ('svc', :at, 'error')"
            ),
            {"at": sql_time(engine, at(1))},
        )

    kept = prune_runs(engine, completed_before=at(5), failed_before=at(0), keep_latest=0)
    deleted = prune_runs(engine, completed_before=at(5), failed_before=at(5), keep_latest=0)

    assert kept == PruneResult(completed=0, failed=0), f"an 'error' run went with completed: {kept}"
    assert deleted == PruneResult(completed=0, failed=1), f"result {deleted}"


def test_prune_keeps_run_at_cutoff(recorder: Recorder) -> None:
    # On SQLite, plain SQL writes times without a fraction of a second.
    engine = recorder.engine
    for moment in (at(10), at(10, seconds=-1)):
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO cron_executions (service_name, execution_time, status)"
                    " VALUES ('svc', :at, 'completed')"
                ),
                {"at": sql_time(engine, moment)},
            )

    result = prune_runs(engine, completed_before=at(10), failed_before=at(10), keep_latest=0)

    assert result.completed == 1, f"only the run before the cutoff goes: {result}"
    with engine.connect() as connection:
        left = connection.execute(select(cron_executions.c.execution_time)).scalars().all()
    assert left == [at(10)], f"rows left: {left}"


def test_prune_dry_run_deletes_nothing(recorder: Recorder) -> None:
    engine = recorder.engine
    write_history(recorder)
    rows_before = statuses(engine)

    counted = prune_runs(
        engine, completed_before=at(20), failed_before=at(10), keep_latest=0, dry_run=True
    )

    assert statuses(engine) == rows_before, "a dry run deleted rows"
    deleted = prune_runs(engine, completed_before=at(20), failed_before=at(10), keep_latest=0)
    assert counted == deleted, f"dry run counted {counted}, the prune deleted {deleted}"


@pytest.mark.parametrize(("completed", "failed"), [(10, 9), (0, 1)])
def test_prune_deletes_in_batches(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch, completed: int, failed: int
) -> None:
    engine = recorder.engine
    for index in range(completed):
        record_run(recorder, "batch", at(index), "completed")
    for index in range(failed):
        record_run(recorder, "batch", at(index, minutes=30), "failed")
    record_run(recorder, "batch", at(100), "completed")
    monkeypatch.setattr(prune, "BATCH_SIZE", 3)

    deletes: list[str] = []

    def count_deletes(*args: Any) -> None:
        statement = args[2]
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(statement)

    event.listen(engine, "before_cursor_execute", count_deletes)
    try:
        result = prune_runs(engine, completed_before=at(50), failed_before=at(50), keep_latest=0)
    finally:
        event.remove(engine, "before_cursor_execute", count_deletes)

    assert result == PruneResult(completed=completed, failed=failed), f"result {result}"
    # A batch shorter than BATCH_SIZE ends each status, so n rows take n // 3 + 1.
    expected_statements = completed // 3 + 1 + failed // 3 + 1
    assert len(deletes) == expected_statements, f"{len(deletes)} DELETE statements"
    assert statuses(engine) == {"completed": 1}, f"rows left: {statuses(engine)}"


# -- cronledger prune ---------------------------------------------------------


def write_aged_runs(recorder: Recorder) -> None:
    now = utc_now()
    record_run(recorder, "aged", now - timedelta(days=1), "completed")
    record_run(recorder, "aged", now - timedelta(days=100), "completed")
    record_run(recorder, "aged", now - timedelta(days=100), "failed")
    record_run(recorder, "aged", now - timedelta(days=400), "failed")
    record_run(recorder, "aged", now - timedelta(days=400), "timed_out")
    record_run(recorder, "aged", now - timedelta(days=500), "started")


def test_prune_cli_default_failed_age(recorder: Recorder, database_url: str, invoke: Any) -> None:
    write_aged_runs(recorder)
    all_time = figures(recorder.engine)

    result = invoke(
        "--database-url", database_url, "prune", "--keep-latest", "0", "--older-than", "90d"
    )

    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    expected = (
        "deleted 1 run completed older than 90d and 2 runs failed or timed out older than 360d"
    )
    assert result.stdout.strip() == expected, f"output {result.stdout!r}"
    left = statuses(recorder.engine)
    assert left == {"completed": 1, "failed": 1, "started": 1}, f"rows left: {left}"
    assert figures(recorder.engine) == all_time, "all-time figures changed"


def test_prune_cli_failed_older_than(recorder: Recorder, database_url: str, invoke: Any) -> None:
    write_aged_runs(recorder)

    result = invoke(
        "--database-url",
        database_url,
        "prune",
        "--keep-latest",
        "0",
        "--older-than",
        "90d",
        "--failed-older-than",
        "95d",
    )

    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    expected = (
        "deleted 1 run completed older than 90d and 3 runs failed or timed out older than 95d"
    )
    assert result.stdout.strip() == expected, f"output {result.stdout!r}"
    left = statuses(recorder.engine)
    assert left == {"completed": 1, "started": 1}, f"rows left: {left}"


def test_prune_cli_dry_run(recorder: Recorder, database_url: str, invoke: Any) -> None:
    write_aged_runs(recorder)
    rows_before = statuses(recorder.engine)

    result = invoke(
        "--database-url",
        database_url,
        "prune",
        "--keep-latest",
        "0",
        "--older-than",
        "90d",
        "--dry-run",
    )

    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    assert result.stdout.startswith("would delete 1 run completed"), f"output {result.stdout!r}"
    assert "2 runs failed or timed out" in result.stdout, f"output {result.stdout!r}"
    assert statuses(recorder.engine) == rows_before, "a dry run deleted rows"


@pytest.mark.parametrize(
    "arguments",
    [("--older-than", "5x"), ("--older-than", "90d", "--failed-older-than", "7q")],
)
def test_prune_cli_invalid_duration(
    sqlite_url: str, invoke: Any, arguments: tuple[str, ...]
) -> None:
    result = invoke("--database-url", sqlite_url, "prune", *arguments)

    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    assert f"'{arguments[-1]}'" in result.stderr, f"the value is not named: {result.stderr!r}"
    assert result.stdout == "", f"output {result.stdout!r}"


def test_prune_cli_failed_shorter(sqlite_url: str, invoke: Any) -> None:
    result = invoke(
        "--database-url",
        sqlite_url,
        "prune",
        "--keep-latest",
        "0",
        "--older-than",
        "90d",
        "--failed-older-than",
        "30d",
    )

    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    assert "--failed-older-than 30d" in result.stderr, f"message {result.stderr!r}"
    assert "--older-than 90d" in result.stderr, f"message {result.stderr!r}"


def test_prune_keeps_latest_runs(recorder: Recorder) -> None:
    # A daily job pruned long after its last runs keeps the newest ones for health.
    for day in range(30):
        record_run(recorder, "daily", at(-24 * (400 - day)), status="failed")

    result = prune_runs(
        recorder.engine, completed_before=at(0), failed_before=at(0), keep_latest=20
    )

    assert result == PruneResult(completed=0, failed=10), f"result {result}"
    assert statuses(recorder.engine) == {"failed": 20}, "the newest 20 runs must stay"


def bookkeeping_rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (cron_fire_claims, cron_skipped_runs, cron_notifications)
        }


def test_prune_bookkeeping_keeps_recent_and_pending(recorder: Recorder) -> None:
    engine = recorder.engine
    now = utc_now()
    old, recent = now - timedelta(days=100), now - timedelta(minutes=5)
    job = {"job": JobSettings("job", command=("true",))}
    # Each fire time claimed with a run of the job still going: claimed and skipped.
    for moment in (old, recent):
        claim_fires(engine, [Fire("job", moment)], job, moment, timedelta(seconds=10), {"job": 1})
    channel = Channel("json://127.0.0.1:9/", "json://127.0.0.1:9/")
    for key, moment, outcome in (
        ("old-sent", old, "sent"),
        ("old-pending", old, None),
        ("recent-sent", recent, "sent"),
    ):
        with engine.begin() as connection:
            enqueue(
                connection,
                dedupe_key=key,
                kind="change",
                service_name="job",
                event_id=None,
                health_state="failing",
                channels=(channel,),
                message=Message("job is failing", "body", "failure"),
                now=moment,
            )
        if outcome is None:
            continue
        with engine.begin() as connection:
            row_id = connection.execute(
                select(cron_notifications.c.id).where(
                    cron_notifications.c.dedupe_key.startswith(key)
                )
            ).scalar_one()
            assert claim(connection, row_id, "test", moment, timedelta(minutes=2)) is not None
            record_outcome(connection, row_id, "test", status=outcome, now=moment, error=None)
    before = bookkeeping_rows(engine)

    counted = prune.prune_bookkeeping(engine, before=now - timedelta(days=90), dry_run=True)
    unchanged = bookkeeping_rows(engine)
    deleted = prune.prune_bookkeeping(engine, before=now - timedelta(days=90))

    assert before == {"cron_fire_claims": 2, "cron_skipped_runs": 2, "cron_notifications": 3}
    assert counted == prune.BookkeepingResult(fire_claims=1, skipped_runs=1, notifications=1)
    assert unchanged == before, "a dry run deleted rows"
    assert deleted == counted
    assert bookkeeping_rows(engine) == {
        "cron_fire_claims": 1,
        "cron_skipped_runs": 1,
        "cron_notifications": 2,
    }
