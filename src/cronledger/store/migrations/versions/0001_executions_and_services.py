"""Create cron_executions and cron_services, or upgrade an origin table.

A fresh database gets both tables. A database that already has the origin
``cron_executions`` table (seven columns, naive TIMESTAMP) keeps every row:
the new columns are added, and ``execution_time`` becomes TIMESTAMPTZ.

Rule for the naive timestamps: the origin wrote them with PostgreSQL's
CURRENT_TIMESTAMP into a TIMESTAMP column, which stores the wall-clock time
of the writing session's TimeZone. They are read as wall-clock times in the
TimeZone of the session that runs this migration (the server or database
default, unless PGTZ or the role overrides it), or in the zone given as
``origin_timezone`` (``cronledger db upgrade --origin-timezone ZONE``).
SQLite's CURRENT_TIMESTAMP is UTC, so naive SQLite values are taken as UTC
unless a zone is given.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

log = logging.getLogger("cronledger.store.migrate")

# Columns added to the origin table, as (name, PostgreSQL type, SQLite type).
ADDED_COLUMNS = (
    ("finished_at", "TIMESTAMPTZ", "DATETIME"),
    ("heartbeat_at", "TIMESTAMPTZ", "DATETIME"),
    ("host", "VARCHAR(255)", "VARCHAR(255)"),
    ("pid", "INTEGER", "INTEGER"),
    ("exit_code", "INTEGER", "INTEGER"),
    ("output_tail", "TEXT", "TEXT"),
    ("run_key", "VARCHAR(64)", "VARCHAR(64)"),
)

INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_cron_executions_run_key ON cron_executions (run_key)",
    # Per-service history and the latest run, newest first.
    "CREATE INDEX IF NOT EXISTS ix_cron_executions_service_time"
    " ON cron_executions (service_name, execution_time)",
    # The monitor scans runs still in progress; this index stays small
    # because almost every row has finished.
    "CREATE INDEX IF NOT EXISTS ix_cron_executions_started"
    " ON cron_executions (execution_time) WHERE status = 'started'",
)


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        _upgrade_postgresql()
    else:
        _upgrade_sqlite()


def downgrade() -> None:
    # Dropping would destroy the run history, including origin rows.
    raise NotImplementedError("cronledger does not downgrade below its first revision")


def _origin_timezone() -> str | None:
    zone = context.config.attributes.get("origin_timezone")
    if zone is not None:
        ZoneInfo(zone)  # the CLI checked it already; this guards direct callers
    return zone


def _upgrade_postgresql() -> None:
    zone = _origin_timezone()
    zone_sql = (
        "current_setting('TimeZone')" if zone is None else "'" + zone.replace("'", "''") + "'"
    )

    op.execute(
        """
        CREATE TABLE IF NOT EXISTS cron_executions (
            id BIGSERIAL PRIMARY KEY,
            service_name VARCHAR(100) NOT NULL,
            execution_time TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
            status VARCHAR(20) DEFAULT 'started',
            items_processed INTEGER DEFAULT 0,
            error_message TEXT,
            duration_ms INTEGER
        )
        """
    )

    if not context.is_offline_mode():
        _log_origin_conversion(zone)

    # Only an origin table still has the naive column type.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF (SELECT data_type FROM information_schema.columns
                WHERE table_schema = current_schema()
                  AND table_name = 'cron_executions'
                  AND column_name = 'execution_time') = 'timestamp without time zone'
            THEN
                ALTER TABLE cron_executions
                    ALTER COLUMN execution_time TYPE TIMESTAMPTZ
                    USING execution_time AT TIME ZONE {zone_sql};
            END IF;
        END
        $$
        """
    )

    for name, pg_type, _ in ADDED_COLUMNS:
        op.execute(f"ALTER TABLE cron_executions ADD COLUMN IF NOT EXISTS {name} {pg_type}")
    for statement in INDEXES:
        op.execute(statement)

    op.execute(
        """
        CREATE TABLE IF NOT EXISTS cron_services (
            name VARCHAR(100) PRIMARY KEY,
            display_name VARCHAR(200),
            created_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
        )
        """
    )
    _backfill_services()


