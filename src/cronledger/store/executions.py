"""Writes of run events to cron_executions.

Each event is normally one statement and one round trip. The start is an
insert that ignores a replayed duplicate. The finish is an update keyed by
the run key, followed by an insert only when the start never reached the
database.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from cronledger.store.tables import (
    OVERWRITABLE_STATUSES,
    STARTED,
    UTCDateTime,
    cron_executions,
)


@dataclass(frozen=True)
class StartEvent:
    """The start of one run, as written to the database or the spool."""

    run_key: str
    service_name: str
    started_at: datetime
    host: str | None
    pid: int | None


@dataclass(frozen=True)
class FinishEvent:
    """The end of one run, with its start, so it can be written on its own."""

    start: StartEvent
    status: str
    finished_at: datetime
    duration_ms: int
    items_processed: int
    error_message: str | None = None
    exit_code: int | None = None
    output_tail: str | None = None


OUTCOME_COLUMNS = (
    "status",
    "finished_at",
    "heartbeat_at",
    "duration_ms",
    "items_processed",
    "error_message",
    "exit_code",
    "output_tail",
)


@functools.cache
def _statements(dialect_name: str) -> tuple[Any, Any, Any]:
    """Build the start insert, finish update and finish insert once per dialect.

    They take every value as a bound parameter, so a run event costs no
    statement construction, only the execution of a cached compiled form.
    """
    insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    columns = cron_executions.c

    start = (
        insert(cron_executions)
        .values(
            run_key=bindparam("run_key"),
            service_name=bindparam("service_name"),
            execution_time=bindparam("started_at", type_=UTCDateTime()),
            status=STARTED,
            items_processed=0,
            heartbeat_at=bindparam("started_at", type_=UTCDateTime()),
            host=bindparam("host"),
            pid=bindparam("pid"),
        )
        .on_conflict_do_nothing(index_elements=["run_key"])
        .returning(columns.id)
    )
    outcome = {name: bindparam(name, type_=columns[name].type) for name in OUTCOME_COLUMNS}
    finish_update = (
        cron_executions.update()
        .where(columns.run_key == bindparam("key"), columns.status.in_(OVERWRITABLE_STATUSES))
        .values(**outcome)
    )
    finish_insert = (
        insert(cron_executions)
        .values(
            run_key=bindparam("run_key"),
            service_name=bindparam("service_name"),
            execution_time=bindparam("started_at", type_=UTCDateTime()),
            host=bindparam("host"),
            pid=bindparam("pid"),
            **outcome,
        )
        .on_conflict_do_nothing(index_elements=["run_key"])
    )
    return start, finish_update, finish_insert


def _start_values(event: StartEvent) -> dict[str, Any]:
    return {
        "run_key": event.run_key,
        "service_name": event.service_name,
        "started_at": event.started_at,
        "host": event.host,
        "pid": event.pid,
    }


def record_start(connection: Connection, event: StartEvent) -> int | None:
    """Insert the row of a started run and return its id.

    A replayed start whose run already has a row changes nothing and
    returns that row's id.
    """
    start, _, _ = _statements(connection.dialect.name)
    row_id = connection.execute(start, _start_values(event)).scalar()
    if row_id is None:
        row_id = connection.execute(
            select(cron_executions.c.id).where(cron_executions.c.run_key == event.run_key)
        ).scalar()
    return row_id


def record_finish(connection: Connection, event: FinishEvent) -> None:
    """Record the outcome of a run, inserting the whole row if it is missing.

    A row that already finished is left alone, so replaying a finish twice
    is harmless. A row the monitor marked timed_out takes the real outcome.
    """
    outcome = {
        "status": event.status,
        "finished_at": event.finished_at,
        "heartbeat_at": event.finished_at,
        "duration_ms": event.duration_ms,
        "items_processed": event.items_processed,
        "error_message": event.error_message,
        "exit_code": event.exit_code,
        "output_tail": event.output_tail,
    }
    _, finish_update, finish_insert = _statements(connection.dialect.name)

    # The usual case, a recorded start, takes one UPDATE. An upsert would do
    # it in one statement too, but it draws a sequence value on every call.
    updated = connection.execute(finish_update, {"key": event.start.run_key, **outcome}).rowcount
    if updated:
        return

    # The start never arrived (it is still spooled, or was lost): insert the
    # whole run. If the row exists it has already finished; keep it.
    connection.execute(finish_insert, {**_start_values(event.start), **outcome})


def record_heartbeat(connection: Connection, run_key: str, at: datetime) -> None:
    """Note that a run in progress is still alive."""
    connection.execute(
        cron_executions.update()
        .where(cron_executions.c.run_key == run_key, cron_executions.c.status == STARTED)
        .values(heartbeat_at=at)
    )
