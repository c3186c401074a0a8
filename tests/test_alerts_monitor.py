"""Alerts from monitor passes, delivered to receivers on loopback, with a frozen clock.

Each test declares services, records runs with chosen times, calls
``Monitor.check(now)`` and ``Sender.deliver_due(now)`` with explicit times,
and counts what the local HTTP receiver got. Every test runs on SQLite and
on PostgreSQL.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, inspect, select

from cronledger.alerts.config import AlertConfig, Channel, mask_url
from cronledger.alerts.delivery import MAX_ATTEMPTS, Sender
from cronledger.alerts.outbox import recent_notifications
from cronledger.monitor import Monitor
from cronledger.recorder import get_recorder
from cronledger.schedule import IntervalSchedule
from cronledger.settings import Config, ServiceSettings
from cronledger.store.engine import get_engine
from cronledger.store.executions import FinishEvent, StartEvent
from cronledger.store.migrate import _alembic_config, ensure_schema
from cronledger.store.services import sync_services
from cronledger.store.tables import (
    cron_alert_services,
    cron_health_events,
    cron_monitor_sight,
    cron_notifications,
    cron_services,
)
from cronledger.store.urls import parse_database_url
from tests.alert_receivers import HangingReceiver, HttpReceiver, closed_port_url

pytestmark = pytest.mark.timeout(180)

T0 = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


def migrated_engine(database_url: str) -> Engine:
    engine = get_engine(database_url)
    ensure_schema(engine)
    return engine


def declare(engine: Engine, *services: ServiceSettings, at: datetime) -> None:
    config = Config(path=Path("cronledger.toml"), services={s.name: s for s in services})
    sync_services(engine, config, at)


def record_run(
    database_url: str, service: str, started_at: datetime, status: str, error: str | None = None
) -> None:
    start = StartEvent(uuid.uuid4().hex, service, started_at, host=None, pid=None)
    recorder = get_recorder(database_url)
    recorder.start(start)
    finished_at = started_at + 30 * SECOND
    recorder.finish(FinishEvent(start, status, finished_at, 30_000, 0, error_message=error))


def channel(url: str) -> Channel:
    return Channel(url, mask_url(url))


def alerts_to(*urls: str, **options: Any) -> AlertConfig:
    options.setdefault("blind_after", timedelta(hours=1))
    return AlertConfig(default_channels=tuple(channel(url) for url in urls), **options)


def titles(receiver: HttpReceiver, path: str = "/hook") -> list[str]:
    return [request.json()["title"] for request in receiver.received(path)]


def outbox_rows(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        query = select(cron_notifications).order_by(cron_notifications.c.id)
        return list(connection.execute(query).all())


# One message per change, and a recovery after it


def test_failure_then_recovery_once_each(database_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(database_url)
    declare(engine, ServiceSettings("export", display_name="Nightly export"), at=T0)
    monitor = Monitor(engine, alerts=alerts_to(http_receiver.url("/hook")))
    sender = Sender(engine)

    record_run(database_url, "export", T0, "completed")
    monitor.check(T0 + MINUTE)
    record_run(database_url, "export", T0 + 2 * MINUTE, "failed", error="disk full on /data")
    for minute in (3, 4, 5):
        monitor.check(T0 + minute * MINUTE)
        sender.deliver_due(T0 + minute * MINUTE)

    assert titles(http_receiver) == ["[cronledger] Nightly export (export) is failing"]
    body = http_receiver.received("/hook")[0].json()["message"]
    assert "State: failing (was healthy)" in body
    assert "disk full on /data" in body
    assert "Since: 2025-06-02 10:03:00 UTC" in body

    record_run(database_url, "export", T0 + 6 * MINUTE, "completed")
    for minute in (7, 8):
        monitor.check(T0 + minute * MINUTE)
        sender.deliver_due(T0 + minute * MINUTE)

    assert titles(http_receiver) == [
        "[cronledger] Nightly export (export) is failing",
        "[cronledger] Nightly export (export) recovered: healthy",
    ]
    recovery = http_receiver.received("/hook")[1].json()["message"]
    assert "State: healthy (was failing)" in recovery
    assert "disk full" not in recovery


def test_no_recovery_without_alert(database_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(database_url)
    declare(engine, ServiceSettings("export"), at=T0)
    monitor = Monitor(engine, alerts=alerts_to(http_receiver.url("/hook")))

    record_run(database_url, "export", T0, "completed")
    monitor.check(T0 + MINUTE)
    Sender(engine).deliver_due(T0 + MINUTE)

    assert titles(http_receiver) == [], "never_run -> healthy is no recovery"


def test_every_channel_gets_one_row(database_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(database_url)
    declare(engine, ServiceSettings("export"), ServiceSettings("quiet"), at=T0)
    config = AlertConfig(
        default_channels=(channel(http_receiver.url("/a")), channel(http_receiver.url("/b"))),
        service_channels={"quiet": ()},
        blind_after=timedelta(hours=1),
    )
    monitor = Monitor(engine, alerts=config)

    record_run(database_url, "export", T0, "failed", error="boom")
    record_run(database_url, "quiet", T0, "failed", error="boom")
    monitor.check(T0 + MINUTE)
    monitor.check(T0 + 2 * MINUTE)
    Sender(engine).deliver_due(T0 + 2 * MINUTE)

    assert len(http_receiver.received("/a")) == 1
    assert len(http_receiver.received("/b")) == 1
    rows = outbox_rows(engine)
    assert [row.service_name for row in rows] == ["export", "export"], "quiet is silenced"


def test_dashboard_link_in_message(database_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(database_url)
    declare(engine, ServiceSettings("export"), at=T0)
    config = alerts_to(http_receiver.url("/hook"), dashboard_url="https://cron.example.com")
    monitor = Monitor(engine, alerts=config)

    record_run(database_url, "export", T0, "failed", error="boom")
    monitor.check(T0 + MINUTE)
    Sender(engine).deliver_due(T0 + MINUTE)

    body = http_receiver.received("/hook")[0].json()["message"]
    assert "Details: https://cron.example.com/services/export" in body


# Failing channels and retries


def test_failing_channel_does_not_block(
    database_url: str, http_receiver: HttpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    engine = migrated_engine(database_url)
    declare(engine, ServiceSettings("export"), at=T0)
    http_receiver.failing.add("/broken")
    closed = closed_port_url()
    config = alerts_to(closed, http_receiver.url("/broken"), http_receiver.url("/hook"))
    monitor = Monitor(engine, alerts=config)
    sender = Sender(engine)

    record_run(database_url, "export", T0, "failed", error="boom")
    changed_at = T0 + MINUTE
    monitor.check(changed_at)
    with caplog.at_level(logging.WARNING, logger="cronledger.alerts.delivery"):
        first = sender.deliver_due(changed_at)

    assert [d.status for d in first] == ["pending", "pending", "sent"]
    assert len(http_receiver.received("/hook")) == 1, "the working channel was blocked"
    assert "error=500" in (first[1].error or ""), first[1].error
    assert "127.0.0.1" in caplog.text
    assert "attempt 1 of" in caplog.text
    rows = {row.channel: row for row in outbox_rows(engine)}
    assert rows[closed].next_attempt_at == changed_at + 30 * SECOND
    assert rows[closed].attempts == 1

    assert sender.deliver_due(changed_at + 29 * SECOND) == [], "retried before its time"

    http_receiver.failing.clear()
    second = sender.deliver_due(changed_at + 30 * SECOND)

    assert sorted(d.status for d in second) == ["pending", "sent"]
    assert len(http_receiver.received("/broken")) == 1
    rows = {row.channel: row for row in outbox_rows(engine)}
    assert rows[closed].attempts == 2
    assert rows[closed].next_attempt_at == changed_at + 30 * SECOND + 60 * SECOND
    assert len(http_receiver.received("/hook")) == 1, "a sent message was sent again"


def test_hanging_channel_times_out(database_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(database_url)
    declare(engine, ServiceSettings("export"), at=T0)
    hanging = HangingReceiver()
    config = alerts_to(hanging.url(), http_receiver.url("/hook"))
    monitor = Monitor(engine, alerts=config)

    record_run(database_url, "export", T0, "failed", error="boom")
    monitor.check(T0 + MINUTE)
    try:
        deliveries = Sender(engine, timeout=1.0).deliver_due(T0 + MINUTE)
    finally:
        hanging.close()

    assert [d.status for d in deliveries] == ["pending", "sent"]
    assert deliveries[0].error is not None
    assert "did not finish within" in deliveries[0].error
    assert len(http_receiver.received("/hook")) == 1


def test_channel_fails_for_good(database_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(database_url)
    declare(engine, ServiceSettings("export"), at=T0)
    closed = closed_port_url()
    monitor = Monitor(engine, alerts=alerts_to(closed))
    sender = Sender(engine)

    record_run(database_url, "export", T0, "failed", error="boom")
    monitor.check(T0 + MINUTE)
    now = T0 + MINUTE
    for _ in range(MAX_ATTEMPTS):
        [delivery] = sender.deliver_due(now)
        now += timedelta(hours=2)

    assert delivery.status == "failed"
    assert sender.deliver_due(now) == []
    with engine.connect() as connection:
        [record] = recent_notifications(connection, "export")
    assert record.outcome == "failed"
    assert record.attempts == MAX_ATTEMPTS
    assert record.channel.startswith("json://127.0.0.1:")
    assert record.error is not None and "Connection error" in record.error


# Reminders


def test_reminders_at_interval(database_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(database_url)
    declare(engine, ServiceSettings("export"), at=T0)
    config = alerts_to(http_receiver.url("/hook"), remind_every=30 * MINUTE)
    monitor = Monitor(engine, alerts=config)
    sender = Sender(engine)

    record_run(database_url, "export", T0, "failed", error="boom")
    for minutes in (1, 30, 31, 45, 60, 61):
        monitor.check(T0 + minutes * MINUTE)
        sender.deliver_due(T0 + minutes * MINUTE)

    assert titles(http_receiver) == [
        "[cronledger] export is failing",
        "[cronledger] Reminder: export is still failing",
        "[cronledger] Reminder: export is still failing",
    ]
    reminded = [row.created_at for row in outbox_rows(engine) if row.kind == "reminder"]
    assert reminded == [T0 + 31 * MINUTE, T0 + 61 * MINUTE]


def test_no_reminder_after_recovery(database_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(database_url)
    declare(engine, ServiceSettings("export"), at=T0)
    config = alerts_to(http_receiver.url("/hook"), remind_every=10 * MINUTE)
    monitor = Monitor(engine, alerts=config)

    record_run(database_url, "export", T0, "failed", error="boom")
    monitor.check(T0 + MINUTE)
    record_run(database_url, "export", T0 + 2 * MINUTE, "completed")
    for minutes in (3, 20, 40):
        monitor.check(T0 + minutes * MINUTE)
    Sender(engine).deliver_due(T0 + 40 * MINUTE)

    assert [row.kind for row in outbox_rows(engine)] == ["alert", "recovery"]


# Blind gaps


def scheduled(name: str) -> ServiceSettings:
    return ServiceSettings(name, schedule=IntervalSchedule(10 * MINUTE), grace=MINUTE)


def test_monitor_gap_sends_one_message(database_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(database_url)
    declare(engine, scheduled("a"), scheduled("b"), scheduled("c"), at=T0 - MINUTE)
    config = alerts_to(http_receiver.url("/hook"), blind_after=5 * MINUTE)
    monitor = Monitor(engine, alerts=config)
    sender = Sender(engine)
    for name in ("a", "b", "c"):
        record_run(database_url, name, T0, "completed")
    monitor.check(T0 + MINUTE)

    # The monitor is down from T0 + 1 min to T0 + 40 min.
    back = T0 + 40 * MINUTE
    result = monitor.check(back)
    sender.deliver_due(back)

    assert {name: h.state.value for name, h in result.health.items()} == dict.fromkeys(
        "abc", "late"
    )
    assert titles(http_receiver) == [
        "[cronledger] The monitor could not check for a while; lateness is judged again"
    ]
    assert result.alerts is not None and sorted(result.alerts.held) == ["a", "b", "c"]

    # Lateness is judged from T0 + 40 min: next expected T0 + 50, late after T0 + 51.
    record_run(database_url, "a", T0 + 45 * MINUTE, "completed")
    for minutes in (41, 44, 47, 50, 51):
        monitor.check(T0 + minutes * MINUTE)
        sender.deliver_due(T0 + minutes * MINUTE)
    assert len(titles(http_receiver)) == 1, titles(http_receiver)

    monitor.check(T0 + 52 * MINUTE)
    sender.deliver_due(T0 + 52 * MINUTE)

    assert sorted(titles(http_receiver)[1:]) == ["[cronledger] b is late", "[cronledger] c is late"]


def test_no_runs_gap_sends_one_message(database_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(database_url)
    declare(engine, scheduled("a"), scheduled("b"), scheduled("c"), at=T0 - MINUTE)
    config = alerts_to(http_receiver.url("/hook"), blind_after=5 * MINUTE, remind_every=5 * MINUTE)
    monitor = Monitor(engine, alerts=config)
    sender = Sender(engine)
    for name in ("a", "b", "c"):
        record_run(database_url, name, T0, "completed")

    # The monitor runs every 2 minutes, but no run reaches the database.
    for minutes in range(2, 31, 2):
        monitor.check(T0 + minutes * MINUTE)
        sender.deliver_due(T0 + minutes * MINUTE)

    assert titles(http_receiver) == [
        "[cronledger] No run reaches the database; late alerts are held"
    ]
    gap_body = http_receiver.received("/hook")[0].json()["message"]
    assert "Due or late now: a, b, c" in gap_body

    # Runs arrive again for a and b; c stays silent and is judged from T0 + 32.
    record_run(database_url, "a", T0 + 31 * MINUTE, "completed")
    record_run(database_url, "b", T0 + 31 * MINUTE, "completed")
    for minutes in range(32, 44, 2):
        if minutes == 42:
            record_run(database_url, "a", T0 + 41 * MINUTE, "completed")
            record_run(database_url, "b", T0 + 41 * MINUTE, "completed")
        monitor.check(T0 + minutes * MINUTE)
        sender.deliver_due(T0 + minutes * MINUTE)
    assert len(titles(http_receiver)) == 1, titles(http_receiver)

    monitor.check(T0 + 44 * MINUTE)
    sender.deliver_due(T0 + 44 * MINUTE)

    assert titles(http_receiver)[1:] == ["[cronledger] c is late"]


def test_one_late_service_is_not_blind(database_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(database_url)
    declare(engine, scheduled("a"), ServiceSettings("b"), at=T0 - MINUTE)
    config = alerts_to(http_receiver.url("/hook"), blind_after=5 * MINUTE)
    monitor = Monitor(engine, alerts=config)
    record_run(database_url, "a", T0, "completed")
    record_run(database_url, "b", T0, "completed")

    for minutes in range(2, 15, 2):
        monitor.check(T0 + minutes * MINUTE)
    Sender(engine).deliver_due(T0 + 14 * MINUTE)

    assert titles(http_receiver) == ["[cronledger] a is late"]


# Several monitors and senders


def private_engine(database_url: str) -> Engine:
    """Return an engine with a pool of its own, as another process would have."""
    return create_engine(parse_database_url(database_url))


def test_racing_senders_send_once(postgres_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(postgres_url)
    services = [ServiceSettings(f"job-{index}") for index in range(12)]
    declare(engine, *services, at=T0)
    for settings in services:
        record_run(postgres_url, settings.name, T0, "failed", error="boom")
    urls = [http_receiver.url("/a"), http_receiver.url("/b")]
    Monitor(engine, alerts=alerts_to(*urls)).check(T0 + MINUTE)

    engines = [private_engine(postgres_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    delivered: list[int] = []

    def deliver(own_engine: Engine) -> None:
        sender = Sender(own_engine)
        barrier.wait()
        delivered.extend(d.row_id for d in sender.deliver_due(T0 + MINUTE) if d.status == "sent")

    threads = [threading.Thread(target=deliver, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for own_engine in engines:
        own_engine.dispose()

    assert sorted(delivered) == sorted(set(delivered)), "a row was delivered twice"
    assert len(delivered) == 24
    for path in ("/a", "/b"):
        got = sorted(request.json()["title"] for request in http_receiver.received(path))
        assert got == sorted(f"[cronledger] job-{index} is failing" for index in range(12))


def test_racing_monitors_plan_once(postgres_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(postgres_url)
    declare(engine, ServiceSettings("export"), at=T0)
    record_run(postgres_url, "export", T0, "failed", error="boom")
    config = alerts_to(http_receiver.url("/hook"))
    engines = [private_engine(postgres_url) for _ in range(3)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def check(own_engine: Engine, offset: int) -> None:
        monitor = Monitor(own_engine, alerts=config)
        barrier.wait()
        try:
            monitor.check(T0 + MINUTE + offset * SECOND)
            Sender(own_engine).deliver_due(T0 + 2 * MINUTE)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=check, args=(e, i)) for i, e in enumerate(engines)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for own_engine in engines:
        own_engine.dispose()

    assert errors == []
    assert titles(http_receiver) == ["[cronledger] export is failing"]
    assert len(outbox_rows(engine)) == 1


# The dashboard's view


def test_recent_notifications_records(database_url: str, http_receiver: HttpReceiver) -> None:
    engine = migrated_engine(database_url)
    declare(engine, ServiceSettings("export"), ServiceSettings("other"), at=T0)
    http_receiver.failing.add("/broken")
    config = alerts_to(http_receiver.url("/hook"), "json://user:s3cret@127.0.0.1:1/x")
    monitor = Monitor(engine, alerts=config)

    record_run(database_url, "export", T0, "failed", error="boom")
    record_run(database_url, "other", T0, "failed", error="boom")
    monitor.check(T0 + MINUTE)
    Sender(engine).deliver_due(T0 + MINUTE)
    record_run(database_url, "export", T0 + 2 * MINUTE, "completed")
    monitor.check(T0 + 3 * MINUTE)

    with engine.connect() as connection:
        records = recent_notifications(connection, "export", limit=50)
        limited = recent_notifications(connection, "export", limit=1)

    assert [(r.kind, r.state, r.outcome) for r in records] == [
        ("recovery", "healthy", "pending"),
        ("recovery", "healthy", "pending"),
        ("alert", "failing", "pending"),
        ("alert", "failing", "sent"),
    ]
    assert [r.kind for r in limited] == ["recovery"]
    channels = {r.channel for r in records}
    assert all("s3cret" not in value for value in channels), channels
    failed = next(r for r in records if r.kind == "alert" and r.outcome == "pending")
    assert failed.error is not None
    assert failed.time == T0 + MINUTE
    sent = next(r for r in records if r.outcome == "sent")
    assert sent.time == T0 + MINUTE


# Schema


def test_alert_tables_match_migration(database_url: str) -> None:
    engine = migrated_engine(database_url)
    inspector = inspect(engine)

    for table in (cron_notifications, cron_alert_services, cron_monitor_sight):
        migrated = [column["name"] for column in inspector.get_columns(table.name)]
        declared = [column.name for column in table.columns]
        assert migrated == declared, f"{table.name}: migrated {migrated}, tables.py {declared}"
    with engine.connect() as connection:
        rows = connection.execute(select(cron_monitor_sight)).all()
    assert [(row.id, row.event_cursor) for row in rows] == [(1, 0)]


def test_upgrade_sends_no_old_alerts(database_url: str, http_receiver: HttpReceiver) -> None:
    engine = get_engine(database_url)
    config = _alembic_config()
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
        connection.execute(
            cron_health_events.insert().values(
                service_name="export", state="failing", reason="old", changed_at=T0
            )
        )
        connection.commit()
    ensure_schema(engine)
    declare(engine, ServiceSettings("export"), at=T0 - MINUTE)
    record_run(database_url, "export", T0 - MINUTE, "failed", error="old failure")
    # The service is still in the state of the old event, so only the cursor
    # that the migration set keeps the event from being alerted.
    with engine.begin() as connection:
        connection.execute(cron_services.update().values(health_state="failing", health_since=T0))

    result = Monitor(engine, alerts=alerts_to(http_receiver.url("/hook"))).check(T0 + MINUTE)
    Sender(engine).deliver_due(T0 + MINUTE)

    assert result.changes == []
    assert titles(http_receiver) == [], "an event from before the upgrade was alerted"
