"""Tests of one monitor pass, ``Monitor.check``, with a frozen clock.

Every test builds a history of runs with chosen start times through the
recorder and passes explicit ``now`` values to ``Monitor.check``, so no test
sleeps. Each test runs on a fresh SQLite database and a fresh PostgreSQL
database.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Row, func, select

from cronledger import monitor as monitor_module
from cronledger.monitor import CheckResult, Monitor
from cronledger.recorder import get_recorder
from cronledger.schedule import CronSchedule, IntervalSchedule
from cronledger.settings import Config, ServiceSettings
from cronledger.stats import service_stats
from cronledger.store.engine import get_engine
from cronledger.store.executions import FinishEvent, StartEvent
from cronledger.store.migrate import ensure_schema
from cronledger.store.services import ServiceRecord, load_services, set_paused, sync_services
from cronledger.store.tables import (
    cron_executions,
    cron_health_events,
    cron_missed_runs,
    cron_services,
)

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def migrated_engine(database_url: str) -> Engine:
    engine = get_engine(database_url)
    ensure_schema(engine)
    return engine


def declare(engine: Engine, *services: ServiceSettings, at: datetime) -> None:
    """Store the services as a config file would declare them, first seen ``at``."""
    config = Config(
        path=Path("cronledger.toml"),
        services={settings.name: settings for settings in services},
        pause_declared=frozenset(settings.name for settings in services),
    )
    sync_services(engine, config, at)


def start_run(database_url: str, service: str, started_at: datetime) -> StartEvent:
    event = StartEvent(uuid.uuid4().hex, service, started_at, host=None, pid=None)
    get_recorder(database_url).start(event)
    return event


def finish_run(
    database_url: str,
    start: StartEvent,
    status: str,
    finished_at: datetime,
    error: str | None = None,
) -> None:
    duration_ms = round((finished_at - start.started_at).total_seconds() * 1000)
    event = FinishEvent(start, status, finished_at, duration_ms, 0, error_message=error)
    get_recorder(database_url).finish(event)


def completed_run(database_url: str, service: str, started_at: datetime) -> StartEvent:
    start = start_run(database_url, service, started_at)
    finish_run(database_url, start, "completed", started_at + 30 * SECOND)
    return start


def run_row(engine: Engine, start: StartEvent) -> Row[Any]:
    with engine.connect() as connection:
        query = select(cron_executions).where(cron_executions.c.run_key == start.run_key)
        return connection.execute(query).one()


def health_events(engine: Engine, service: str) -> list[Row[Any]]:
    """Return the service's rows of cron_health_events, oldest first."""
    events = cron_health_events.c
    with engine.connect() as connection:
        query = (
            select(cron_health_events)
            .where(events.service_name == service)
            .order_by(events.changed_at, events.id)
        )
        return list(connection.execute(query).all())


def missed_times(engine: Engine, service: str) -> list[datetime]:
    missed = cron_missed_runs.c
    with engine.connect() as connection:
        query = (
            select(missed.scheduled_at)
            .where(missed.service_name == service)
            .order_by(missed.scheduled_at)
        )
        return list(connection.execute(query).scalars())


def count_runs(engine: Engine, service: str) -> int:
    with engine.connect() as connection:
        query = select(func.count()).where(cron_executions.c.service_name == service)
        return int(connection.execute(query).scalar_one())


def service_row(engine: Engine, service: str) -> Row[Any]:
    with engine.connect() as connection:
        query = select(cron_services).where(cron_services.c.name == service)
        return connection.execute(query).one()


def fire_times(first: datetime, step: timedelta, count: int) -> list[datetime]:
    return [first + index * step for index in range(count)]


# Stuck runs and timeouts


