"""The notification outbox: one row per message and channel in cron_notifications.

Rows are added by the alert planner in the transaction that handles their
health event, each with a unique ``dedupe_key``, so planning the same
message twice adds nothing. A sender delivers a row only after claiming it
with a conditional update (``status = 'pending'`` and no live lease), so of
several senders exactly one wins each row. A lease (``claimed_until``) that
expires lets another sender retry the row of a sender that died.

NOTE: a sender that dies after Apprise delivered a message but before it
recorded the outcome leaves a claimed row. After the lease, another sender
sends that message again. No outbox can rule this out without the
receiver's help.

``cronledger prune`` deletes sent and failed rows past its age; pending
rows stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from cronledger.alerts.config import Channel
from cronledger.alerts.messages import Message
from cronledger.store.tables import cron_notifications

PENDING = "pending"
SENT = "sent"
FAILED = "failed"


def enqueue(
    connection: Connection,
    *,
    dedupe_key: str,
    kind: str,
    service_name: str | None,
    event_id: int | None,
    health_state: str | None,
    channels: tuple[Channel, ...],
    message: Message,
    now: datetime,
) -> int:
    """Add one pending row per channel; return how many rows were new."""
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    added = 0
    for channel in channels:
        result = connection.execute(
            insert(cron_notifications)
            .values(
                dedupe_key=f"{dedupe_key}:{channel.key}",
                kind=kind,
                service_name=service_name,
                event_id=event_id,
                health_state=health_state,
                channel=channel.url,
                channel_masked=channel.masked,
                title=message.title,
                body=message.body,
                notify_type=message.notify_type,
                status=PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
        )
        added += result.rowcount
    return added


@dataclass(frozen=True)
class ClaimedNotification:
    """A pending row that this sender has claimed and must now send."""

    id: int
    kind: str
    service_name: str | None
    channel: str
    channel_masked: str
    message: Message
    attempts: int


def due_ids(connection: Connection, now: datetime, limit: int) -> list[int]:
    """Return the ids of pending rows whose next attempt is due and that no live lease holds."""
    rows = cron_notifications.c
    query = (
        select(rows.id)
        .where(
            rows.status == PENDING,
            rows.next_attempt_at <= now,
            or_(rows.claimed_until.is_(None), rows.claimed_until < now),
        )
        .order_by(rows.next_attempt_at, rows.id)
        .limit(limit)
    )
    return list(connection.execute(query).scalars())


def claim(
    connection: Connection, row_id: int, sender: str, now: datetime, lease: timedelta
) -> ClaimedNotification | None:
    """Claim one due row for ``sender``; return it, or None when another sender won it."""
    rows = cron_notifications.c
    claimed = connection.execute(
        cron_notifications.update()
        .where(
            rows.id == row_id,
            rows.status == PENDING,
            rows.next_attempt_at <= now,
            or_(rows.claimed_until.is_(None), rows.claimed_until < now),
        )
        .values(claimed_by=sender, claimed_until=now + lease, attempts=rows.attempts + 1)
        .returning(
            rows.id,
            rows.kind,
            rows.service_name,
            rows.channel,
            rows.channel_masked,
            rows.title,
            rows.body,
            rows.notify_type,
            rows.attempts,
        )
    ).first()
    if claimed is None:
        return None
    return ClaimedNotification(
        id=claimed.id,
        kind=claimed.kind,
        service_name=claimed.service_name,
        channel=claimed.channel,
        channel_masked=claimed.channel_masked,
        message=Message(claimed.title, claimed.body, claimed.notify_type),
        attempts=claimed.attempts,
    )


def record_outcome(
    connection: Connection,
    row_id: int,
    sender: str,
    *,
    status: str,
    now: datetime,
    error: str | None,
    next_attempt_at: datetime | None = None,
) -> bool:
    """Store the outcome of a send; return False when the claim was lost meanwhile."""
    rows = cron_notifications.c
    values: dict[str, object] = {
        "status": status,
        "claimed_by": None,
        "claimed_until": None,
        "last_error": error,
    }
    if status == SENT:
        values["sent_at"] = now
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    updated = connection.execute(
        cron_notifications.update()
        .where(rows.id == row_id, rows.claimed_by == sender)
        .values(**values)
    ).rowcount
    return bool(updated)


@dataclass(frozen=True)
class NotificationRecord:
    """One notification as the dashboard and ``cronledger alerts list`` show it.

    ``time`` is when it was sent, or when it was queued while not sent.
    ``outcome`` is ``sent``, ``pending`` (waiting for its first or next
    attempt) or ``failed`` (no attempt left). ``error`` is the last error.
    """

    id: int
    time: datetime
    service_name: str | None
    channel: str
    kind: str
    state: str | None
    outcome: str
    error: str | None
    attempts: int
    next_attempt_at: datetime | None


def recent_notifications(
    connection: Connection, service_name: str | None, limit: int = 50
) -> list[NotificationRecord]:
    """Return the newest notifications of a service (all of them for None), newest first."""
    rows = cron_notifications.c
    query = select(cron_notifications).order_by(rows.created_at.desc(), rows.id.desc()).limit(limit)
    if service_name is not None:
        query = query.where(rows.service_name == service_name)
    records = []
    for row in connection.execute(query):
        records.append(
            NotificationRecord(
                id=row.id,
                time=row.sent_at or row.created_at,
                service_name=row.service_name,
                channel=row.channel_masked,
                kind=row.kind,
                state=row.health_state,
                outcome=row.status,
                error=row.last_error,
                attempts=row.attempts,
                next_attempt_at=row.next_attempt_at if row.status == PENDING else None,
            )
        )
    return records
