"""The monitor: times out stuck runs, records missed runs and health changes.

One pass (``Monitor.check``) does, for every service:

1. evaluate its health from its settings and recent runs (a pure function);
2. record a change of health state with its time and reason, as a row in
   cron_health_events, claimed by a conditional update so two monitors
   never record the same change twice;
3. record each expected fire time that passed its grace period without a
   start in cron_missed_runs (not as an execution, so counts stay true);
4. mark runs that have been ``started`` for longer than the max runtime as
   ``timed_out``. This comes after the evaluation, so the history shows the
   service as ``stuck`` before the timeout turns into a failure.

With alerts configured, the pass ends by turning the recorded changes into
outbox rows (cronledger.alerts.planner). A thread of ``run_monitor`` sends
them, so a slow channel does not delay the next pass.

Several monitors may run against one database; one is active at a time.
On PostgreSQL the active one holds a session-level advisory lock on its own
connection, which the server releases when that process or connection
dies, so a standby takes over within one interval. On SQLite the lock is an
exclusive file lock beside the database file.

A run whose finish arrives after it was timed out takes its real outcome
(see store/executions.py): the timeout was the monitor's inference.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, func, select, text, type_coerce
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from cronledger.alerts.config import AlertConfig
from cronledger.alerts.delivery import SEND_TIMEOUT_SECONDS, DeliveryThread, Sender
from cronledger.alerts.planner import PlanResult, plan_alerts
from cronledger.durations import humanize_duration
from cronledger.health import Health, RunSnapshot, evaluate_health, runs_needed
from cronledger.recorder import utc_now
from cronledger.store.services import ServiceRecord, load_services
from cronledger.store.tables import (
    STARTED,
    TIMED_OUT,
    UTCDateTime,
    cron_executions,
    cron_health_events,
    cron_missed_runs,
    cron_services,
)

log = logging.getLogger(__name__)

# An arbitrary constant that identifies the monitor's advisory lock.
MONITOR_LOCK_KEY = 0x63726F6E6D6F6E  # "cronmon"

# Missed fire times recorded per service and pass; a service silent for a
# long time on a frequent schedule catches up over several passes.
MAX_MISSED_PER_PASS = 1000
# Start times read per query when judging fire times against the runs.
START_BATCH = 500

KNOWN_STATUSES = ("started", "completed", "failed", "timed_out")

# Finished runs read per service for a health reason.
REASON_RUNS = 20


@dataclass
class CheckResult:
    """Findings and changes of one monitor pass."""

    health: dict[str, Health] = field(default_factory=dict)
    changes: list[tuple[str, str | None, str]] = field(default_factory=list)
    timed_out: list[int] = field(default_factory=list)
    missed: list[tuple[str, datetime]] = field(default_factory=list)
    alerts: PlanResult | None = None


def recent_runs(connection: Connection, service: str, finished: int) -> list[RunSnapshot]:
    """Return every run in progress and the newest ``finished`` other runs, newest first."""
    runs = cron_executions.c
    columns = (runs.id, runs.execution_time, runs.finished_at, runs.status, runs.error_message)
    in_progress = connection.execute(
        select(*columns).where(runs.service_name == service, runs.status == STARTED)
    ).all()
    done = connection.execute(
        select(*columns)
        .where(runs.service_name == service, runs.status != STARTED)
        .order_by(runs.execution_time.desc(), runs.id.desc())
        .limit(finished)
    ).all()

    snapshots = []
    for row in [*in_progress, *done]:
        if row.execution_time is None:
            continue  # a row from another writer without a start time
        status = row.status if row.status in KNOWN_STATUSES else "failed"
        snapshots.append(
            RunSnapshot(row.id, row.execution_time, row.finished_at, status, row.error_message)
        )
    snapshots.sort(key=lambda run: run.started_at, reverse=True)
    return snapshots


def current_health(connection: Connection, record: ServiceRecord, now: datetime) -> Health:
    """Evaluate the health of one stored service at ``now``."""
    # More finished runs than the thresholds need, so a reason such as
    # "5 consecutive failures" counts the whole streak up to this many.
    finished = max(runs_needed(record.settings), REASON_RUNS)
    runs = recent_runs(connection, record.settings.name, finished)
    return evaluate_health(
        record.settings, runs, now, first_seen=record.created_at, resumed_at=record.resumed_at
    )


class Monitor:
    """Applies health evaluation to the database, one pass at a time."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime] = utc_now,
        alerts: AlertConfig | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        # None plans no alerts. Replaced when the config file is reloaded.
        self.alerts = alerts

    def check(self, now: datetime | None = None) -> CheckResult:
        """Run one pass over every service at ``now`` (the clock if omitted)."""
        now = now or self.clock()
        result = CheckResult()
        with self.engine.connect() as connection:
            services = load_services(connection)

        for record in services:
            name = record.settings.name
            with self.engine.begin() as connection:
                health = current_health(connection, record, now)
                result.health[name] = health
                change = _record_change(connection, record, health, now)
                if change is not None:
                    result.changes.append(change)
                if record.settings.schedule is not None and not record.settings.paused:
                    for missed_at in _record_missed(connection, record, now):
                        result.missed.append((name, missed_at))
            if health.stuck_run_ids:
                result.timed_out.extend(self._time_out(record, health, now))

        alerts = self.alerts
        if alerts is not None:
            result.alerts = plan_alerts(self.engine, alerts, result.health, now, current_health)
        return result

    def _time_out(self, record: ServiceRecord, health: Health, now: datetime) -> list[int]:
        limit = humanize_duration(record.settings.max_runtime)
        message = (
            f"timed out: no finish reported within the max runtime of {limit}; "
            f"marked by the monitor at {now.strftime('%Y-%m-%d %H:%M:%S')} UTC"
        )
        runs = cron_executions.c
        with self.engine.begin() as connection:
            # The status condition makes this safe against a finish that
            # arrives at the same moment, and against a second monitor.
            rows = connection.execute(
                cron_executions.update()
                .where(runs.id.in_(health.stuck_run_ids), runs.status == STARTED)
                .values(status=TIMED_OUT, finished_at=now, error_message=message)
                .returning(runs.id)
            ).all()
        ids = [row.id for row in rows]
        for run_id in ids:
            log.warning(
                "service %s: run %s timed out after %s", record.settings.name, run_id, limit
            )
        return ids