def test_stuck_run_boundary_then_timeout(database_url: str) -> None:
    engine = migrated_engine(database_url)
    declare(engine, ServiceSettings("export", max_runtime=30 * MINUTE), at=T0 - timedelta(hours=1))
    start = start_run(database_url, "export", T0)
    run_id = run_row(engine, start).id
    monitor = Monitor(engine)

    at_limit = monitor.check(T0 + 30 * MINUTE)
    assert at_limit.health["export"].state == "running", f"at max runtime: {at_limit.health}"
    assert at_limit.timed_out == [], f"timed out at exactly max runtime: {at_limit.timed_out}"
    assert run_row(engine, start).status == "started", "the run changed at exactly max runtime"

    past = T0 + 30 * MINUTE + SECOND
    over = monitor.check(past)
    health = over.health["export"]
    assert health.state == "stuck", f"one second past max runtime: {health}"
    expected_reason = f"run {run_id} has been running for 30 min, over its max runtime of 30 min"
    assert health.reason == expected_reason, f"stuck reason {health.reason!r}"
    assert over.timed_out == [run_id], f"timed_out {over.timed_out}, expected [{run_id}]"
    row = run_row(engine, start)
    assert row.status == "timed_out", f"status {row.status!r}"
    assert row.finished_at == past, f"finished_at {row.finished_at}, expected {past}"
    message = row.error_message or ""
    assert "no finish reported within the max runtime of 30 min" in message, f"{message!r}"
    assert "2025-06-02 10:30:01 UTC" in message, f"message lacks the time marked: {message!r}"

    failing = monitor.check(past + MINUTE)
    assert failing.health["export"].state == "failing", f"after the timeout: {failing.health}"
    assert failing.timed_out == [], f"timed out again: {failing.timed_out}"

    events = health_events(engine, "export")
    states = [(event.previous_state, event.state) for event in events]
    assert states == [(None, "running"), ("running", "stuck"), ("stuck", "failing")], states
    assert events[1].changed_at == past, f"stuck recorded at {events[1].changed_at}"
    assert events[1].reason == expected_reason, f"stuck event reason {events[1].reason!r}"
    assert "timed out: no finish reported" in events[2].reason, f"{events[2].reason!r}"


def test_overlapping_runs_timed_separately(database_url: str) -> None:
    engine = migrated_engine(database_url)
    declare(engine, ServiceSettings("export", max_runtime=30 * MINUTE), at=T0 - timedelta(hours=1))
    first = start_run(database_url, "export", T0)
    second = start_run(database_url, "export", T0 + 20 * MINUTE)
    first_id = run_row(engine, first).id
    second_id = run_row(engine, second).id
    monitor = Monitor(engine)

    result = monitor.check(T0 + 30 * MINUTE + SECOND)
    assert result.health["export"].state == "stuck", f"health {result.health}"
    assert f"run {first_id} " in result.health["export"].reason, result.health["export"].reason
    assert result.timed_out == [first_id], f"timed_out {result.timed_out}"
    assert run_row(engine, first).status == "timed_out", "the first run was not timed out"
    assert run_row(engine, second).status == "started", "the second run was timed out early"

    at_limit = monitor.check(T0 + 50 * MINUTE)
    assert at_limit.timed_out == [], f"second run timed out at its limit: {at_limit.timed_out}"
    assert run_row(engine, second).status == "started", "the second run changed at its limit"

    result = monitor.check(T0 + 50 * MINUTE + SECOND)
    assert result.timed_out == [second_id], f"timed_out {result.timed_out}"
    row = run_row(engine, second)
    assert row.status == "timed_out", f"second run status {row.status!r}"
    assert row.finished_at == T0 + 50 * MINUTE + SECOND, f"finished_at {row.finished_at}"


def test_late_finish_after_timeout(database_url: str) -> None:
    # The timeout is the monitor's inference, so the finish that the job
    # reports later replaces it, with its own time and error.
    engine = migrated_engine(database_url)
    limit = 10 * MINUTE
    declare(
        engine,
        ServiceSettings("export-ok", max_runtime=limit),
        ServiceSettings("export-bad", max_runtime=limit),
        at=T0 - timedelta(hours=1),
    )
    good = start_run(database_url, "export-ok", T0)
    bad = start_run(database_url, "export-bad", T0)
    monitor = Monitor(engine)
    timed_out = monitor.check(T0 + limit + SECOND).timed_out
    assert len(timed_out) == 2, f"timed_out {timed_out}"

    finish_run(database_url, good, "completed", T0 + 15 * MINUTE)
    finish_run(database_url, bad, "failed", T0 + 16 * MINUTE, error="disk full")

    good_row = run_row(engine, good)
    assert good_row.status == "completed", f"late completed finish: {good_row.status!r}"
    assert good_row.finished_at == T0 + 15 * MINUTE, f"finished_at {good_row.finished_at}"
    assert good_row.error_message is None, f"timeout message kept: {good_row.error_message!r}"
    assert good_row.duration_ms == 15 * 60 * 1000, f"duration_ms {good_row.duration_ms}"
    bad_row = run_row(engine, bad)
    assert bad_row.status == "failed", f"late failed finish: {bad_row.status!r}"
    assert bad_row.error_message == "disk full", f"error_message {bad_row.error_message!r}"
    assert bad_row.finished_at == T0 + 16 * MINUTE, f"finished_at {bad_row.finished_at}"

    stats = {row.service_name: row for row in service_stats(engine)}
    assert stats["export-ok"].completed == 1, f"completed count {stats['export-ok']}"
    assert stats["export-ok"].timed_out == 0, f"timed_out count {stats['export-ok']}"
    assert stats["export-bad"].failed == 1, f"failed count {stats['export-bad']}"
    assert stats["export-bad"].timed_out == 0, f"timed_out count {stats['export-bad']}"

    result = monitor.check(T0 + 20 * MINUTE)
    assert result.health["export-ok"].state == "healthy", f"health {result.health['export-ok']}"
    assert result.health["export-bad"].state == "failing", f"health {result.health['export-bad']}"
    assert "disk full" in result.health["export-bad"].reason, result.health["export-bad"].reason
    assert result.timed_out == [], f"timed out a finished run: {result.timed_out}"


