"""Turn recorded health changes into outbox rows, each once.

The monitor records every health change as a row in cron_health_events.
After each pass, ``plan_alerts`` reads the events after a stored cursor and
decides in one transaction:

- a change into late, failing or stuck opens an incident and queues an
  alert to the service's channels (late alerts may be held, see
  cronledger.alerts.blind);
- a change to healthy while an incident is open queues a recovery message;
- an incident still open after ``remind_every`` queues a reminder;
- a new blind gap queues one gap message to the default channels.

The transaction starts by claiming the pass with a conditional update of
the one cron_monitor_sight row, which also locks it, so concurrent planners
take turns. Every outbox row has a unique dedupe key, so a planner that
repeats work after a crash adds no second message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, or_, select, type_coerce
from sqlalchemy.dialects import postgresql, sqlite

from cronledger.alerts.blind import Gap, Sight, SightState, judge_sight
from cronledger.alerts.config import AlertConfig
from cronledger.alerts.messages import (
    UNHEALTHY_STATES,
    GapFacts,
    Kind,
    ServiceFacts,
    alert_message,
    gap_message,
)
from cronledger.alerts.outbox import enqueue
from cronledger.health import Health, HealthState
from cronledger.store.services import ServiceRecord, load_services
from cronledger.store.tables import (
    UTCDateTime,
    cron_alert_services,
    cron_executions,
    cron_health_events,
    cron_monitor_sight,
    cron_services,
)

log = logging.getLogger(__name__)

SIGHT_ROW_ID = 1

# Evaluates one stored service's health at an instant (monitor.current_health).
HealthEvaluator = Callable[[Connection, ServiceRecord, datetime], Health]


def reminder_due(reminded_at: datetime, remind_every: timedelta | None, now: datetime) -> bool:
    """Return True when the last alert or reminder of an open incident is ``remind_every`` old."""
    if remind_every is None:
        return False
    return now - reminded_at >= remind_every


@dataclass
class PlanResult:
    """The outcome of one planning step. ``planned`` is False when another planner had this pass."""

    planned: bool = False
    queued: int = 0
    held: list[str] = field(default_factory=list)
    gap: Gap | None = None


@dataclass
class _AlertState:
    """One row of cron_alert_services, changed in memory and written back at the end."""

    service_name: str
    incident_state: str | None = None
    incident_event_id: int | None = None
    incident_since: datetime | None = None
    reminded_at: datetime | None = None
    held_event_id: int | None = None
    changed: bool = False

    def update(self, **values: Any) -> None:
        for key, value in values.items():
            setattr(self, key, value)
        self.changed = True


def plan_alerts(
    engine: Engine,
    config: AlertConfig,
    health: Mapping[str, Health],
    now: datetime,
    evaluate: HealthEvaluator,
) -> PlanResult:
    """Queue the alerts that the health events since the last step call for.

    ``health`` is this pass's health of every service, from which the
    blindness check counts the late services.
    """
    with engine.begin() as connection:
        claimed = _claim_pass(connection, now)
        if claimed is None:
            return PlanResult()

        late = sorted(name for name, item in health.items() if item.state is HealthState.LATE)
        sight = judge_sight(
            SightState(
                previous_pass=claimed.previous_pass_at,
                blind_since=claimed.blind_since,
                blind_reason=claimed.blind_reason,
                sight_since=claimed.sight_since,
            ),
            now=now,
            newest_start=_newest_start(connection),
            overdue_since=[
                item.overdue_since
                for item in health.values()
                if item.state is HealthState.LATE and item.overdue_since is not None
            ],
            blind_after=config.blind_after,
        )
        planner = _Planner(connection, config, now, sight, evaluate)
        if sight.new_gap is not None:
            planner.announce_gap(sight.new_gap, late)
        cursor = planner.handle_events(claimed.event_cursor)
        planner.release_held()
        planner.remind()
        planner.save()

        connection.execute(
            cron_monitor_sight.update()
            .where(cron_monitor_sight.c.id == SIGHT_ROW_ID)
            .values(
                event_cursor=cursor,
                blind_since=sight.blind_since,
                blind_reason=sight.blind_reason,
                sight_since=sight.sight_since,
            )
        )
        return PlanResult(True, planner.queued, planner.held, sight.new_gap)


def _claim_pass(connection: Connection, now: datetime) -> Any:
    """Claim the planning step at ``now``, returning the sight row as it was; or None."""
    sight = cron_monitor_sight.c
    claim = (
        cron_monitor_sight.update()
        .where(sight.id == SIGHT_ROW_ID, or_(sight.pass_at.is_(None), sight.pass_at < now))
        .values(previous_pass_at=sight.pass_at, pass_at=now)
        .returning(
            sight.previous_pass_at,
            sight.event_cursor,
            sight.blind_since,
            sight.blind_reason,
            sight.sight_since,
        )
    )
    row = connection.execute(claim).first()
    if row is not None:
        return row

    # The migration creates the row; it is created here only if someone deleted it.
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    cursor = connection.execute(select(func.coalesce(func.max(cron_health_events.c.id), 0)))
    connection.execute(
        insert(cron_monitor_sight)
        .values(id=SIGHT_ROW_ID, event_cursor=cursor.scalar_one())
        .on_conflict_do_nothing(index_elements=["id"])
    )
    return connection.execute(claim).first()


def _newest_start(connection: Connection) -> datetime | None:
    # MAX() drops the column type on SQLite, so the UTC conversion is put back.
    query = select(type_coerce(func.max(cron_executions.c.execution_time), UTCDateTime()))
    value: datetime | None = connection.execute(query).scalar()
    return value


class _Planner:
    """The decisions of one planning step, inside its transaction."""

    def __init__(
        self,
        connection: Connection,
        config: AlertConfig,
        now: datetime,
        sight: Sight,
        evaluate: HealthEvaluator,
    ) -> None:
        self.connection = connection
        self.config = config
        self.now = now
        self.sight = sight
        self.evaluate = evaluate
        self.queued = 0
        self.held: list[str] = []
        self.records = {record.settings.name: record for record in load_services(connection)}
        self.facts = {row.name: row for row in connection.execute(select(cron_services))}
        self.states = {
            row.service_name: _AlertState(
                row.service_name,
                row.incident_state,
                row.incident_event_id,
                row.incident_since,
                row.reminded_at,
                row.held_event_id,
            )
            for row in connection.execute(select(cron_alert_services))
        }

    def state_of(self, name: str) -> _AlertState:
        if name not in self.states:
            self.states[name] = _AlertState(name)
        return self.states[name]

    def announce_gap(self, gap: Gap, late: list[str]) -> None:
        facts = GapFacts(gap.reason.value, gap.start, gap.end, tuple(late))
        message = gap_message(facts, self.config.dashboard_url, self.now)
        self.queued += enqueue(
            self.connection,
            dedupe_key=f"gap:{gap.reason.value}:{gap.start.isoformat()}",
            kind=Kind.GAP,
            service_name=None,
            event_id=None,
            health_state=None,
            channels=self.config.channels_for(None),
            message=message,
            now=self.now,
        )
        log.warning(
            "cronledger was blind (%s) since %s; one gap message queued in place of "
            "late alerts for: %s",
            gap.reason.value,
            gap.start.isoformat(),
            ", ".join(late) or "no service",
        )

    def handle_events(self, cursor: int) -> int:
        """Plan the events after ``cursor`` in order; return the new cursor."""
        events = cron_health_events.c
        rows = self.connection.execute(
            select(cron_health_events).where(events.id > cursor).order_by(events.id)
        ).all()
        for event in rows:
            self._handle(event)
            cursor = max(cursor, event.id)
        return cursor

    def _handle(self, event: Any) -> None:
        name = event.service_name
        state = self.state_of(name)
        if event.state == HealthState.HEALTHY:
            if state.incident_state is not None:
                self._queue(Kind.RECOVERY, event, state)
            state.update(
                incident_state=None,
                incident_event_id=None,
                incident_since=None,
                reminded_at=None,
                held_event_id=None,
            )
            return
        if event.state not in UNHEALTHY_STATES:
            # running, paused, never_run: an open incident stays open until
            # healthy, and a held late alert is dropped.
            if state.held_event_id is not None:
                state.update(held_event_id=None)
            return
        if not self._is_current(event):
            # The service moved on before this step saw the event, because
            # planning lagged (a failed step, or passes of a monitor without
            # alerts). Only the current state is worth an alert.
            return
        if event.state == HealthState.LATE and (
            self.sight.hold_late or not self._late_since_sight(name)
        ):
            state.update(held_event_id=event.id)
            self.held.append(name)
            log.info("service %s: late alert held until lateness is judged after the gap", name)
            return
        self._open_incident(event, state)

    def _is_current(self, event: Any) -> bool:
        record = self.records.get(event.service_name)
        return (
            record is not None
            and record.health_state == event.state
            and record.health_since == event.changed_at
        )

    def _late_since_sight(self, name: str) -> bool:
        """Return True if the service is late when judged from the end of the latest gap."""
        sight_since = self.sight.sight_since
        record = self.records.get(name)
        if record is None:
            return False
        if sight_since is None:
            return True
        resumed_at = record.resumed_at
        anchor = sight_since if resumed_at is None else max(resumed_at, sight_since)
        health = self.evaluate(self.connection, replace(record, resumed_at=anchor), self.now)
        return health.state is HealthState.LATE

    def _open_incident(self, event: Any, state: _AlertState) -> None:
        self._queue(Kind.ALERT, event, state)
        state.update(
            incident_state=event.state,
            incident_event_id=event.id,
            incident_since=event.changed_at,
            reminded_at=self.now,
            held_event_id=None,
        )

    def release_held(self) -> None:
        """Queue held late alerts of services still late when judged from the gap's end."""
        if self.sight.hold_late:
            return
        for state in list(self.states.values()):
            if state.held_event_id is None:
                continue
            event = self.connection.execute(
                select(cron_health_events).where(cron_health_events.c.id == state.held_event_id)
            ).first()
            if event is None or not self._is_current(event):
                state.update(held_event_id=None)
                continue
            if self._late_since_sight(state.service_name):
                log.info(
                    "service %s: still late after the blind gap; alert queued",
                    event.service_name,
                )
                self._open_incident(event, state)

    def remind(self) -> None:
        """Queue a reminder for each incident whose service is still in the alerted state."""
        for state in list(self.states.values()):
            if state.incident_state is None or state.reminded_at is None:
                continue
            record = self.records.get(state.service_name)
            if record is None or record.health_state != state.incident_state:
                continue
            if self.sight.blind_since is not None and state.incident_state == HealthState.LATE:
                continue  # the gap message covers late services while blind
            if not reminder_due(state.reminded_at, self.config.remind_every, self.now):
                continue
            facts = self._facts(
                state.service_name,
                state.incident_state,
                self.facts[state.service_name].health_reason or "",
                state.incident_since or self.now,
                None,
            )
            message = alert_message(Kind.REMINDER, facts, self.config.dashboard_url, self.now)
            self.queued += enqueue(
                self.connection,
                dedupe_key=f"reminder:{state.incident_event_id}:{self.now.isoformat()}",
                kind=Kind.REMINDER,
                service_name=state.service_name,
                event_id=state.incident_event_id,
                health_state=state.incident_state,
                channels=self.config.channels_for(state.service_name),
                message=message,
                now=self.now,
            )
            state.update(reminded_at=self.now)

    def _queue(self, kind: Kind, event: Any, state: _AlertState) -> None:
        facts = self._facts(
            event.service_name, event.state, event.reason, event.changed_at, event.previous_state
        )
        message = alert_message(kind, facts, self.config.dashboard_url, self.now)
        added = enqueue(
            self.connection,
            dedupe_key=f"{kind.value}:{event.id}",
            kind=kind,
            service_name=event.service_name,
            event_id=event.id,
            health_state=event.state,
            channels=self.config.channels_for(event.service_name),
            message=message,
            now=self.now,
        )
        self.queued += added
        if not self.config.channels_for(event.service_name):
            log.info(
                "service %s: no alert channel set, so no %s for %s is sent "
                "(channels: the [alerts] table, see docs/alerts.md)",
                event.service_name,
                kind.value,
                event.state,
            )
            return
        log.info(
            "service %s: %s for %s queued to %d channels",
            event.service_name,
            kind.value,
            event.state,
            added,
        )

    def _facts(
        self, name: str, state: str, reason: str, since: datetime, previous: str | None
    ) -> ServiceFacts:
        record = self.records.get(name)
        row = self.facts.get(name)
        error = None
        if row is not None and row.last_error:
            error = row.last_error
            if row.last_failure_at is not None:
                started = row.last_failure_at.strftime("%Y-%m-%d %H:%M:%S")
                error = f"{error} (run started {started} UTC)"
        return ServiceFacts(
            name=name,
            display_name=record.settings.display_name if record else name,
            timezone=record.settings.timezone if record else "UTC",
            state=state,
            reason=reason,
            since=since,
            previous_state=previous,
            last_error=error,
        )

    def save(self) -> None:
        """Write the changed alert states back."""
        dialect = self.connection.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        for state in self.states.values():
            if not state.changed:
                continue
            values = {
                "incident_state": state.incident_state,
                "incident_event_id": state.incident_event_id,
                "incident_since": state.incident_since,
                "reminded_at": state.reminded_at,
                "held_event_id": state.held_event_id,
            }
            self.connection.execute(
                insert(cron_alert_services)
                .values(service_name=state.service_name, **values)
                .on_conflict_do_update(index_elements=["service_name"], set_=values)
            )