def _record_change(
    connection: Connection, record: ServiceRecord, health: Health, now: datetime
) -> tuple[str, str | None, str] | None:
    name = record.settings.name
    services = cron_services.c
    previous = record.health_state
    if previous == health.state.value:
        connection.execute(
            cron_services.update()
            .where(services.name == name)
            .values(health_reason=health.reason, health_checked_at=now)
        )
        return None

    # Claim the change: only a writer that still finds the old state wins.
    same_state = (
        services.health_state.is_(None) if previous is None else services.health_state == previous
    )
    claimed = connection.execute(
        cron_services.update()
        .where(services.name == name, same_state)
        .values(
            health_state=health.state.value,
            health_reason=health.reason,
            health_since=now,
            health_checked_at=now,
        )
    ).rowcount
    if not claimed:
        return None
    connection.execute(
        cron_health_events.insert().values(
            service_name=name,
            state=health.state.value,
            previous_state=previous,
            reason=health.reason,
            changed_at=now,
        )
    )
    log.info("service %s: %s -> %s: %s", name, previous or "new", health.state.value, health.reason)
    return (name, previous, health.state.value)


def _record_missed(connection: Connection, record: ServiceRecord, now: datetime) -> list[datetime]:
    """Record every fire time that passed its grace period without a start.

    As in the health evaluation, the fire time expected next is the first
    after the latest start (or missed fire time). It counts as started when
    a run starts at it or later, no later than its grace period's end. A
    run that starts before it only moves the expectation to that run, which
    for a cron schedule is the same fire time. Each pass records the fire
    times that came due since the previous pass. After the monitor was
    down, each fire time of the downtime is therefore judged against the
    runs that really started, even when a late run started before the
    monitor came back.
    """
    settings = record.settings
    schedule = settings.schedule
    assert schedule is not None
    name = settings.name

    runs = cron_executions.c
    last_start_query = select(type_coerce(func.max(runs.execution_time), UTCDateTime())).where(
        runs.service_name == name
    )
    # Fire times before ``settled`` were due before the previous pass, which
    # judged them. Without a previous pass, the last start settles all
    # fire times before it.
    settled: datetime | None = None
    # Fire times before the service was known, or during a pause, were not expected.
    bounds: list[datetime | None] = [record.resumed_at, record.created_at]
    if record.health_checked_at is not None:
        settled = record.health_checked_at - settings.grace
        # The last start before them is where an interval's grid resumes.
        last_start_query = last_start_query.where(runs.execution_time <= settled)
        bounds.append(schedule.previous_at_or_before(settled - timedelta(microseconds=1)))
    # MAX() drops the column type on SQLite, so the UTC conversion is put back.
    bounds.append(connection.execute(last_start_query).scalar())
    bounds.append(
        connection.execute(
            select(type_coerce(func.max(cron_missed_runs.c.scheduled_at), UTCDateTime())).where(
                cron_missed_runs.c.service_name == name
            )
        ).scalar()
    )
    position = max(value for value in bounds if value is not None)

    starts = _StartsAfter(connection, name, position)
    missed: list[datetime] = []
    fire = schedule.next_after(position)
    while fire + settings.grace < now and len(missed) < MAX_MISSED_PER_PASS:
        started = starts.first_after(position)
        if started is not None and started <= fire + settings.grace:
            # As in the health evaluation, the next fire time is the first
            # after this start. On a cron schedule, a start just before the
            # fire time therefore leaves that fire time expected.
            position = started
        else:
            if settled is None or fire >= settled:
                missed.append(fire)
            position = fire
        fire = schedule.next_after(position)
    if not missed:
        return []

    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    connection.execute(
        insert(cron_missed_runs)
        .values([{"service_name": name, "scheduled_at": at, "detected_at": now} for at in missed])
        .on_conflict_do_nothing(index_elements=["service_name", "scheduled_at"])
    )
    log.warning(
        "service %s: %d expected %s did not start, the latest due at %s",
        name,
        len(missed),
        "run" if len(missed) == 1 else "runs",
        missed[-1].isoformat(),
    )
    return missed