# Missed runs


def test_cron_missed_runs_recorded(database_url: str) -> None:
    engine = migrated_engine(database_url)
    settings = ServiceSettings("flow-sync", schedule=CronSchedule("*/10 * * * *"), grace=5 * MINUTE)
    declare(engine, settings, at=T0 - timedelta(days=1))
    completed_run(database_url, "flow-sync", T0)
    monitor = Monitor(engine)

    at_grace = monitor.check(T0 + 15 * MINUTE)
    assert at_grace.missed == [], f"missed at exactly grace: {at_grace.missed}"
    assert missed_times(engine, "flow-sync") == [], "a row at exactly grace"

    past = T0 + 15 * MINUTE + SECOND
    first = monitor.check(past)
    assert first.missed == [("flow-sync", T0 + 10 * MINUTE)], f"missed {first.missed}"
    assert first.health["flow-sync"].state == "late", f"health {first.health}"
    with engine.connect() as connection:
        detected = connection.execute(select(cron_missed_runs.c.detected_at)).scalar_one()
    assert detected == past, f"detected_at {detected}, expected {past}"

    hour_later = T0 + 65 * MINUTE + SECOND
    result = monitor.check(hour_later)
    expected = fire_times(T0 + 10 * MINUTE, 10 * MINUTE, 6)
    assert [at for _, at in result.missed] == expected[1:], f"missed {result.missed}"
    assert missed_times(engine, "flow-sync") == expected, "one row per fire time expected"

    again = monitor.check(hour_later)
    assert again.missed == [], f"a repeated check found {again.missed}"
    assert missed_times(engine, "flow-sync") == expected, "a repeated check added rows"

    assert count_runs(engine, "flow-sync") == 1, "missed runs were recorded as executions"
    stats = service_stats(engine, service_name="flow-sync")[0]
    assert stats.total == 1, f"total {stats.total}: missed runs counted as runs"
    assert stats.failed == 0, f"failed {stats.failed}: missed runs counted as failures"
    assert stats.missed == 6, f"missed {stats.missed}, expected the six fire times"
    windowed = service_stats(
        engine, since=T0 + 30 * MINUTE, until=T0 + 50 * MINUTE, service_name="flow-sync"
    )[0]
    assert windowed.missed == 2, f"missed {windowed.missed} in [10:30, 10:50), expected 2"


def test_interval_missed_runs_recorded(database_url: str) -> None:
    engine = migrated_engine(database_url)
    settings = ServiceSettings(
        "heartbeat", schedule=IntervalSchedule(15 * MINUTE), grace=2 * MINUTE
    )
    declare(engine, settings, at=T0 - timedelta(days=1))
    completed_run(database_url, "heartbeat", T0)
    monitor = Monitor(engine)

    assert monitor.check(T0 + 17 * MINUTE).missed == [], "missed at exactly grace"
    first = monitor.check(T0 + 17 * MINUTE + SECOND)
    assert first.missed == [("heartbeat", T0 + 15 * MINUTE)], f"missed {first.missed}"

    hour_later = T0 + 62 * MINUTE + SECOND
    monitor.check(hour_later)
    expected = fire_times(T0 + 15 * MINUTE, 15 * MINUTE, 4)
    assert missed_times(engine, "heartbeat") == expected, "one row per interval expected"
    assert monitor.check(hour_later).missed == [], "a repeated check found more"
    assert missed_times(engine, "heartbeat") == expected, "a repeated check added rows"
    assert count_runs(engine, "heartbeat") == 1, "missed runs were recorded as executions"

    # A start resets the grid, so the next expected start is one interval after it.
    completed_run(database_url, "heartbeat", T0 + 70 * MINUTE)
    assert monitor.check(T0 + 87 * MINUTE).missed == [], "missed at exactly grace after a start"
    after_start = monitor.check(T0 + 87 * MINUTE + SECOND)
    assert after_start.missed == [("heartbeat", T0 + 85 * MINUTE)], f"{after_start.missed}"