def _log_origin_conversion(zone: str | None) -> None:
    bind = op.get_bind()
    data_type = bind.execute(
        sa.text(
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'cron_executions'"
            " AND column_name = 'execution_time'"
        )
    ).scalar()
    if data_type != "timestamp without time zone":
        return
    used = zone or bind.execute(sa.text("SHOW TimeZone")).scalar()
    count = bind.execute(sa.text("SELECT count(*) FROM cron_executions")).scalar()
    log.warning(
        "upgrading the existing cron_executions table in place: %s rows; naive "
        "execution_time values are read as wall-clock times in %s and stored as UTC",
        count,
        used,
    )


def _upgrade_sqlite() -> None:
    bind = op.get_bind()
    # Offline SQL ('cronledger db sql --dialect sqlite') cannot inspect the
    # database, so it is written for a new one. On an existing
    # cron_executions table its CREATE TABLE fails rather than guessing.
    offline = context.is_offline_mode()

    if offline or not sa.inspect(bind).has_table("cron_executions"):
        op.execute(
            """
            CREATE TABLE cron_executions (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                service_name VARCHAR(100) NOT NULL,
                execution_time DATETIME DEFAULT CURRENT_TIMESTAMP,
                status VARCHAR(20) DEFAULT 'started',
                items_processed INTEGER DEFAULT 0,
                error_message TEXT,
                duration_ms INTEGER
            )
            """
        )
    else:
        _convert_sqlite_origin_times(bind)

    present = (
        set()
        if offline
        else {column["name"] for column in sa.inspect(bind).get_columns("cron_executions")}
    )
    for name, _, sqlite_type in ADDED_COLUMNS:
        if name not in present:
            op.execute(f"ALTER TABLE cron_executions ADD COLUMN {name} {sqlite_type}")
    for statement in INDEXES:
        op.execute(statement)

    op.execute(
        """
        CREATE TABLE IF NOT EXISTS cron_services (
            name VARCHAR(100) PRIMARY KEY,
            display_name VARCHAR(200),
            created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
        )
        """
    )
    _backfill_services()


def _convert_sqlite_origin_times(bind: sa.Connection) -> None:
    zone = _origin_timezone()
    if zone is None:
        return
    rows = bind.execute(
        sa.text("SELECT id, execution_time FROM cron_executions WHERE execution_time IS NOT NULL")
    ).all()
    log.warning(
        "upgrading the existing cron_executions table in place: %s rows; naive "
        "execution_time values are read as wall-clock times in %s and stored as UTC",
        len(rows),
        zone,
    )
    for row_id, value in rows:
        utc = _wall_clock_to_utc(datetime.fromisoformat(str(value)), ZoneInfo(zone))
        bind.execute(
            sa.text("UPDATE cron_executions SET execution_time = :t WHERE id = :id"),
            {"t": utc.isoformat(sep=" "), "id": row_id},
        )


def _wall_clock_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """Read a naive wall-clock time in ``zone`` as PostgreSQL does; return naive UTC.

    A time that a DST change makes ambiguous (fall back) or skips (spring
    forward) has two readings, fold=0 and fold=1. PostgreSQL takes standard
    time in both cases (PostgreSQL 15 docs, appendix B.2), which is the later
    of the two UTC instants, so SQLite and PostgreSQL rows convert alike.
    """
    readings = (wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))
    return max(readings).replace(tzinfo=None)


def _backfill_services() -> None:
    # One row per service already present, dated by its first run.
    op.execute(
        """
        INSERT INTO cron_services (name, created_at)
        SELECT service_name, COALESCE(MIN(execution_time), CURRENT_TIMESTAMP)
        FROM cron_executions
        GROUP BY service_name
        ON CONFLICT (name) DO NOTHING
        """
    )