class _StartsAfter:
    """The start times of one service's runs after a point, read in batches as needed."""

    def __init__(self, connection: Connection, service: str, after: datetime) -> None:
        self.connection = connection
        self.service = service
        self.read_after = after
        self.starts: list[datetime] = []
        self.exhausted = False

    def first_after(self, t: datetime) -> datetime | None:
        """Return the first start strictly after ``t`` (never before the first point)."""
        while True:
            index = bisect_right(self.starts, t)
            if index < len(self.starts) or self.exhausted:
                return self.starts[index] if index < len(self.starts) else None
            self._read_more()

    def _read_more(self) -> None:
        runs = cron_executions.c
        after = self.starts[-1] if self.starts else self.read_after
        found = self.connection.execute(
            select(runs.execution_time)
            .where(runs.service_name == self.service, runs.execution_time > after)
            .order_by(runs.execution_time)
            .limit(START_BATCH)
        ).scalars()
        batch = [value for value in found if value is not None]
        self.starts.extend(batch)
        self.exhausted = len(batch) < START_BATCH


class Leadership:
    """Makes at most one monitor active per database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._connection: Connection | None = None
        self._file: IO[bytes] | None = None

    def hold(self) -> bool:
        """Return True if this process is, or has just become, the active monitor."""
        if self.engine.dialect.name == "postgresql":
            return self._hold_advisory_lock()
        return self._hold_file_lock()

    def release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except SQLAlchemyError:
                pass
            self._connection = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _hold_advisory_lock(self) -> bool:
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT 1"))
                # End the probe's transaction, because a server that sets
                # idle_in_transaction_session_timeout closes a connection left
                # idle in one, and with it the lock.
                self._connection.commit()
                return True
            except SQLAlchemyError as error:
                log.warning("lost the monitor lock with its connection: %s", error)
                self.release()
        connection = self.engine.connect()
        acquired = connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": MONITOR_LOCK_KEY}
        ).scalar()
        connection.commit()
        if not acquired:
            connection.close()
            return False
        self._connection = connection
        log.info("this monitor is now active")
        return True

    def _hold_file_lock(self) -> bool:
        if self._file is not None:
            return True
        database = self.engine.url.database
        assert database is not None
        handle = open(Path(database + ".monitor-lock"), "a+b")  # noqa: SIM115 - kept open while active
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        log.info("this monitor is now active")
        return True


def run_monitor(
    engine: Engine,
    *,
    interval: float,
    stop: threading.Event,
    on_pass: Callable[[CheckResult], None] | None = None,
    monitor: Monitor | None = None,
) -> None:
    """Check every ``interval`` seconds until ``stop`` is set, when active.

    With a ``monitor`` that has alerts, a thread sends the outbox meanwhile,
    also while another monitor is active, because claims keep each message
    to one sender.
    """
    monitor = monitor or Monitor(engine)
    leadership = Leadership(engine)
    standby_logged = False
    log.info("monitor started; checking every %s s", interval)
    sender_stop = threading.Event()
    sender: DeliveryThread | None = None
    if monitor.alerts is not None:
        sender = DeliveryThread(Sender(engine), sender_stop)
        sender.start()
    try:
        while not stop.is_set():
            try:
                if leadership.hold():
                    standby_logged = False
                    result = monitor.check()
                    if on_pass is not None:
                        on_pass(result)
                elif not standby_logged:
                    log.info("another monitor is active; standing by")
                    standby_logged = True
            except SQLAlchemyError as error:
                log.warning("monitor pass failed, will retry: %s", str(error).splitlines()[0])
            stop.wait(interval)
    finally:
        sender_stop.set()
        if sender is not None:
            # Let a send in progress store its outcome, so it is not repeated.
            sender.join(timeout=SEND_TIMEOUT_SECONDS + 5)
        leadership.release()
        log.info("monitor stopped")