def test_misses_while_monitor_down(database_url: str) -> None:
    # The monitor judges each fire time of its downtime against the runs
    # that really started, also when a late run started before it returned.
    engine = migrated_engine(database_url)
    hourly = ServiceSettings("ledger", schedule=CronSchedule("0 * * * *"), grace=5 * MINUTE)
    every_15 = ServiceSettings("pulse", schedule=IntervalSchedule(15 * MINUTE), grace=2 * MINUTE)
    declare(engine, hourly, every_15, at=T0 - timedelta(days=1))
    completed_run(database_url, "ledger", T0)
    completed_run(database_url, "pulse", T0)
    monitor = Monitor(engine)
    assert monitor.check(T0 + MINUTE).missed == [], "missed before the downtime"

    # Down from 10:01 to 14:10. The 11:00 to 13:00 runs never started, a
    # catch-up ran at 13:30, and the 14:00 run started on time.
    completed_run(database_url, "ledger", T0 + 3 * HOUR + 30 * MINUTE)
    completed_run(database_url, "ledger", T0 + 4 * HOUR)
    # The interval's 10:15 and 10:30 starts are missing; 10:40 is late for
    # 10:30 and restarts the interval, and 10:55 and 11:10 are on time.
    for minutes in (40, 55, 70):
        completed_run(database_url, "pulse", T0 + minutes * MINUTE)

    back = monitor.check(T0 + 4 * HOUR + 10 * MINUTE)

    hours = fire_times(T0 + HOUR, HOUR, 3)
    # After the 11:10 start, every quarter from 11:25 to 13:55 passed its grace.
    quarters = [T0 + 15 * MINUTE, T0 + 30 * MINUTE, *fire_times(T0 + 85 * MINUTE, 15 * MINUTE, 11)]
    assert missed_times(engine, "ledger") == hours, "hourly fire times of the downtime"
    assert missed_times(engine, "pulse") == quarters, "interval fire times of the downtime"
    assert sorted(at for name, at in back.missed if name == "ledger") == hours
    assert monitor.check(T0 + 4 * HOUR + 11 * MINUTE).missed == [], "a second pass found more"


def test_one_start_settles_one_fire_time(database_url: str) -> None:
    # With a grace longer than the schedule's period, a late start settles
    # the fire time before it, not the next one as well.
    engine = migrated_engine(database_url)
    settings = ServiceSettings("slow", schedule=CronSchedule("0 * * * *"), grace=90 * MINUTE)
    declare(engine, settings, at=T0 - timedelta(days=1))
    completed_run(database_url, "slow", T0)
    monitor = Monitor(engine)
    monitor.check(T0 + MINUTE)
    completed_run(database_url, "slow", T0 + HOUR + 20 * MINUTE)

    result = monitor.check(T0 + 3 * HOUR + 31 * MINUTE)

    assert [at for _, at in result.missed] == [T0 + 2 * HOUR], f"missed {result.missed}"


def test_early_start_leaves_fire_time_due(database_url: str) -> None:
    # As for health, a run that starts before its fire time counts for the
    # fire time before, so the one after it is still expected.
    engine = migrated_engine(database_url)
    settings = ServiceSettings("early", schedule=CronSchedule("0 * * * *"), grace=5 * MINUTE)
    declare(engine, settings, at=T0 - timedelta(days=1))
    completed_run(database_url, "early", T0)
    monitor = Monitor(engine)
    monitor.check(T0 + MINUTE)
    completed_run(database_url, "early", T0 + HOUR - 10 * SECOND)

    result = monitor.check(T0 + HOUR + 5 * MINUTE + SECOND)

    assert result.missed == [("early", T0 + HOUR)], f"missed {result.missed}"
    assert result.health["early"].state == "late", f"health {result.health['early']}"


