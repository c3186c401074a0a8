"""Table definitions used to build queries.

The schema itself is created and changed only by the Alembic migrations in
``migrations/``; these Core tables describe it for query building and must
stay in step with them (a test compares the two).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

# Statuses of one run. The first three are the origin schema's own; a run
# the monitor gives up on becomes timed_out.
STARTED = "started"
COMPLETED = "completed"
FAILED = "failed"
TIMED_OUT = "timed_out"
FINISHED_STATUSES = (COMPLETED, FAILED, TIMED_OUT)

# The finish of a run may overwrite these statuses. timed_out is in the list
# because the monitor's timeout is an inference, while a finish that arrives
# later is what the job itself reported.
OVERWRITABLE_STATUSES = (STARTED, TIMED_OUT)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware.

    PostgreSQL stores TIMESTAMPTZ. SQLite has no time zone type, so the value
    is stored as naive UTC text, which also sorts correctly as text.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {value!r}")
        if value.tzinfo is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} cannot be stored: attach a time zone"
            )
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData()

cron_executions = Table(
    "cron_executions",
    metadata,
    # The origin columns, with their names and meanings.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("service_name", String(100), nullable=False),
    Column("execution_time", UTCDateTime()),  # the start of the run
    Column("status", String(20)),
    Column("items_processed", Integer),
    Column("error_message", Text),
    Column("duration_ms", Integer),
    # Additions.
    Column("finished_at", UTCDateTime()),
    Column("heartbeat_at", UTCDateTime()),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("exit_code", Integer),
    Column("output_tail", Text),
    Column("run_key", String(64), unique=True),
)

cron_services = Table(
    "cron_services",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("display_name", String(200)),
    Column("created_at", UTCDateTime(), nullable=False),
)
