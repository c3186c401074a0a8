"""SQL that folds raw runs into the rollups, shared by migrations and repair.

The trigger created by migration 0002 keeps the rollups current on every
write. These statements build them from scratch: once when that migration
runs on a table that already has rows, and on demand through
``rebuild_rollups`` (``cronledger db rebuild-rollups``) after a bulk load
that bypassed the trigger.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

# Each granularity with the SQL that maps a start time in epoch seconds
# ({epoch}) to the start of its bucket.
GRANULARITIES = (
    ("hour", "({epoch} - {epoch} % 3600)"),
    ("day", "({epoch} - {epoch} % 86400)"),
    ("all", "0"),
)

# The duration bin of {ms} milliseconds on PostgreSQL: floor(4 * log2(ms + 1)).
# Double precision, because numeric log() costs about 11 us per row. The
# 1e-9 keeps an exact power of two in its own bin despite rounding in the
# quotient. Below 2**31 ms no other value lies that close to a bin edge.
PG_BIN = "floor(4 * ln({ms}::float8 + 1) / ln(2::float8) + 1e-9)::integer"

ROLLUP_COLUMNS = (
    "service_name, granularity, bucket_start, started_count, completed_count, failed_count,"
    " timed_out_count, items_sum, duration_count, duration_sum_ms, duration_max_ms"
)


def rebuild_rollups(engine: Engine) -> None:
    """Recompute every rollup, duration bin and latest-run column from the raw runs.

    Runs already pruned are lost from the result, so this is for a table
    loaded in bulk, not for routine use.
    """
    postgresql = engine.dialect.name == "postgresql"
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM cron_rollups"))
        connection.execute(sa.text("DELETE FROM cron_duration_bins"))
        connection.execute(
            sa.text(
                "INSERT INTO cron_services (name, created_at)"
                " SELECT service_name, COALESCE(MIN(execution_time), CURRENT_TIMESTAMP)"
                " FROM cron_executions GROUP BY service_name"
                " ON CONFLICT (name) DO NOTHING"
            )
        )
        for statement in fold_statements(postgresql):
            connection.execute(sa.text(statement))
        update_streaks(connection)


def fold_statements(postgresql: bool) -> list[str]:
    """Return SQL that folds every run in cron_executions into empty rollups."""
    statements = []
    if postgresql:
        epoch = "floor(extract(epoch FROM COALESCE(execution_time, 'epoch'::timestamptz)))::bigint"
        # Cast to numeric before adding 1, because 2**31 - 1 ms + 1 overflows INTEGER.
        bin_expression = PG_BIN.format(ms="GREATEST(duration_ms, 0)")
        # Not GREATEST(duration_ms, 0), which turns NULL into 0 and so gives
        # a bucket without durations a maximum of 0 ms.
        greatest = "(CASE WHEN duration_ms < 0 THEN 0 ELSE duration_ms END)"
    else:
        # Whole seconds, as the SQLite trigger computes them (see _sqlite_add).
        epoch = (
            "CAST(strftime('%s', substr(COALESCE(execution_time, '1970-01-01 00:00:00'), 1, 19))"
            " AS INTEGER)"
        )
        bin_expression = (
            "CAST(floor(4 * log2((CASE WHEN duration_ms < 0 THEN 0 ELSE duration_ms END) + 1))"
            " AS INTEGER)"
        )
        greatest = "(CASE WHEN duration_ms < 0 THEN 0 ELSE duration_ms END)"

    for name, expression in GRANULARITIES:
        bucket = expression.format(epoch=epoch)
        # A constant in GROUP BY would be read as a column position.
        group = "service_name" if name == "all" else f"service_name, {bucket}"
        statements.append(
            f"""
            INSERT INTO cron_rollups ({ROLLUP_COLUMNS})
            SELECT service_name, '{name}', {bucket},
                SUM(CASE WHEN status = 'started' THEN 1 ELSE 0 END),
                SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END),
                SUM(CASE WHEN status IN ('started', 'completed', 'timed_out') THEN 0 ELSE 1 END),
                SUM(CASE WHEN status = 'timed_out' THEN 1 ELSE 0 END),
                COALESCE(SUM(items_processed), 0),
                COUNT(duration_ms),
                COALESCE(SUM({greatest}), 0),
                MAX({greatest})
            FROM cron_executions
            GROUP BY {group}
            """
        )
        statements.append(
            f"""
            INSERT INTO cron_duration_bins (service_name, granularity, bucket_start, bin, runs)
            SELECT service_name, '{name}', {bucket}, {bin_expression}, COUNT(*)
            FROM cron_executions
            WHERE duration_ms IS NOT NULL
            GROUP BY {group}, {bin_expression}
            """
        )

    # The latest facts per service, from the runs already recorded.
    statements.append(
        """
        UPDATE cron_services SET
            last_run_at = (SELECT MAX(e.execution_time) FROM cron_executions e
                WHERE e.service_name = cron_services.name),
            last_success_at = (SELECT MAX(e.execution_time) FROM cron_executions e
                WHERE e.service_name = cron_services.name AND e.status = 'completed'),
            last_failure_at = (SELECT MAX(e.execution_time) FROM cron_executions e
                WHERE e.service_name = cron_services.name
                AND e.status NOT IN ('started', 'completed'))
        """
    )
    statements.append(
        """
        UPDATE cron_services SET
            last_status = (SELECT e.status FROM cron_executions e
                WHERE e.service_name = cron_services.name
                ORDER BY e.execution_time DESC, e.id DESC LIMIT 1),
            last_error = (SELECT e.error_message FROM cron_executions e
                WHERE e.service_name = cron_services.name
                AND e.status NOT IN ('started', 'completed')
                ORDER BY e.execution_time DESC, e.id DESC LIMIT 1)
        """
    )
    return statements


def update_streaks(bind: Connection) -> None:
    """Count each service's current run of successes or failures, newest first."""
    names = [row[0] for row in bind.execute(sa.text("SELECT name FROM cron_services"))]
    for name in names:
        rows = bind.execute(
            sa.text(
                "SELECT status, execution_time FROM cron_executions"
                " WHERE service_name = :name AND status <> 'started'"
                " ORDER BY execution_time DESC, id DESC LIMIT 1000"
            ),
            {"name": name},
        ).all()
        if not rows:
            continue
        kind = "completed" if rows[0][0] == "completed" else "failed"
        length = 0
        for status, _ in rows:
            if ("completed" if status == "completed" else "failed") != kind:
                break
            length += 1
        bind.execute(
            sa.text(
                "UPDATE cron_services SET streak_status = :kind, streak_length = :length,"
                " streak_run_at = :newest WHERE name = :name"
            ),
            {"kind": kind, "length": length, "newest": rows[0][1], "name": name},
        )