def test_paused_service_no_missed_runs(database_url: str) -> None:
    engine = migrated_engine(database_url)
    settings = ServiceSettings("flow-sync", schedule=CronSchedule("*/10 * * * *"), grace=5 * MINUTE)
    declare(engine, settings, at=T0 - timedelta(days=1))
    completed_run(database_url, "flow-sync", T0)
    set_paused(engine, "flow-sync", True, T0 + MINUTE)
    monitor = Monitor(engine)

    for hours in (1, 2, 3):
        result = monitor.check(T0 + timedelta(hours=hours))
        assert result.health["flow-sync"].state == "paused", f"{hours} h: {result.health}"
        assert result.missed == [], f"{hours} h: missed while paused: {result.missed}"
    assert missed_times(engine, "flow-sync") == [], "rows recorded while paused"

    # Fire times during the pause were not expected, so resuming must not
    # record them late; the schedule counts again from the resume.
    resumed_at = T0 + timedelta(hours=3, seconds=10)
    set_paused(engine, "flow-sync", False, resumed_at)
    after_resume = monitor.check(resumed_at)
    assert after_resume.missed == [], f"resume recorded the pause: {after_resume.missed}"
    resumed_health = after_resume.health["flow-sync"]
    assert resumed_health.state == "healthy", f"resume reported the pause: {resumed_health}"
    later = monitor.check(resumed_at + 16 * MINUTE)
    assert [at for _, at in later.missed] == [T0 + timedelta(hours=3, minutes=10)], (
        f"missed after the resume: {later.missed}"
    )
    assert count_runs(engine, "flow-sync") == 1, "missed runs were recorded as executions"


def test_new_service_late_after_first_due(database_url: str) -> None:
    # Both are declared at 10:10, so both are first due at 11:00 and late after 11:05.
    engine = migrated_engine(database_url)
    declared_at = T0 + 10 * MINUTE
    declare(
        engine,
        ServiceSettings("hourly", schedule=CronSchedule("0 * * * *"), grace=5 * MINUTE),
        ServiceSettings("every-50m", schedule=IntervalSchedule(50 * MINUTE), grace=5 * MINUTE),
        at=declared_at,
    )
    monitor = Monitor(engine)
    first_due = T0 + 60 * MINUTE

    at_grace = monitor.check(first_due + 5 * MINUTE)
    for name in ("hourly", "every-50m"):
        health = at_grace.health[name]
        assert health.state == "never_run", f"{name} at exactly grace: {health}"
        assert health.reason == "no run recorded yet; first expected at 11:00 UTC", health.reason
    assert at_grace.missed == [], f"missed at exactly grace: {at_grace.missed}"

    late = monitor.check(first_due + 5 * MINUTE + SECOND)
    for name in ("hourly", "every-50m"):
        health = late.health[name]
        assert health.state == "late", f"{name} one second past grace: {health}"
        assert health.reason == "expected at 11:00 UTC, 5 min overdue", health.reason
        assert missed_times(engine, name) == [first_due], f"{name}: {missed_times(engine, name)}"
        events = health_events(engine, name)
        states = [(event.previous_state, event.state) for event in events]
        assert states == [(None, "never_run"), ("never_run", "late")], f"{name}: {states}"


def test_no_schedule_never_missed(database_url: str) -> None:
    engine = migrated_engine(database_url)
    declare(engine, ServiceSettings("manual"), at=T0)
    completed_run(database_url, "manual", T0)

    result = Monitor(engine).check(T0 + timedelta(days=30))

    assert result.health["manual"].state == "healthy", f"health {result.health}"
    assert result.missed == [], f"missed {result.missed}"


# Health changes


