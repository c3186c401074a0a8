"""Table definitions used to build queries.

The schema itself is created and changed only by the Alembic migrations in
``migrations/``. These Core tables describe it for query building, so they
must stay in step with the migrations, which a test checks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    literal,
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
        utc: datetime = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return utc.replace(tzinfo=None)
        return utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stored: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        if stored.tzinfo is UTC:
            # A PostgreSQL session in UTC returns this already; statistics read thousands.
            return stored
        if stored.tzinfo is None:
            return stored.replace(tzinfo=UTC)
        return stored.astimezone(UTC)


def time_bound(dialect_name: str, moment: datetime) -> Any:
    """Return ``moment`` as the bound of a comparison with a UTCDateTime column.

    SQLite compares the stored text. UTCDateTime writes a fraction
    (``.ffffff``), but rows written by plain SQL (CURRENT_TIMESTAMP, origin
    data) have none, so against a ``.000000`` bound a row at that very second
    sorts before it. A whole-second bound without the fraction orders both
    forms correctly. A naive ``moment`` is returned as is, for UTCDateTime
    to reject.
    """
    if dialect_name != "sqlite" or moment.microsecond or moment.tzinfo is None:
        return moment
    return literal(moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"), String())


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
    # Declared settings, from the config file or from code.
    Column("description", Text),
    Column("schedule", String(200)),
    Column("interval_seconds", Integer),
    Column("timezone", String(64)),
    Column("grace_seconds", Integer),
    Column("max_runtime_seconds", Integer),
    Column("failure_threshold", Integer),
    Column("recovery_threshold", Integer),
    Column("paused", Boolean, nullable=False, default=False),
    # When an operator or the config file last resumed the service; the
    # schedule's expectations restart from here.
    Column("resumed_at", UTCDateTime()),
    Column("settings_source", String(10)),
    Column("settings_updated_at", UTCDateTime()),
    # Health, as the monitor last evaluated it.
    Column("health_state", String(20)),
    Column("health_reason", Text),
    Column("health_since", UTCDateTime()),
    Column("health_checked_at", UTCDateTime()),
    # The latest facts, kept by the rollup trigger on cron_executions.
    Column("last_run_at", UTCDateTime()),
    Column("last_status", String(20)),
    Column("last_success_at", UTCDateTime()),
    Column("last_failure_at", UTCDateTime()),
    Column("last_error", Text),
    Column("streak_status", String(20)),
    Column("streak_length", Integer, nullable=False, default=0),
    Column("streak_run_at", UTCDateTime()),
)

# Maintained by the trigger on cron_executions; read by stats.py. One row per
# service and hour, per service and day, and per service for all time
# (granularity "all", bucket_start 0). bucket_start is in epoch seconds.
# Both tables also have an index on (service_name, granularity, bucket_start)
# (migration 0006), for reading a few services' rows (bucket_cache.py).
cron_rollups = Table(
    "cron_rollups",
    metadata,
    Column("service_name", String(100), primary_key=True),
    Column("granularity", String(4), primary_key=True),
    Column("bucket_start", BigInteger, primary_key=True),
    Column("started_count", BigInteger, nullable=False),
    Column("completed_count", BigInteger, nullable=False),
    Column("failed_count", BigInteger, nullable=False),
    Column("timed_out_count", BigInteger, nullable=False),
    Column("items_sum", BigInteger, nullable=False),
    Column("duration_count", BigInteger, nullable=False),
    Column("duration_sum_ms", BigInteger, nullable=False),
    Column("duration_max_ms", Integer),
)

# Run counts per logarithmic duration bin, for percentile estimates.
cron_duration_bins = Table(
    "cron_duration_bins",
    metadata,
    Column("service_name", String(100), primary_key=True),
    Column("granularity", String(4), primary_key=True),
    Column("bucket_start", BigInteger, primary_key=True),
    Column("bin", Integer, primary_key=True),
    Column("runs", BigInteger, nullable=False),
)

# Expected fire times that passed their grace period without a start.
cron_missed_runs = Table(
    "cron_missed_runs",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("service_name", String(100), nullable=False),
    Column("scheduled_at", UTCDateTime(), nullable=False),
    Column("detected_at", UTCDateTime(), nullable=False),
)

# Every change of a service's health state, with its reason.
cron_health_events = Table(
    "cron_health_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("service_name", String(100), nullable=False),
    Column("state", String(20), nullable=False),
    Column("previous_state", String(20)),
    Column("reason", Text, nullable=False),
    Column("changed_at", UTCDateTime(), nullable=False),
)

# Dashboard users and API tokens (migration 0005). Only hashes are stored:
# argon2id for passwords, SHA-256 for the random API tokens.
cron_users = Table(
    "cron_users",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("role", String(10), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_login_at", UTCDateTime()),
)

cron_api_tokens = Table(
    "cron_api_tokens",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("role", String(10), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_used_at", UTCDateTime()),
)

# The alerts outbox (migration 0004): one row per message and channel.
# ``channel`` is the Apprise URL as configured, with ``${VAR}`` unexpanded;
# ``channel_masked`` is the form for logs and pages. ``status`` is pending,
# sent or failed (no attempt left).
cron_notifications = Table(
    "cron_notifications",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("dedupe_key", String(200), nullable=False, unique=True),
    Column("kind", String(12), nullable=False),
    Column("service_name", String(100)),
    Column("event_id", BigInteger),
    Column("health_state", String(20)),
    Column("channel", Text, nullable=False),
    Column("channel_masked", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("notify_type", String(10), nullable=False),
    Column("status", String(10), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("claimed_by", String(100)),
    Column("claimed_until", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime()),
    Column("last_error", Text),
)

# Per service: the open incident that alerts were sent for, the last
# reminder, and a late alert held back while cronledger was blind.
cron_alert_services = Table(
    "cron_alert_services",
    metadata,
    Column("service_name", String(100), primary_key=True),
    Column("incident_state", String(20)),
    Column("incident_event_id", BigInteger),
    Column("incident_since", UTCDateTime()),
    Column("reminded_at", UTCDateTime()),
    Column("held_event_id", BigInteger),
)

# One row (id 1): the last alert planning pass, the last health event
# planned, and the current (blind_since) or latest (sight_since) blind gap.
cron_monitor_sight = Table(
    "cron_monitor_sight",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("pass_at", UTCDateTime()),
    Column("previous_pass_at", UTCDateTime()),
    Column("event_cursor", BigInteger, nullable=False, default=0),
    Column("blind_since", UTCDateTime()),
    Column("blind_reason", String(20)),
    Column("sight_since", UTCDateTime()),
)

# One row per fire time a scheduler took on (migration 0003). The unique key
# (service_name, scheduled_at) makes one scheduler win each fire time;
# outcome is "run" or "skipped". run_key links the run it started.
cron_fire_claims = Table(
    "cron_fire_claims",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("service_name", String(100), nullable=False),
    Column("scheduled_at", UTCDateTime(), nullable=False),
    Column("claimed_at", UTCDateTime(), nullable=False),
    Column("outcome", String(10), nullable=False),
    Column("run_key", String(64)),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("finished_at", UTCDateTime()),
)

# Fire times not run because the previous run was still running (overlap = "skip").
cron_skipped_runs = Table(
    "cron_skipped_runs",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("service_name", String(100), nullable=False),
    Column("scheduled_at", UTCDateTime(), nullable=False),
    Column("skipped_at", UTCDateTime(), nullable=False),
    Column("reason", Text, nullable=False),
    Column("host", String(255)),
)
