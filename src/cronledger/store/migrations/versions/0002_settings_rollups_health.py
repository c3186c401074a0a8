"""Add service settings, health, rollups, duration bins and missed runs.

Rollups make statistics fast and keep them exact after old runs are pruned.
A trigger on cron_executions maintains them on every insert and on every
update that changes a run's service, start, status, items or duration, so
rows written by any client (including code that predates cronledger) are
counted. Each run adds to three rollup rows: its hour, its day and the
service's all-time row. Deleting a run does not subtract it: pruning keeps
what was folded in. The same trigger keeps the service's latest run, last
success, last failure with its error, and streak in ``cron_services``.

Durations are also counted in logarithmic bins, four per doubling
(bin = floor(4 * log2(ms + 1))), from which percentiles are estimated to
within 9.1 % plus 1 ms.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import context, op

from cronledger.store.rollups import (
    GRANULARITIES,
    PG_BIN,
    ROLLUP_COLUMNS,
    fold_statements,
    update_streaks,
)

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# (name, PostgreSQL type, SQLite type) of the columns added to cron_services.
SERVICE_COLUMNS = (
    ("description", "TEXT", "TEXT"),
    ("schedule", "VARCHAR(200)", "VARCHAR(200)"),
    ("interval_seconds", "INTEGER", "INTEGER"),
    ("timezone", "VARCHAR(64)", "VARCHAR(64)"),
    ("grace_seconds", "INTEGER", "INTEGER"),
    ("max_runtime_seconds", "INTEGER", "INTEGER"),
    ("failure_threshold", "INTEGER", "INTEGER"),
    ("recovery_threshold", "INTEGER", "INTEGER"),
    ("paused", "BOOLEAN NOT NULL DEFAULT FALSE", "BOOLEAN NOT NULL DEFAULT 0"),
    ("resumed_at", "TIMESTAMPTZ", "DATETIME"),
    ("settings_source", "VARCHAR(10)", "VARCHAR(10)"),
    ("settings_updated_at", "TIMESTAMPTZ", "DATETIME"),
    ("health_state", "VARCHAR(20)", "VARCHAR(20)"),
    ("health_reason", "TEXT", "TEXT"),
    ("health_since", "TIMESTAMPTZ", "DATETIME"),
    ("health_checked_at", "TIMESTAMPTZ", "DATETIME"),
    ("last_run_at", "TIMESTAMPTZ", "DATETIME"),
    ("last_status", "VARCHAR(20)", "VARCHAR(20)"),
    ("last_success_at", "TIMESTAMPTZ", "DATETIME"),
    ("last_failure_at", "TIMESTAMPTZ", "DATETIME"),
    ("last_error", "TEXT", "TEXT"),
    ("streak_status", "VARCHAR(20)", "VARCHAR(20)"),
    ("streak_length", "INTEGER NOT NULL DEFAULT 0", "INTEGER NOT NULL DEFAULT 0"),
    ("streak_run_at", "TIMESTAMPTZ", "DATETIME"),
)

TABLES = """
CREATE TABLE IF NOT EXISTS cron_rollups (
    service_name VARCHAR(100) NOT NULL,
    granularity VARCHAR(4) NOT NULL,
    bucket_start BIGINT NOT NULL,
    started_count BIGINT NOT NULL DEFAULT 0,
    completed_count BIGINT NOT NULL DEFAULT 0,
    failed_count BIGINT NOT NULL DEFAULT 0,
    timed_out_count BIGINT NOT NULL DEFAULT 0,
    items_sum BIGINT NOT NULL DEFAULT 0,
    duration_count BIGINT NOT NULL DEFAULT 0,
    duration_sum_ms BIGINT NOT NULL DEFAULT 0,
    duration_max_ms INTEGER,
    -- Granularity and bucket first: the statistics of all services read one
    -- range of buckets, and a per-service read filters a small range.
    PRIMARY KEY (granularity, bucket_start, service_name)
);
CREATE TABLE IF NOT EXISTS cron_duration_bins (
    service_name VARCHAR(100) NOT NULL,
    granularity VARCHAR(4) NOT NULL,
    bucket_start BIGINT NOT NULL,
    bin INTEGER NOT NULL,
    runs BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (granularity, bucket_start, service_name, bin)
);
CREATE TABLE IF NOT EXISTS cron_missed_runs (
    id {id_type},
    service_name VARCHAR(100) NOT NULL,
    scheduled_at {ts} NOT NULL,
    detected_at {ts} NOT NULL,
    UNIQUE (service_name, scheduled_at)
);
CREATE TABLE IF NOT EXISTS cron_health_events (
    id {id_type},
    service_name VARCHAR(100) NOT NULL,
    state VARCHAR(20) NOT NULL,
    previous_state VARCHAR(20),
    reason TEXT NOT NULL,
    changed_at {ts} NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_cron_health_events_service
    ON cron_health_events (service_name, changed_at);
CREATE INDEX IF NOT EXISTS ix_cron_executions_time
    ON cron_executions (execution_time);
"""


def upgrade() -> None:
    postgresql = op.get_context().dialect.name == "postgresql"
    for name, pg_type, sqlite_type in SERVICE_COLUMNS:
        if postgresql:
            op.execute(f"ALTER TABLE cron_services ADD COLUMN IF NOT EXISTS {name} {pg_type}")
        else:
            op.execute(f"ALTER TABLE cron_services ADD COLUMN {name} {sqlite_type}")

    tables = TABLES.format(
        id_type="BIGSERIAL PRIMARY KEY" if postgresql else "INTEGER PRIMARY KEY AUTOINCREMENT",
        ts="TIMESTAMPTZ" if postgresql else "DATETIME",
    )
    for statement in tables.split(";"):
        if statement.strip():
            op.execute(statement)

    if postgresql:
        _postgresql_triggers()
    else:
        _sqlite_triggers()
    _backfill(postgresql)


def downgrade() -> None:
    raise NotImplementedError("cronledger does not downgrade its schema")


# -- shared SQL fragments -----------------------------------------------------


def _status_counts(status: str, sign: str) -> str:
    """Return SQL for the started, completed, failed and timed out counts of one row.

    Any status other than the four known ones counts as failed, so the
    total always equals the sum of the four.
    """
    return (
        f"{sign} * CASE WHEN {status} = 'started' THEN 1 ELSE 0 END, "
        f"{sign} * CASE WHEN {status} = 'completed' THEN 1 ELSE 0 END, "
        f"{sign} * CASE WHEN {status} IN ('started', 'completed', 'timed_out') THEN 0 ELSE 1 END, "
        f"{sign} * CASE WHEN {status} = 'timed_out' THEN 1 ELSE 0 END"
    )


ROLLUP_CONFLICT = """
    ON CONFLICT (service_name, granularity, bucket_start) DO UPDATE SET
        started_count = cron_rollups.started_count + excluded.started_count,
        completed_count = cron_rollups.completed_count + excluded.completed_count,
        failed_count = cron_rollups.failed_count + excluded.failed_count,
        timed_out_count = cron_rollups.timed_out_count + excluded.timed_out_count,
        items_sum = cron_rollups.items_sum + excluded.items_sum,
        duration_count = cron_rollups.duration_count + excluded.duration_count,
        duration_sum_ms = cron_rollups.duration_sum_ms + excluded.duration_sum_ms,
        duration_max_ms = {greatest}
"""

BIN_CONFLICT = """
    ON CONFLICT (service_name, granularity, bucket_start, bin) DO UPDATE SET
        runs = cron_duration_bins.runs + excluded.runs
"""

# Latest run, last success and failure, and streak: only a run that started
# at or after the one already noted replaces it, so a late spool replay of
# an older run does not overwrite newer facts. streak_run_at is the start of
# the newest finished run in the streak. {counted} is true when an update
# re-finishes a run the streak already counted with the same outcome.
# NOTE: a re-finish that changes the outcome (timed_out, then a late
# completed) starts a new streak of 1, though earlier runs may extend it.
LATEST_UPSERT = """
    INSERT INTO cron_services (
        name, created_at, last_run_at, last_status, last_success_at,
        last_failure_at, last_error, streak_status, streak_length, streak_run_at)
    VALUES (
        {row}.service_name, {start}, {start}, {row}.status,
        CASE WHEN {row}.status = 'completed' THEN {start} END,
        CASE WHEN {failed} THEN {start} END,
        CASE WHEN {failed} THEN {row}.error_message END,
        CASE WHEN {row}.status = 'started' THEN NULL
            WHEN {failed} THEN 'failed' ELSE 'completed' END,
        CASE WHEN {row}.status = 'started' THEN 0 ELSE 1 END,
        CASE WHEN {row}.status = 'started' THEN NULL ELSE {start} END)
    ON CONFLICT (name) DO UPDATE SET
        last_run_at = CASE WHEN cron_services.last_run_at IS NULL
            OR excluded.last_run_at >= cron_services.last_run_at
            THEN excluded.last_run_at ELSE cron_services.last_run_at END,
        last_status = CASE WHEN cron_services.last_run_at IS NULL
            OR excluded.last_run_at >= cron_services.last_run_at
            THEN excluded.last_status ELSE cron_services.last_status END,
        last_success_at = CASE WHEN excluded.last_success_at IS NOT NULL
            AND (cron_services.last_success_at IS NULL
                 OR excluded.last_success_at >= cron_services.last_success_at)
            THEN excluded.last_success_at ELSE cron_services.last_success_at END,
        last_failure_at = CASE WHEN excluded.last_failure_at IS NOT NULL
            AND (cron_services.last_failure_at IS NULL
                 OR excluded.last_failure_at >= cron_services.last_failure_at)
            THEN excluded.last_failure_at ELSE cron_services.last_failure_at END,
        last_error = CASE WHEN excluded.last_failure_at IS NOT NULL
            AND (cron_services.last_failure_at IS NULL
                 OR excluded.last_failure_at >= cron_services.last_failure_at)
            THEN excluded.last_error ELSE cron_services.last_error END,
        streak_length = CASE
            WHEN excluded.streak_status IS NULL THEN cron_services.streak_length
            WHEN {counted} THEN cron_services.streak_length
            WHEN cron_services.streak_run_at IS NOT NULL
                AND excluded.streak_run_at < cron_services.streak_run_at
                THEN cron_services.streak_length
            WHEN excluded.streak_status = cron_services.streak_status
                THEN cron_services.streak_length + 1
            ELSE 1 END,
        streak_status = CASE
            WHEN excluded.streak_status IS NULL THEN cron_services.streak_status
            WHEN cron_services.streak_run_at IS NOT NULL
                AND excluded.streak_run_at < cron_services.streak_run_at
                THEN cron_services.streak_status
            ELSE excluded.streak_status END,
        streak_run_at = CASE
            WHEN excluded.streak_status IS NULL THEN cron_services.streak_run_at
            WHEN cron_services.streak_run_at IS NOT NULL
                AND excluded.streak_run_at < cron_services.streak_run_at
                THEN cron_services.streak_run_at
            ELSE excluded.streak_run_at END
"""


def _failed(row: str) -> str:
    return f"{row}.status NOT IN ('started', 'completed')"


# An update of a run that had already finished, such as a late "failed"
# after the monitor's timed_out: the streak counted it once already.
REFINISHED_SAME_OUTCOME = (
    "(OLD.status <> 'started' AND OLD.service_name = NEW.service_name"
    " AND (OLD.status = 'completed') = (NEW.status = 'completed'))"
)


# -- PostgreSQL ---------------------------------------------------------------


def _postgresql_triggers() -> None:
    epoch = "floor(extract(epoch FROM COALESCE(p_start, 'epoch'::timestamptz)))::bigint"
    buckets = ", ".join(
        f"('{name}', {expression.format(epoch=epoch)})" for name, expression in GRANULARITIES
    )
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION cronledger_rollup_add(
            p_service VARCHAR, p_start TIMESTAMPTZ, p_status VARCHAR,
            p_items INTEGER, p_duration INTEGER, p_sign INTEGER)
        RETURNS void LANGUAGE plpgsql AS $$
        DECLARE
            bucket RECORD;
            -- Not GREATEST(p_duration, 0): it skips NULL and returns 0, which
            -- would count a run without a duration as a 0 ms run.
            duration INTEGER := CASE WHEN p_duration < 0 THEN 0 ELSE p_duration END;
            duration_bin INTEGER;
        BEGIN
            IF duration IS NOT NULL THEN
                -- Cast before adding 1, because 2**31 - 1 ms + 1 overflows INTEGER.
                duration_bin := {PG_BIN.format(ms="duration")};
            END IF;
            FOR bucket IN SELECT * FROM (VALUES {buckets}) AS b(granularity, bucket_start) LOOP
                INSERT INTO cron_rollups ({ROLLUP_COLUMNS})
                SELECT p_service, bucket.granularity, bucket.bucket_start,
                    {_status_counts("p_status", "p_sign")},
                    p_sign * COALESCE(p_items, 0),
                    p_sign * CASE WHEN duration IS NULL THEN 0 ELSE 1 END,
                    p_sign * COALESCE(duration, 0),
                    CASE WHEN p_sign > 0 THEN duration END
                {
            ROLLUP_CONFLICT.format(
                greatest="GREATEST(cron_rollups.duration_max_ms, excluded.duration_max_ms)"
            )
        };
                IF duration IS NOT NULL THEN
                    INSERT INTO cron_duration_bins
                        (service_name, granularity, bucket_start, bin, runs)
                    VALUES (p_service, bucket.granularity, bucket.bucket_start,
                        duration_bin, p_sign)
                    {BIN_CONFLICT};
                END IF;
            END LOOP;
        END
        $$
        """
    )
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION cronledger_on_run_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                -- Heartbeats and other bookkeeping leave the figures alone.
                IF NEW.service_name = OLD.service_name
                    AND NEW.execution_time IS NOT DISTINCT FROM OLD.execution_time
                    AND NEW.status IS NOT DISTINCT FROM OLD.status
                    AND NEW.items_processed IS NOT DISTINCT FROM OLD.items_processed
                    AND NEW.duration_ms IS NOT DISTINCT FROM OLD.duration_ms
                THEN
                    RETURN NULL;
                END IF;
                PERFORM cronledger_rollup_add(OLD.service_name, OLD.execution_time,
                    OLD.status, OLD.items_processed, OLD.duration_ms, -1);
            END IF;
            PERFORM cronledger_rollup_add(NEW.service_name, NEW.execution_time,
                NEW.status, NEW.items_processed, NEW.duration_ms, 1);
            {
            LATEST_UPSERT.format(
                row="NEW",
                start="COALESCE(NEW.execution_time, CURRENT_TIMESTAMP)",
                failed=_failed("NEW"),
                counted=f"(TG_OP = 'UPDATE' AND {REFINISHED_SAME_OUTCOME})",
            )
        };
            RETURN NULL;
        END
        $$
        """
    )
    op.execute("DROP TRIGGER IF EXISTS cronledger_rollups ON cron_executions")
    op.execute(
        "CREATE TRIGGER cronledger_rollups AFTER INSERT OR UPDATE ON cron_executions"
        " FOR EACH ROW EXECUTE FUNCTION cronledger_on_run_change()"
    )


# -- SQLite -------------------------------------------------------------------


def _sqlite_add(row: str, sign: int) -> list[str]:
    """Return the statements that add (sign 1) or remove (-1) ``row`` from the rollups."""
    # strftime('%s') rounds to the nearest millisecond, which would put a run
    # in the last half millisecond of an hour into the next hour. The first 19
    # characters of the naive UTC text are the start in whole seconds.
    epoch = (
        "CAST(strftime('%s', substr(COALESCE("
        f"{row}.execution_time, '1970-01-01 00:00:00'), 1, 19)) AS INTEGER)"
    )
    duration = f"(CASE WHEN {row}.duration_ms < 0 THEN 0 ELSE {row}.duration_ms END)"
    statements = []
    for name, expression in GRANULARITIES:
        bucket = expression.format(epoch=epoch)
        statements.append(
            f"""
            INSERT INTO cron_rollups ({ROLLUP_COLUMNS})
            SELECT {row}.service_name, '{name}', {bucket},
                {_status_counts(f"{row}.status", str(sign))},
                {sign} * COALESCE({row}.items_processed, 0),
                {sign} * CASE WHEN {row}.duration_ms IS NULL THEN 0 ELSE 1 END,
                {sign} * COALESCE({duration}, 0),
                {duration if sign > 0 else "NULL"}
            WHERE true
            {
                ROLLUP_CONFLICT.format(
                    greatest="MAX(COALESCE(cron_rollups.duration_max_ms, -1),"
                    " COALESCE(excluded.duration_max_ms, -1))"
                )
            }
            """
        )
        statements.append(
            f"""
            INSERT INTO cron_duration_bins (service_name, granularity, bucket_start, bin, runs)
            SELECT {row}.service_name, '{name}', {bucket},
                CAST(floor(4 * log2({duration} + 1)) AS INTEGER), {sign}
            WHERE {row}.duration_ms IS NOT NULL
            {BIN_CONFLICT}
            """
        )
    return statements


def _sqlite_triggers() -> None:
    def latest(counted: str) -> str:
        return LATEST_UPSERT.format(
            row="NEW",
            start="COALESCE(NEW.execution_time, CURRENT_TIMESTAMP)",
            failed=_failed("NEW"),
            counted=counted,
        )

    insert_body = ";\n".join([*_sqlite_add("NEW", 1), latest("FALSE")])
    update_body = ";\n".join(
        [*_sqlite_add("OLD", -1), *_sqlite_add("NEW", 1), latest(REFINISHED_SAME_OUTCOME)]
    )

    op.execute("DROP TRIGGER IF EXISTS cronledger_rollups_insert")
    op.execute("DROP TRIGGER IF EXISTS cronledger_rollups_update")
    op.execute(
        f"""
        CREATE TRIGGER cronledger_rollups_insert AFTER INSERT ON cron_executions
        BEGIN
            {insert_body};
        END
        """
    )
    # Heartbeats and other bookkeeping leave the figures alone.
    op.execute(
        f"""
        CREATE TRIGGER cronledger_rollups_update AFTER UPDATE ON cron_executions
        WHEN NEW.service_name IS NOT OLD.service_name
            OR NEW.execution_time IS NOT OLD.execution_time
            OR NEW.status IS NOT OLD.status
            OR NEW.items_processed IS NOT OLD.items_processed
            OR NEW.duration_ms IS NOT OLD.duration_ms
        BEGIN
            {update_body};
        END
        """
    )


# -- backfill -----------------------------------------------------------------


def _backfill(postgresql: bool) -> None:
    """Fold the runs already in the table into the new rollups and latest columns."""
    for statement in fold_statements(postgresql):
        op.execute(statement)
    # NOTE: `cronledger db sql` cannot run Python, so the SQL it prints
    # leaves the streaks of existing services at 0 until their next finish.
    if not context.is_offline_mode():
        update_streaks(op.get_bind())