def test_health_changes_recorded_once(database_url: str) -> None:
    engine = migrated_engine(database_url)
    settings = ServiceSettings("flow-sync", schedule=CronSchedule("*/10 * * * *"), grace=5 * MINUTE)
    declare(engine, settings, at=T0 - MINUTE)
    monitor = Monitor(engine)
    checks: list[tuple[datetime, CheckResult]] = []

    def check(now: datetime) -> CheckResult:
        result = monitor.check(now)
        checks.append((now, result))
        return result

    first = check(T0)
    assert first.changes == [("flow-sync", None, "never_run")], f"changes {first.changes}"
    repeated = check(T0 + SECOND)
    assert repeated.changes == [], f"the same state was recorded again: {repeated.changes}"

    start = start_run(database_url, "flow-sync", T0 + 10 * MINUTE)
    running = check(T0 + 10 * MINUTE + 30 * SECOND)
    assert running.changes == [("flow-sync", "never_run", "running")], f"{running.changes}"

    finish_run(database_url, start, "completed", T0 + 11 * MINUTE)
    healthy = check(T0 + 12 * MINUTE)
    assert healthy.changes == [("flow-sync", "running", "healthy")], f"{healthy.changes}"
    assert check(T0 + 13 * MINUTE).changes == [], "healthy recorded again"

    events = health_events(engine, "flow-sync")
    assert len(events) == 3, f"expected 3 events, got {[event.state for event in events]}"
    changed = [(now, result) for now, result in checks if result.changes]
    for event, (now, result) in zip(events, changed, strict=True):
        assert event.changed_at == now, f"{event.state} changed_at {event.changed_at}, not {now}"
        reason = result.health["flow-sync"].reason
        assert event.reason == reason, f"{event.state} reason {event.reason!r} != {reason!r}"

    row = service_row(engine, "flow-sync")
    assert row.health_state == "healthy", f"health_state {row.health_state!r}"
    assert row.health_since == T0 + 12 * MINUTE, f"health_since {row.health_since}"
    assert row.health_checked_at == T0 + 13 * MINUTE, f"health_checked_at {row.health_checked_at}"
    assert row.health_reason == checks[-1][1].health["flow-sync"].reason, row.health_reason


def stuck_and_late_history(database_url: str) -> tuple[Engine, int]:
    """Declare a stuck service and a late one, and return the engine and the stuck run's id."""
    engine = migrated_engine(database_url)
    declare(
        engine,
        ServiceSettings("export", max_runtime=30 * MINUTE),
        ServiceSettings("flow-sync", schedule=CronSchedule("*/10 * * * *"), grace=5 * MINUTE),
        at=T0 - timedelta(hours=1),
    )
    start = start_run(database_url, "export", T0)
    completed_run(database_url, "flow-sync", T0)
    return engine, run_row(engine, start).id


def assert_recorded_once(engine: Engine, results: list[CheckResult], stuck_id: int) -> None:
    changes = [change for result in results for change in result.changes]
    assert sorted(changes) == [("export", None, "stuck"), ("flow-sync", None, "late")], (
        f"changes claimed {changes}"
    )
    for name, state in (("export", "stuck"), ("flow-sync", "late")):
        states = [event.state for event in health_events(engine, name)]
        assert states == [state], f"{name} events {states}"
    timed_out = [run_id for result in results for run_id in result.timed_out]
    assert timed_out == [stuck_id], f"timed out {timed_out}"
    expected = fire_times(T0 + 10 * MINUTE, 10 * MINUTE, 5)
    assert missed_times(engine, "flow-sync") == expected, "missed rows duplicated or lost"


def test_two_monitors_stale_records(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, stuck_id = stuck_and_late_history(database_url)
    now = T0 + 55 * MINUTE + SECOND
    with engine.connect() as connection:
        stale = load_services(connection)

    first = Monitor(engine).check(now)
    monkeypatch.setattr(monitor_module, "load_services", lambda connection: stale)
    second = Monitor(engine).check(now)

    assert second.changes == [], f"the stale monitor recorded {second.changes}"
    assert_recorded_once(engine, [first, second], stuck_id)


def test_two_monitors_threads(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, stuck_id = stuck_and_late_history(database_url)
    now = T0 + 55 * MINUTE + SECOND
    # Both monitors read the services before either writes.
    both_loaded = threading.Barrier(2, timeout=30)
    original: Callable[[Connection], list[ServiceRecord]] = monitor_module.load_services

    def load_then_wait(connection: Connection) -> list[ServiceRecord]:
        records = original(connection)
        both_loaded.wait()
        return records

    monkeypatch.setattr(monitor_module, "load_services", load_then_wait)
    results: list[CheckResult] = []
    errors: list[BaseException] = []

    def check() -> None:
        try:
            results.append(Monitor(engine).check(now))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=check) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not any(thread.is_alive() for thread in threads), "a monitor thread hung"
    assert errors == [], f"a monitor failed: {errors!r}"
    assert len(results) == 2, f"{len(results)} results"
    assert_recorded_once(engine, results, stuck_id)
