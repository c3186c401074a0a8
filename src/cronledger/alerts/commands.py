"""The bodies of ``cronledger alerts test`` and ``cronledger alerts list``."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cronledger.alerts.config import AlertConfig, Channel
from cronledger.alerts.delivery import SendResult, send
from cronledger.alerts.messages import Kind, Message, ServiceFacts, message_for_test
from cronledger.alerts.outbox import FAILED, SENT, NotificationRecord, enqueue
from cronledger.store.tables import cron_notifications, cron_services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestDelivery:
    """The outcome of the test message on one channel."""

    channel: Channel
    result: SendResult


def send_test(
    engine: Engine | None, config: AlertConfig, service_name: str | None, now: datetime
) -> list[TestDelivery]:
    """Send a test message to the channels of ``service_name`` (the default ones for None).

    Each outcome is also recorded in the outbox as a ``test`` notification
    when ``engine`` is given. A database error there is only logged, because
    the messages were sent already.
    """
    facts = _service_facts(engine, service_name, now) if service_name else None
    message = message_for_test(facts, config.dashboard_url, now)
    deliveries = [
        TestDelivery(channel, send(channel.url, message))
        for channel in config.channels_for(service_name)
    ]
    if engine is not None:
        try:
            _record_tests(engine, service_name, message, deliveries, now)
        except SQLAlchemyError as error:
            log.warning("test outcomes not recorded: %s", str(error).splitlines()[0])
    return deliveries


def _service_facts(engine: Engine | None, name: str, now: datetime) -> ServiceFacts:
    row = None
    if engine is not None:
        try:
            with engine.connect() as connection:
                query = cron_services.select().where(cron_services.c.name == name)
                row = connection.execute(query).first()
        except SQLAlchemyError as error:
            log.warning("service %s not read from the database: %s", name, error)
    if row is None:
        return ServiceFacts(name, name, "UTC", "unknown", "not recorded yet", now)
    return ServiceFacts(
        name=name,
        display_name=row.display_name or name,
        timezone=row.timezone or "UTC",
        state=row.health_state or "unknown",
        reason=row.health_reason or "not checked by a monitor yet",
        since=row.health_since or now,
        last_error=row.last_error,
    )


def _record_tests(
    engine: Engine,
    service_name: str | None,
    message: Message,
    deliveries: list[TestDelivery],
    now: datetime,
) -> None:
    test_id = uuid.uuid4().hex
    rows = cron_notifications.c
    with engine.begin() as connection:
        for delivery in deliveries:
            key = f"test:{test_id}"
            enqueue(
                connection,
                dedupe_key=key,
                kind=Kind.TEST,
                service_name=service_name,
                event_id=None,
                health_state=None,
                channels=(delivery.channel,),
                message=message,
                now=now,
            )
            connection.execute(
                cron_notifications.update()
                .where(rows.dedupe_key == f"{key}:{delivery.channel.key}")
                .values(
                    status=SENT if delivery.result.delivered else FAILED,
                    attempts=1,
                    sent_at=now if delivery.result.delivered else None,
                    last_error=delivery.result.error,
                )
            )


def format_notification(record: NotificationRecord) -> str:
    """Write one notification as a line of ``cronledger alerts list``."""
    outcome = record.outcome
    if record.outcome == "pending" and record.attempts and record.next_attempt_at is not None:
        next_at = record.next_attempt_at.strftime("%H:%M:%S")
        outcome = f"pending (attempt {record.attempts} failed, next at {next_at} UTC)"
    elif record.outcome == "failed":
        outcome = f"failed after {record.attempts} attempts"
    parts = [
        record.time.strftime("%Y-%m-%d %H:%M:%S UTC"),
        record.kind,
        record.service_name or "-",
        record.state or "-",
        record.channel,
        outcome,
    ]
    line = "  ".join(parts)
    if record.error and record.outcome != "sent":
        line += f"\n    error: {record.error}"
    return line
